"""Faust agents, one module per job, and the plain logic they call.

``sync.py`` (notifications, with ``dispatch.py``/``offsets.py``), ``commands.py``,
``timers.py`` (retries and timers); ``service.py`` and ``subscriptions.py`` hold what a
notification does. :func:`calsync.app.create_app` installs the agents.
"""
