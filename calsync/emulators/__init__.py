"""Local, in-process emulators of the calendar providers calsync talks to.

Each emulator is a real HTTP server (aiohttp) that follows the provider's public
documentation (Google Calendar API v3 reference, Microsoft Graph calendar and change
notifications docs, the two OAuth token endpoints' docs) closely enough that the
production provider adapters can run against it unchanged: same paths, query parameters,
status codes, headers and error bodies. Tests start one inside their own event
loop, and so does the demo; ``calsync emulator google`` / ``calsync emulator microsoft``
serve one as a process of its own.

Emulators are test doubles, not part of the sync engine: nothing under
``calsync/`` outside the CLI and ``calsync.testing`` may import them.

- :mod:`calsync.emulators.google` -- Google Calendar API v3 and the Google
  OAuth 2.0 token endpoint, with push channels and fault injection.
- :mod:`calsync.emulators.microsoft` -- Microsoft Graph calendar delta, subscriptions
  with validation and lifecycle notifications, and an identity platform over TLS
  that msal accepts (refresh tokens rotate on use).
- :mod:`calsync.emulators.base` -- what both share: lifecycle, clock, grants,
  token sealing, push delivery, the middleware (faults, request log), the
  common control routes, the serve loop, and the in-memory event store.
- :mod:`calsync.emulators.faults` -- the fault injection both share.
"""
