"""selfdistill's application: the workers along the flow, and the operator's tools.

One subpackage per stage of the flow, each a room with one job::

    prompts ─► serving ─► candidates ─► verifying ─► store ─► learning ─► adapter-events ─┐
                 ▲                                                                      │
                 └──────────────────────────────────────────────────────────────────────┘

- ``engines``    the model every stage calls (transformers, vLLM, OpenAI-compatible HTTP)
                 and the adapter it runs (``engines.hotswap``)
- ``serving``    the serve worker and the OpenAI-compatible server
- ``verifying``  the verify worker, the cascade, its tool stages, the store, verifier quality
- ``learning``   the train cycle, the eval gate, promotion, the bundled task, export
- ``operating``  the CLI, config, status, demo, ``up``, produce/tail, each worker's process

Imports flow one way: ``operating`` → ``learning`` → ``serving`` → ``verifying`` →
``engines`` → the libraries ``streams`` (Kafka) and ``adapters`` (LoRA files); never back
up. ``tests/test_layout.py`` holds the tree to it.
"""

__version__ = "0.1.0"
