"""Local, in-process emulators of the calendar providers calsync talks to.

Each emulator is a real HTTP server (aiohttp) that follows the wire contract in
``shared/reference/provider-protocols.md`` closely enough that the production
provider adapters can run against it unchanged: same paths, query parameters,
status codes, headers and error bodies. Tests start one inside their own event
loop; the demo runs one as a separate process (``calsync emulator google``).

Emulators are test doubles, not part of the sync engine: nothing under
``calsync/`` outside the CLI and ``calsync.testing`` may import them.

- :mod:`calsync.emulators.google` -- Google Calendar API v3 and the Google
  OAuth 2.0 token endpoint, with push channels and fault injection.
"""
