"""LoRA adapter lifecycle: training, files, registry, and the eval gate's decision rule.

A library: it knows nothing of Kafka or of the workers (see DESIGN.md, layering).
"""
