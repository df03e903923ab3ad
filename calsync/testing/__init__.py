"""Test support for calsync: helpers that tests and benchmarks use, never the runtime.

:mod:`calsync.testing.broker` starts a real single-node Apache Kafka broker (KRaft) as a
child JVM built from Maven Central jars, so tests run against the broker production uses.
"""
