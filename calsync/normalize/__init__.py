"""Provider payloads → occurrences: pure functions, bounded, no I/O.

* :mod:`calsync.normalize.busy`: the one busy policy (provider states → ``status_intent``);
* :mod:`calsync.normalize.windows_zones`: Windows and Outlook zone names → IANA zones;
* :mod:`calsync.normalize.recurrence`: iCalendar objects (CalDAV) → occurrences inside a window;
* :mod:`calsync.normalize.google`, :mod:`calsync.normalize.microsoft`: one provider
  event → a change.

Nothing here imports :mod:`calsync.providers`: providers call normalization, never the
other way round.
"""
