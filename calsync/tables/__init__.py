"""Tables: declared in ``declare.py``; their values in ``records.py``; all keyed by resource id."""
