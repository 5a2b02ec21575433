"""Logging for workers and the CLI: plain lines on stderr, which journald and kubectl keep."""

from __future__ import annotations

import logging
import os

from daemon.redact import RedactingFormatter

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_NOISY = ("kafka", "urllib3", "httpx", "apscheduler")


def setup_logging(level: str = "INFO") -> None:
    """Plain lines on stderr, each masked (``daemon.redact``): a credential from the
    configuration, or inside a URL an engine's error quotes, never reaches the log."""
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # kafka-python narrates every connection at INFO; keep it for DEBUG runs only.
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    # Progress bars from transformers' loading are noise in a worker's log.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
