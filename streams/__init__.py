"""Kafka I/O for the daemon: topics, message schemas, producer, the worker loop, dead letters.

A library: it knows nothing of the workers, engines or the store that use it.
"""
