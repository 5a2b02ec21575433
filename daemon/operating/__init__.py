"""Operating: what an operator runs and reads.

``cli`` (one module per command group), ``config`` (``Settings`` composes each stage's
config), ``processes`` (each worker as a process: its /metrics endpoint, until a signal),
``up`` (every worker in one process), ``demo``, ``status``, ``produce``/``tail``, ``observe``
(/metrics, /healthz, /readyz), ``metrics`` (every exported series), ``logs``.
"""
