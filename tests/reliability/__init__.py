"""Fault injection: kills, a lost broker, bad messages, tampered adapters, hostile candidates,
and a store that cannot be written. Each test prints its numbers (run with ``-s``)."""
