"""Wire formats of calsync's topics: one module per format, beside its schema files.

- :mod:`calsync.codecs.avro`: ``calsync.events`` values, the Avro ``UnifiedEvent``
  (``unified_event.avsc``), as a Faust codec and as plain ``encode_event`` /
  ``decode_event`` functions for the pipelined producer.

Importing this package imports nothing heavy; import the format module you need.
"""
