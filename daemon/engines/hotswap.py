"""Adapter hot-swap: which adapter new requests go to, and how it changes safely (in serve,
and in verify with ``judge = "active"``).

A swap loads the new adapter *beside* the old one under its served name (below), checks
its files (inside the registry, safetensors only, sha256 as recorded; an event that
carries no digest is refused), runs a canary generation on it, and only then routes new
requests to it. Hashing the files holds nothing; attaching the weights and the canary
hold the engine in one go at swap priority (``daemon.engines.priority``), so on the
embedded engine a batch in flight steps aside for them at its next decoding step and then
finishes on the adapter it started with. Requests already running hold the name they
started with (``use()``), so they finish on the old adapter, and an adapter is never
unloaded while a request uses it. Any failure leaves the old adapter serving and is reported
(log, ``selfdistill_adapter_swaps_total{result="refused"|"failed"|"unavailable"}``);
``apply`` never raises, so an engine blip cannot stop the replica from following promotions.

On a server shared by several replicas (``engine.shared``: the ``openai`` engine, typically
one vLLM), the router never unloads: another replica may still route to any adapter, and
the server's own LRU (vLLM's ``--max-loras`` / ``--max-cpu-loras``) bounds what is resident.
An adapter the server already lists (another replica loaded it) is used as it is. When the
server forgets an adapter (it restarted), the first request on it fails with
``AdapterMissing`` and ``restore()`` loads it again from the files its event named.

Adapters are loaded and routed under their *served name* (``adapters.files.served_name``:
``<version>-<8 hex digits of the weights' sha256>``), never the bare version: two registries
sharing one server (staging and production, or a re-created registry) both make
``tiny-sd-v0001``, and only the digest keeps one from routing to the other's weights. What
this replica serves is still reported by version (``active``, ``Route.version``).

A swap that fails for a passing reason (``EngineUnavailable``: the server restarting, a 5xx,
a timeout) comes back with ``passing=True``: the follower applies the event again with
backoff until it succeeds or a newer event supersedes it. Anything else (bad files, a wrong
digest, a canary with no text, a 4xx refusal) is final for that event.

A batch that starts during a swap waits for it at most ``swap_wait_s`` (``serve.swap_wait_s``):
a slow load on a shared server must not stall every replica's production at once. Past the
bound the batch runs on the adapter already loaded, the swap goes on, and both are reported
(``selfdistill_swap_waits_total{outcome="bound"}``, the log, adapter-status when it ends).

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

from adapters.files import AdapterFileError, served_name, verify_adapter
from adapters.registry import BASE
from daemon.engines.base import (
    AdapterMissing,
    ChatRequest,
    Engine,
    EngineError,
    EngineUnavailable,
)
from daemon.engines.metrics import (
    ACTIVE_ADAPTER,
    ADAPTER_SWAPS,
    ADAPTERS_LOADED,
    SWAP_SECONDS,
    SWAP_WAITS,
)
from daemon.engines.priority import SWAP, priority
from streams.schemas import AdapterEvent

log = logging.getLogger(__name__)

T = TypeVar("T")


#: How long a batch waits for a swap under way by default (``serve.swap_wait_s``).
SWAP_WAIT_S = 5.0


@dataclass(frozen=True)
class Route:
    """What one batch runs on: the registry's ``version`` (what records and people see) and
    the ``name`` the engine knows those weights by (what requests carry); both None for the
    base model."""

    version: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class SwapResult:
    ok: bool
    version: str | None  # what is active after the attempt (None: the base model)
    requested: str
    seconds: float = 0.0
    error: str | None = None
    passing: bool = False  # refused for a passing reason: apply the event again later
    attempt: int = 1  # the how-many-th attempt at ``requested`` in a row this was


class AdapterRouter:
    """Holds the active adapter name and performs verified swaps."""

    def __init__(
        self,
        engine: Engine,
        registry_dir: Path,
        *,
        canary: ChatRequest | None = None,
        keep_loaded: int = 2,
        swap_wait_s: float = SWAP_WAIT_S,
    ) -> None:
        self.engine = engine
        self.registry_dir = registry_dir
        self.canary = canary or ChatRequest(
            [{"role": "user", "content": "Reply with the single word OK."}], max_tokens=2
        )
        self.keep_loaded = max(1, keep_loaded)
        self.shared = bool(getattr(engine, "shared", False))
        self.swap_wait_s = swap_wait_s  # longest a new batch waits for a swap to finish
        self._sources: dict[str, AdapterEvent] = {}  # served name -> the event it came from
        self._route = Route()  # what new batches run on
        self._in_use: Counter[str] = Counter()  # served names
        self._loaded: list[str] = []  # served names, oldest first; what this router loaded
        self._lock = threading.Lock()  # guards _route, _in_use, _loaded
        self._swap_lock = threading.Lock()  # one swap at a time
        self._settled = threading.Event()  # cleared while a swap is under way
        self._settled.set()
        self._swapping_to: str | None = None  # the version a swap under way loads
        self._failed: tuple[Route, int] | None = None  # the target that failed, and how often
        ACTIVE_ADAPTER.info({"version": BASE})

    @property
    def active(self) -> str | None:
        """The registry's version that new batches run on (None: the base model)."""
        return self._route.version

    @property
    def route(self) -> Route:
        return self._route

    @contextlib.contextmanager
    def use(self) -> Iterator[Route]:
        """The adapter for one request or batch; it stays loaded until the block ends.

        A batch that starts while a swap is under way waits for it, so the first batch after
        a promotion already runs on the new adapter instead of queueing one more on the old,
        but only ``swap_wait_s``: past that it runs on the adapter already loaded.
        """
        if not self._settled.is_set():
            waited = self._settled.wait(self.swap_wait_s)
            SWAP_WAITS.labels("settled" if waited else "bound").inc()
            if not waited:
                log.warning(
                    "a batch starts on %s: the swap to %s has taken over swap_wait_s (%gs); "
                    "it goes on, and its outcome is reported when it ends",
                    self._route.version or BASE,
                    self._swapping_to,
                    self.swap_wait_s,
                )
        with self._lock:
            route = self._route
            if route.name is not None:
                self._in_use[route.name] += 1
        try:
            yield route
        finally:
            name = route.name
            if name is not None:
                with self._lock:
                    self._in_use[name] -= 1
                    stale = name != self._route.name and self._in_use[name] == 0
                if stale:  # the common case (still active) costs no engine call per batch
                    self._evict()

    def apply(self, event: AdapterEvent) -> SwapResult:
        """Make ``event.version`` active, or explain why not while the old one keeps serving.

        The target is the served name of the event's version and digest: an event for a
        version this router already serves, with other weights, is a swap like any other.
        """
        started = time.monotonic()
        if event.version == BASE:
            target = Route()
        elif event.sha256 is None:  # a hand-made event: no digest, so no name for its weights
            target = Route(event.version, None)
        else:
            target = Route(event.version, served_name(event.version, event.sha256))
        with self._swap_lock:
            if target == self._route:
                self._failed = None
                return SwapResult(True, target.version, event.version, 0.0)
            self._settled.clear()  # new batches wait for the outcome (up to swap_wait_s)
            self._swapping_to = event.version
            try:
                result = self._swap(event, target, started)
            finally:
                self._settled.set()
                self._evict_locked()
            return self._count_attempt(target, result)

    def _count_attempt(self, target: Route, result: SwapResult) -> SwapResult:
        """Number the attempts at one target in a row (what adapter-status reports)."""
        if result.ok:
            self._failed = None
            return result
        before = self._failed
        attempt = before[1] + 1 if before is not None and before[0] == target else 1
        self._failed = (target, attempt)
        return replace(result, attempt=attempt)

    def restore(self, name: str) -> bool:
        """Load ``name`` (a served name) again after the engine forgot it (a shared server
        restarted).

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
                path = verify_adapter(self.registry_dir, event.path or event.version, event.sha256)
                self.engine.load_adapter(name, str(path))  # "already loaded" is the engine's
            except (AdapterFileError, EngineError) as exc:
                log.error("could not restore adapter %s on the engine: %s", name, exc)
                return False
            ADAPTER_SWAPS.labels("restored").inc()
            log.warning("the engine had forgotten adapter %s (restarted?); loaded it again", name)
            self._count_loaded()
            return True

    def call(self, adapter: str | None, work: Callable[[], T]) -> T:
        """Run ``work`` (generation on ``adapter``, a served name: ``Route.name``); if the
        engine has forgotten the adapter (``AdapterMissing``: a shared server restarted),
        restore it and run it once more.
        Not restorable, the ``AdapterMissing`` (an unavailable engine) goes up: the worker
        loop waits and retries the batch, so nothing is lost."""
        try:
            return work()
        except AdapterMissing as exc:
            if adapter is None or exc.adapter != adapter or not self.restore(adapter):
                raise
            return work()

    def _swap(self, event: AdapterEvent, target: Route, started: float) -> SwapResult:
        # The files are hashed with no hold on the engine; it is held (at swap priority, so a
        # generation in flight steps aside at its next decoding step) from attaching the
        # weights to the end of the canary, in one go: let go in between, and the canary
        # would wait for the batch in flight's next forward pass a second time.
        hold = getattr(self.engine, "exclusive", contextlib.nullcontext)
        name = target.name
        try:
            with priority(SWAP):
                if target.version is not None and name is None:
                    raise AdapterFileError(f"the event for {event.version} carries no sha256")
                if name is not None and name not in self.engine.adapters():
                    assert event.sha256 is not None  # a name is derived from it
                    path = verify_adapter(
                        self.registry_dir, event.path or event.version, event.sha256
                    )
                    with hold():
                        self.engine.load_adapter(name, str(path))  # a shared one may have it
                        with self._lock:
                            self._loaded.append(name)
                        try:
                            self._run_canary(name)
                        except Exception:
                            if not self.shared:  # another replica may route to it already
                                self._unload(name)
                            raise
                    self._count_loaded()
                if name is not None:
                    self._sources[name] = event
        except EngineUnavailable as exc:  # passing: the follower applies the event again
            ADAPTER_SWAPS.labels("unavailable").inc()
            log.warning(
                "adapter %s not loaded yet, the engine is unavailable (%s); %s keeps serving "
                "and the swap is tried again",
                event.version,
                exc,
                self.active or BASE,
            )
            return SwapResult(False, self.active, event.version, error=str(exc), passing=True)
        except (AdapterFileError, EngineError) as exc:
            ADAPTER_SWAPS.labels("refused").inc()
            log.error(
                "adapter %s refused; %s keeps serving: %s", event.version, self.active or BASE, exc
            )
            return SwapResult(False, self.active, event.version, error=str(exc))
        except Exception as exc:  # anything unexpected is a failed swap, never a crash
            ADAPTER_SWAPS.labels("failed").inc()
            log.exception("swap to %s failed; %s keeps serving", event.version, self.active or BASE)
            return SwapResult(False, self.active, event.version, error=repr(exc))
        with self._lock:
            previous, self._route = self._route, target
        seconds = time.monotonic() - started
        ADAPTER_SWAPS.labels("ok").inc()
        SWAP_SECONDS.observe(seconds)
        ACTIVE_ADAPTER.info({"version": target.version or BASE})
        log.info(
            "%s: now serving %s (was %s; %.2fs)",
            event.action,
            name or BASE,
            previous.name or BASE,
            seconds,
        )
        return SwapResult(True, target.version, event.version, seconds)

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
            keep = set(self._loaded[-self.keep_loaded :]) | {self._route.name}
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
