"""Learning: LoRA adapters trained on the store, gated, promoted.

``train`` is the cycle and its schedule; ``evaluate`` scores an adapter for the eval gate,
``verifier_gate`` measures the verifier before training on its data; ``promote`` publishes
promotions and rollbacks to ``adapter-events``; ``tasks`` is the bundled task; ``export``
writes the store out as training data.
"""
