"""The workers and the CLI: they compose ``streams`` (Kafka) and ``adapters`` (LoRA files)."""

__version__ = "0.1.0"
