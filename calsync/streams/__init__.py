"""Topics (``topics.py``: declared and created) and their records (``records.py``)."""
