"""Webhook ingestion and the admin API: authenticity checks, produce, answer.

The gateway never calls a provider and never waits on a worker: it checks a
request, writes one record keyed by resource id, and answers once the broker has
acknowledged the write. It runs inside the worker or alone (``calsync gateway``).
"""
