"""Every series a worker's /metrics can show: each stage's metrics, and the build.

Each stage defines its own (``engines/metrics.py`` the swaps, ``serving/``, ``verifying/``
and ``learning/metrics.py`` theirs, ``streams/metrics.py`` the Kafka layer's); importing this
module registers them all, which is what the dashboards and alert rules are checked against.
Labels carry bounded values only: topic names, results, adapter versions (one per training
run, so a handful a day), never prompt ids.
"""

from __future__ import annotations

from prometheus_client import Info

# Imported for what importing does: each module registers its stage's series.
import daemon.engines.metrics
import daemon.learning.metrics
import daemon.serving.metrics
import daemon.verifying.metrics  # noqa: F401
import streams.metrics  # noqa: F401

BUILD_INFO = Info("selfdistill_build", "Version of selfdistill and Python, and which worker.")
