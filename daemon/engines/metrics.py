"""Prometheus metrics of adapter hot-swaps (``engines.hotswap``): in serve, and in verify when
the active adapter judges."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

ADAPTER_SWAPS = Counter(
    "selfdistill_adapter_swaps_total",
    "Adapter swaps in serve, by result (ok, refused, failed; unavailable: the engine could "
    "not be reached, the swap is tried again with backoff; restored: loaded again after the "
    "engine forgot it).",
    ["result"],
)
SWAP_WAITS = Counter(
    "selfdistill_swap_waits_total",
    "Batches that started while a swap was under way, by outcome (settled: the swap ended "
    "first; bound: serve.swap_wait_s ran out and the batch ran on the adapter already loaded).",
    ["outcome"],
)
SWAP_SECONDS = Histogram(
    "selfdistill_adapter_swap_seconds",
    "Load + checksum + canary time of a successful swap.",
    buckets=(0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
)
ACTIVE_ADAPTER = Info("selfdistill_active_adapter", "The adapter new requests are routed to.")
ADAPTERS_LOADED = Gauge("selfdistill_adapters_loaded", "LoRA adapters resident in the engine.")


# Every bounded label value exists from the start at 0: a counter series that first appears
# at 1 is invisible to rate()/increase(), so the first swap failure would never alert.
for _result in ("ok", "refused", "failed", "unavailable", "restored"):
    ADAPTER_SWAPS.labels(_result)
for _outcome in ("settled", "bound"):
    SWAP_WAITS.labels(_outcome)
