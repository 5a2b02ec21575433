"""The in-process vLLM engine: ``vllm.LLM`` with multi-LoRA, for GPU machines.

Kept deliberately thin. vLLM cannot be installed or run where the test suite runs (no GPU),
so everything here beyond the import guard and the adapter-id bookkeeping (``LoraIds``,
which is pure and tested) is a direct translation of the engine interface into vLLM calls,
with as little logic as possible behind what cannot be tested. The calls follow the vLLM
V1 API (0.8 and later), checked against vLLM's own source and docs:

* ``LLM.chat(messages, sampling_params=, use_tqdm=, lora_request=, add_generation_prompt=,
  continue_final_message=)`` takes a list of conversations and returns one ``RequestOutput``
  per conversation, in input order (vllm/entrypoints/llm.py). ``lora_request`` is one
  ``LoRARequest`` (older releases) or also a sequence (newer ones): we pass one per group.
* ``LoRARequest(lora_name=, lora_int_id=, lora_path=)`` (vllm/lora/request.py); the id must
  be > 0 and vLLM caches adapters by id and, since 0.11, compares requests by name, so
  neither is ever reused here. Passed by keyword: the positional order is not stable.
* ``LLM.llm_engine.add_lora(req) -> bool`` / ``remove_lora(id) -> bool`` / ``list_loras()``
  (vllm/v1/engine/llm_engine.py; tests/lora/test_lora_functions.py).
* ``SamplingParams(n, temperature, top_p, max_tokens, seed, logprobs)``;
  ``RequestOutput.prompt_token_ids`` / ``.outputs``; ``CompletionOutput.text`` /
  ``.token_ids`` / ``.finish_reason`` / ``.logprobs`` (a list, one ``{token_id: Logprob}``
  per generated token; ``Logprob.logprob`` / ``.decoded_token``) (vllm/outputs.py,
  vllm/logprobs.py).
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapters.files import AdapterFileError, check_adapter_files
from daemon.engines.base import (
    AdapterLoadError,
    ChatRequest,
    ChatResult,
    Completion,
    EngineError,
)

log = logging.getLogger(__name__)

MISSING_VLLM = (
    "the vllm engine needs the 'vllm' extra: pip install 'selfdistill[vllm]' (on a GPU machine)"
)


class LoraIds:
    """vLLM adapter names and integer ids; an id is handed out once for the life of the process.

    vLLM caches a loaded LoRA by its int id (its worker caches and prefix-cache keys use the
    id), so an id is never reused: loading a name again after an unload gets a fresh id, and
    vLLM reads the files again. A name stands for one set of weights (versions are immutable),
    so a name may come back after an unload (a rollback to an evicted version) only from the
    same path; under another path it would be another adapter wearing a used name.
    """

    def __init__(self) -> None:
        self._next_id = 1
        self._paths: dict[str, str] = {}  # every name ever handed to vLLM → its resolved path
        self._loaded: dict[str, int] = {}

    def check(self, name: str, path: str) -> None:
        """Refuse a name that is loaded now, or was loaded before from elsewhere."""
        if name in self._loaded:
            raise AdapterLoadError(f"adapter {name!r} is already loaded (versions are immutable)")
        before = self._paths.get(name)
        if before is not None and before != path:
            raise AdapterLoadError(
                f"adapter name {name!r} was loaded before from {before}; a different adapter "
                f"at {path} needs a new name"
            )

    def allocate(self, name: str, path: str) -> int:
        """Mark ``name`` loaded from ``path`` under a fresh id."""
        self.check(name, path)
        self._paths[name] = path
        lora_id = self._next_id
        self._next_id += 1
        self._loaded[name] = lora_id
        return lora_id

    def release(self, name: str) -> int:
        """Forget a loaded adapter and return its id (never handed out again)."""
        try:
            return self._loaded.pop(name)
        except KeyError:
            raise EngineError(f"adapter {name!r} is not loaded") from None

    def loaded(self) -> list[str]:
        return list(self._loaded)

    def __contains__(self, name: object) -> bool:
        return name in self._loaded


def _import_vllm() -> tuple[Any, Any, Any]:
    """(LLM, SamplingParams, LoRARequest), or the EngineError that says how to get them."""
    try:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError as exc:
        raise EngineError(MISSING_VLLM) from exc
    return LLM, SamplingParams, LoRARequest


def _first_token_logprobs(output: Any) -> dict[str, float] | None:
    """Decoded token -> logprob for the first generated token (V1 adds the sampled one)."""
    if not output.logprobs:
        return None
    top: dict[str, float] = {}
    for token_id, lp in output.logprobs[0].items():
        text = lp.decoded_token if lp.decoded_token is not None else str(token_id)
        # Two ids can decode to the same text; keep the likelier, as a judge reading "Yes"
        # wants the best evidence for that word.
        if text not in top or lp.logprob > top[text]:
            top[text] = lp.logprob
    return top


class VllmEngine:
    """One ``vllm.LLM`` on this process's GPU, with LoRA adapters added and removed live."""

    def __init__(
        self,
        model: str,
        *,
        served_name: str | None = None,
        max_lora_rank: int = 16,
        max_loras: int = 4,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        dtype: str = "auto",
        seed: int = 0,
    ) -> None:
        llm_cls, self._sampling_params, self._lora_request = _import_vllm()
        self.model_name = served_name or model
        # max_loras bounds the adapters in one batch (GPU slots); more can stay registered,
        # vLLM evicts least-recently-used ones and reloads them from lora_path on demand.
        self._llm: Any = llm_cls(
            model=model,
            enable_lora=True,
            max_lora_rank=max_lora_rank,
            max_loras=max_loras,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            dtype=dtype,
            seed=seed,
        )
        self._ids = LoraIds()
        self._requests: dict[str, Any] = {}  # adapter name -> its LoRARequest
        # vllm.LLM is not thread-safe, and an adapter must not vanish mid-generation.
        self._lock = threading.RLock()
        log.info("vLLM engine ready: %s (served as %s)", model, self.model_name)

    def _live(self) -> Any:
        if self._llm is None:
            raise EngineError("the vLLM engine is closed")
        return self._llm

    # ------------------------------------------------------------- generation
    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        results: list[ChatResult | None] = [None] * len(requests)
        groups: dict[tuple[object, ...], list[int]] = defaultdict(list)
        with self._lock:
            llm = self._live()
            for i, r in enumerate(requests):
                if r.adapter is not None and r.adapter not in self._requests:
                    raise EngineError(f"adapter {r.adapter!r} is not loaded")
                groups[r.sampling_key()].append(i)
            for idxs in groups.values():
                r0 = requests[idxs[0]]  # a group shares adapter and sampling parameters
                outputs = llm.chat(
                    [[dict(m) for m in requests[i].messages] for i in idxs],
                    sampling_params=self._sampling_params(
                        n=r0.n,
                        temperature=r0.temperature,
                        top_p=r0.top_p,
                        max_tokens=r0.max_tokens,
                        seed=r0.seed,
                        logprobs=r0.logprobs or None,
                    ),
                    use_tqdm=False,
                    lora_request=None if r0.adapter is None else self._requests[r0.adapter],
                    # vLLM refuses both at once: continuing a turn means no new turn header.
                    add_generation_prompt=not r0.continue_final,
                    continue_final_message=r0.continue_final,
                )
                if len(outputs) != len(idxs):
                    raise EngineError(f"vLLM returned {len(outputs)} outputs for {len(idxs)}")
                for i, ro in zip(idxs, outputs, strict=True):
                    results[i] = self._result(requests[i], ro)
        return [r for r in results if r is not None]

    @staticmethod
    def _result(request: ChatRequest, ro: Any) -> ChatResult:
        completions = [
            Completion(
                text=o.text,
                tokens=len(o.token_ids),
                finish_reason="length" if o.finish_reason == "length" else "stop",
                top_logprobs=_first_token_logprobs(o) if request.logprobs > 0 else None,
            )
            for o in ro.outputs
        ]
        return ChatResult(completions, len(ro.prompt_token_ids or ()), request.adapter)

    # ----------------------------------------------------------------- adapters
    def load_adapter(self, name: str, path: str) -> None:
        with self._lock:
            llm = self._live()
            resolved = str(Path(path).resolve())
            self._ids.check(name, resolved)  # before touching the disk
            try:
                check_adapter_files(Path(path))
            except AdapterFileError as exc:
                raise AdapterLoadError(f"adapter {name!r} refused: {exc}") from exc
            # The id is burnt from here on, even if loading fails: vLLM may have cached
            # something under it before failing.
            lora_id = self._ids.allocate(name, resolved)
            # vLLM loads a LoRA lazily on first use; adding it now surfaces a broken adapter
            # (bad rank, wrong modules, unreadable weights) here instead of mid-traffic.
            try:
                request = self._lora_request(
                    lora_name=name, lora_int_id=lora_id, lora_path=resolved
                )
                ok = llm.llm_engine.add_lora(request)
            except Exception as exc:
                self._ids.release(name)
                raise AdapterLoadError(
                    f"adapter {name!r} failed to load from {path}: {exc}"
                ) from exc
            if ok is False:
                self._ids.release(name)
                raise AdapterLoadError(f"adapter {name!r}: vLLM refused it (add_lora False)")
            self._requests[name] = request
            log.info("adapter %s loaded from %s as vLLM LoRA %d", name, path, lora_id)

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            llm = self._live()
            lora_id = self._ids.release(name)
            del self._requests[name]
            remove = getattr(llm.llm_engine, "remove_lora", None)
            if remove is not None:
                try:
                    remove(lora_id)
                except Exception as exc:  # forgotten here either way; its id is never reused
                    log.warning("vLLM could not remove LoRA %d (%s): %s", lora_id, name, exc)
            log.info("adapter %s unloaded", name)

    def adapters(self) -> list[str]:
        return self._ids.loaded()

    def close(self) -> None:
        """Give the GPU back, so a restart in the same process does not find it full."""
        with self._lock:
            llm, self._llm = self._llm, None
            self._requests.clear()
            if llm is None:
                return
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                try:  # V1 runs the engine core in a child process; stop it now, not at GC
                    core.shutdown()
                except Exception as exc:
                    log.warning("vLLM engine core shutdown failed: %s", exc)
            del llm
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception as exc:  # best effort: the process may be exiting anyway
                log.debug("could not empty the CUDA cache: %s", exc)
