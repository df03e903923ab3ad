"""What every benchmark shares: the run's broker and settings, processes, readers, the
machine's load, and the report.

- :mod:`.env`: :class:`~.env.Env` (the broker, a work dir, the run's secrets and unique
  settings), fresh raw-baseline producers and topics;
- :mod:`.google`: the Google emulator that times its own ``events.list``, calendar fixtures;
- :mod:`.records`: a topic reader that keeps when each record arrived and its CreateTime;
- :mod:`.processes`: worker and gateway processes, the in-process gateway, the open-loop
  HTTP load generator as a process, registration;
- :mod:`.load`: CPU time of the machine, this benchmark and one process (``/proc``);
- :mod:`.report`: the machine, number formats and the markdown document;
- :mod:`.benchmark`: what a benchmark module declares (:class:`~.benchmark.Benchmark`) and
  what it is run with (:class:`~.benchmark.Context`).
"""
