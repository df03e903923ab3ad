"""The availability core: who is free when, as pure functions over integer intervals.

* :mod:`~calsync.availability.intervals`: half-open epoch-second intervals, their
  arithmetic, and :class:`~calsync.availability.intervals.Timeline`, one resource's
  busy picture as it is stored in a table value;
* :mod:`~calsync.availability.slots`: the free-slot finder (working hours in IANA
  zones, buffers, notice, "all" and "N of M");
* :mod:`~calsync.availability.errors`: what a bad or too large request raises.

Nothing here touches Kafka, a table or the clock; the index and its API wire it up.
"""
