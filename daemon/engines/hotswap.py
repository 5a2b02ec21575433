"""Adapter hot-swap: which adapter new requests go to, and how it changes safely (in serve,
and in verify with ``judge = "active"``).

A swap loads the new adapter *beside* the old one under its immutable version name,
checks its files (inside the registry, safetensors only, sha256 as recorded; an event that
carries no digest is refused), runs a canary generation on it, and only then routes new
requests to it. Hashing the files holds nothing; attaching the weights and the canary
hold the engine in one go at swap priority (``daemon.engines.priority``), so on the
embedded engine a batch in flight steps aside for them at its next decoding step and then
finishes on the adapter it started with. Requests already running hold the name they started with (``use()``), so
they finish on the old adapter, and an adapter is never unloaded while a request uses it.
Any failure leaves the old adapter serving and is reported (log,
``selfdistill_adapter_swaps_total{result="refused"|"failed"}``); ``apply`` never raises, so
an engine blip cannot stop the replica from following promotions.

On a server shared by several replicas (``engine.shared``: the ``openai`` engine, typically
one vLLM), the router never unloads: another replica may still route to any adapter, and
the server's own LRU (vLLM's ``--max-loras`` / ``--max-cpu-loras``) bounds what is resident.
An adapter the server already lists (another replica loaded it) is used as it is. When the
server forgets an adapter (it restarted), the first request on it fails with
``AdapterMissing`` and ``restore()`` loads it again from the files its event named.

Eviction and swaps are serialised (both take the swap lock), so a rollback to an adapter
being evicted finds it unloaded and loads it again instead of routing to a ghost.

The events come from ``streams.adapter_events``, which every replica follows from the
beginning of ``adapter-events`` and applies to its router. This module reads no Kafka: it is
the engine's side of a swap, so serve and a verify worker that judges on the active adapter
share it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from adapters.files import AdapterFileError, verify_adapter
from adapters.registry import BASE
from daemon.engines.base import AdapterMissing, ChatRequest, Engine, EngineError
from daemon.engines.metrics import ACTIVE_ADAPTER, ADAPTER_SWAPS, ADAPTERS_LOADED, SWAP_SECONDS
from daemon.engines.priority import SWAP, priority
from streams.schemas import AdapterEvent

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class SwapResult:
    ok: bool
    version: str | None  # what is active after the attempt (None: the base model)
    requested: str
    seconds: float = 0.0
    error: str | None = None


class AdapterRouter:
    """Holds the active adapter name and performs verified swaps."""

    def __init__(
        self,
        engine: Engine,
        registry_dir: Path,
        *,
        canary: ChatRequest | None = None,
        keep_loaded: int = 2,
    ) -> None:
        self.engine = engine
        self.registry_dir = registry_dir
        self.canary = canary or ChatRequest(
            [{"role": "user", "content": "Reply with the single word OK."}], max_tokens=2
        )
        self.keep_loaded = max(1, keep_loaded)
        self.shared = bool(getattr(engine, "shared", False))
        self._sources: dict[str, AdapterEvent] = {}  # what each adapter was loaded from
        self._active: str | None = None
        self._in_use: Counter[str] = Counter()
        self._loaded: list[str] = []  # oldest first; what this router loaded
        self._lock = threading.Lock()  # guards _active, _in_use, _loaded
        self._swap_lock = threading.Lock()  # one swap at a time
        self._settled = threading.Event()  # cleared while a swap is under way
        self._settled.set()
        self.swap_wait_s = 600.0  # longest a new batch waits for a swap to finish
        ACTIVE_ADAPTER.info({"version": BASE})

    @property
    def active(self) -> str | None:
        return self._active

    @contextlib.contextmanager
    def use(self) -> Iterator[str | None]:
        """The adapter for one request or batch; it stays loaded until the block ends.

        A batch that starts while a swap is under way waits for it, so the first batch after
        a promotion already runs on the new adapter instead of queueing one more on the old.
        """
        self._settled.wait(self.swap_wait_s)
        with self._lock:
            name = self._active
            if name is not None:
                self._in_use[name] += 1
        try:
            yield name
        finally:
            if name is not None:
                with self._lock:
                    self._in_use[name] -= 1
                    stale = name != self._active and self._in_use[name] == 0
                if stale:  # the common case (still active) costs no engine call per batch
                    self._evict()

    def apply(self, event: AdapterEvent) -> SwapResult:
        """Make ``event.version`` active, or explain why not while the old one keeps serving."""
        started = time.monotonic()
        target = None if event.version == BASE else event.version
        with self._swap_lock:
            if target == self._active:
                return SwapResult(True, target, event.version, 0.0)
            self._settled.clear()  # new batches wait for the outcome
            try:
                return self._swap(event, target, started)
            finally:
                self._settled.set()
                self._evict_locked()

    def restore(self, name: str) -> bool:
        """Load ``name`` again after the engine forgot it (a shared server restarted).

        The files are checked against the digest of the event that first loaded it; no
        canary (the same files passed one). Returns True when the engine has it again.
        """
        with self._swap_lock:
            event = self._sources.get(name)
            try:
                if name in self.engine.adapters():
                    return True
                if event is None:
                    log.error("cannot restore %s: this replica never loaded it", name)
                    return False
                path = verify_adapter(self.registry_dir, event.path or name, event.sha256)
                self.engine.load_adapter(name, str(path))  # "already loaded" is the engine's
            except (AdapterFileError, EngineError) as exc:
                log.error("could not restore adapter %s on the engine: %s", name, exc)
                return False
            ADAPTER_SWAPS.labels("restored").inc()
            log.warning("the engine had forgotten adapter %s (restarted?); loaded it again", name)
            self._count_loaded()
            return True

    def call(self, adapter: str | None, work: Callable[[], T]) -> T:
        """Run ``work`` (generation on ``adapter``); if the engine has forgotten the adapter
        (``AdapterMissing``: a shared server restarted), restore it and run it once more.
        Not restorable, the ``AdapterMissing`` (an unavailable engine) goes up: the worker
        loop waits and retries the batch, so nothing is lost."""
        try:
            return work()
        except AdapterMissing as exc:
            if adapter is None or exc.adapter != adapter or not self.restore(adapter):
                raise
            return work()

    def _swap(self, event: AdapterEvent, target: str | None, started: float) -> SwapResult:
        # The files are hashed with no hold on the engine; it is held (at swap priority, so a
        # generation in flight steps aside at its next decoding step) from attaching the
        # weights to the end of the canary, in one go: let go in between, and the canary
        # would wait for the batch in flight's next forward pass a second time.
        hold = getattr(self.engine, "exclusive", contextlib.nullcontext)
        try:
            with priority(SWAP):
                if target is not None and target not in self.engine.adapters():
                    if event.sha256 is None:  # a hand-made event: nothing to check files against
                        raise AdapterFileError(f"the event for {target} carries no sha256")
                    path = verify_adapter(self.registry_dir, event.path or target, event.sha256)
                    with hold():
                        self.engine.load_adapter(target, str(path))  # a shared one may have it
                        with self._lock:
                            self._loaded.append(target)
                        try:
                            self._run_canary(target)
                        except Exception:
                            if not self.shared:  # another replica may route to it already
                                self._unload(target)
                            raise
                    self._count_loaded()
                if target is not None and event.sha256 is not None:
                    self._sources[target] = event
        except (AdapterFileError, EngineError) as exc:
            ADAPTER_SWAPS.labels("refused").inc()
            log.error(
                "adapter %s refused; %s keeps serving: %s", event.version, self._active or BASE, exc
            )
            return SwapResult(False, self._active, event.version, error=str(exc))
        except Exception as exc:  # anything unexpected is a failed swap, never a crash
            ADAPTER_SWAPS.labels("failed").inc()
            log.exception(
                "swap to %s failed; %s keeps serving", event.version, self._active or BASE
            )
            return SwapResult(False, self._active, event.version, error=repr(exc))
        with self._lock:
            previous, self._active = self._active, target
        seconds = time.monotonic() - started
        ADAPTER_SWAPS.labels("ok").inc()
        SWAP_SECONDS.observe(seconds)
        ACTIVE_ADAPTER.info({"version": target or BASE})
        log.info(
            "%s: now serving %s (was %s; %.2fs)",
            event.action,
            target or BASE,
            previous or BASE,
            seconds,
        )
        return SwapResult(True, target, event.version, seconds)

    def _count_loaded(self) -> None:
        try:
            ADAPTERS_LOADED.set(len(self.engine.adapters()))
        except Exception as exc:  # a gauge is not worth a failed swap
            log.debug("could not count loaded adapters: %r", exc)

    def _run_canary(self, name: str) -> None:
        """A real generation on the new adapter; empty output or an error refuses it."""
        result = self.engine.generate([replace(self.canary, adapter=name)])[0]
        if not result.completions or not result.completions[0].text.strip():
            raise EngineError(f"canary generation on {name} returned no text")

    def _evict(self) -> None:
        """Evict, unless a swap is under way: it evicts itself when it ends, and an eviction
        beside it could unload the very adapter it is about to route to."""
        if not self._swap_lock.acquire(blocking=False):
            return
        try:
            self._evict_locked()
        finally:
            self._swap_lock.release()

    def _evict_locked(self) -> None:
        """Unload adapters beyond ``keep_loaded`` that are neither active nor in use (never
        on a shared server). Holds the swap lock; never raises."""
        if self.shared:
            return
        with self._lock:
            keep = set(self._loaded[-self.keep_loaded :]) | {self._active}
            victims = [a for a in self._loaded if a not in keep and self._in_use[a] == 0]
        for name in victims:
            self._unload(name)

    def _unload(self, name: str) -> None:
        with self._lock:
            if name in self._loaded:
                self._loaded.remove(name)
        try:
            self.engine.unload_adapter(name)
        except Exception as exc:  # forgotten here either way; the engine may keep it
            log.warning("unloading %s: %r", name, exc)
        self._count_loaded()
