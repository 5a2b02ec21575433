"""The embedded engine: transformers + PEFT, on CPU or CUDA.

Batching is real: prompts of one group are left-padded into one ``generate`` call with
``num_return_sequences=n``, so the answer and its extra candidates cost one forward pass
per token. Several LoRA adapters live on one base model; requests are grouped by adapter and
the base is reached through ``disable_adapter()``. One lock serialises generation and
adapter changes, so an adapter is never unloaded under a running generation.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters.files import AdapterFileError, check_adapter_files
from daemon.engines.base import (
    AdapterLoadError,
    ChatRequest,
    ChatResult,
    Completion,
    EngineError,
)

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EngineError("model.device = 'cuda' but torch sees no CUDA device")
    return device


class TransformersEngine:
    """A causal LM from a local directory, with LoRA adapters loaded beside it."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        name: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_sequences: int = 32,
    ) -> None:
        self.device = pick_device(device)
        torch_dtype = (
            (torch.bfloat16 if self.device == "cuda" else torch.float32)
            if dtype == "auto"
            else _DTYPES[dtype]
        )
        self.model_name = name or Path(model_dir).name
        self.max_batch_sequences = max_batch_sequences
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not self.tokenizer.chat_template:
            raise EngineError(f"{model_dir}: the tokenizer has no chat template")
        self.base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
        self.base.to(self.device).eval()
        self.model: Any = self.base  # a PeftModel once the first adapter is loaded
        self._adapters: dict[str, str] = {}
        self._lock = threading.RLock()
        eos = self.base.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = sorted(i for i in ids if i is not None)
        log.info("loaded %s on %s (%s)", self.model_name, self.device, torch_dtype)

    # ------------------------------------------------------------- generation
    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        results: list[ChatResult | None] = [None] * len(requests)
        groups: dict[tuple[object, ...], list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            if r.adapter is not None and r.adapter not in self._adapters:
                raise EngineError(f"adapter {r.adapter!r} is not loaded")
            groups[r.sampling_key()].append(i)
        with self._lock:
            for idxs in groups.values():
                n = requests[idxs[0]].n
                per_call = max(1, self.max_batch_sequences // n)
                for start in range(0, len(idxs), per_call):
                    chunk = idxs[start : start + per_call]
                    for i, res in zip(
                        chunk, self._generate([requests[i] for i in chunk]), strict=True
                    ):
                        results[i] = res
        return [r for r in results if r is not None]

    def _prompt_text(self, r: ChatRequest) -> str:
        return self.tokenizer.apply_chat_template(
            list(r.messages),
            tokenize=False,
            add_generation_prompt=not r.continue_final,
            continue_final_message=r.continue_final,
        )

    @contextlib.contextmanager
    def _routed(self, adapter: str | None) -> Iterator[Any]:
        """The model with ``adapter`` active, or the bare base when ``adapter`` is None."""
        if adapter is None:
            if self.model is self.base:
                yield self.base
            else:
                with self.model.disable_adapter():
                    yield self.model
        else:
            self.model.set_adapter(adapter)
            yield self.model

    @torch.inference_mode()
    def _generate(self, reqs: list[ChatRequest]) -> list[ChatResult]:
        r0 = reqs[0]  # a group shares adapter and sampling parameters
        enc = self.tokenizer(
            [self._prompt_text(r) for r in reqs],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(self.device)
        sampled = r0.temperature > 0
        # Greedy decoding gives n identical samples (as vLLM does): decode once, copy n times.
        per_prompt = r0.n if sampled else 1
        kwargs: dict[str, Any] = {
            "max_new_tokens": r0.max_tokens,
            "num_return_sequences": per_prompt,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.eos_ids,
            "return_dict_in_generate": True,
            "output_logits": r0.logprobs > 0,
        }
        if sampled:
            kwargs.update(do_sample=True, temperature=r0.temperature, top_p=r0.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if r0.seed is not None:
            torch.manual_seed(r0.seed)
        with self._routed(r0.adapter) as model:
            out = model.generate(**enc, **kwargs)
        new = out.sequences[:, enc["input_ids"].shape[1] :].tolist()
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
        first_logits = out.logits[0] if r0.logprobs > 0 else None
        results = []
        for i, r in enumerate(reqs):
            completions = []
            for j in range(r.n):
                row = i * per_prompt + (j if sampled else 0)
                completions.append(self._completion(new[row], first_logits, row, r.logprobs))
            results.append(ChatResult(completions, int(prompt_tokens[i]), r.adapter))
        return results

    def _completion(
        self, tokens: list[int], first_logits: torch.Tensor | None, row: int, k: int
    ) -> Completion:
        end = next((p for p, t in enumerate(tokens) if t in self.eos_ids), None)
        body = tokens if end is None else tokens[:end]
        top: dict[str, float] | None = None
        if first_logits is not None and k > 0:
            logprobs = torch.log_softmax(first_logits[row].float(), dim=-1)
            values, ids = logprobs.topk(k)
            top = {}
            for v, t in zip(values.tolist(), ids.tolist(), strict=True):
                top.setdefault(self.tokenizer.decode([t]), v)
        return Completion(
            text=self.tokenizer.decode(body, skip_special_tokens=True),
            tokens=len(body),
            finish_reason="length" if end is None else "stop",
            top_logprobs=top,
        )

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model across several calls (a swap's load + canary): no batch in between."""
        with self._lock:
            yield

    # ----------------------------------------------------------------- adapters
    def load_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        with self._lock:
            if name in self._adapters:
                raise AdapterLoadError(
                    f"adapter {name!r} is already loaded (versions are immutable)"
                )
            try:
                check_adapter_files(Path(path))
            except AdapterFileError as exc:
                raise AdapterLoadError(f"adapter {name!r} refused: {exc}") from exc
            try:
                with warnings.catch_warnings():
                    # peft asks transformers 5 for a deprecated property when it wraps a model
                    warnings.filterwarnings(
                        "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
                    )
                    if self.model is self.base:
                        self.model = PeftModel.from_pretrained(
                            self.base, path, adapter_name=name, is_trainable=False
                        )
                    else:
                        self.model.load_adapter(path, adapter_name=name, is_trainable=False)
                self.model.eval()
                self._check_finite(name)
            except Exception as exc:
                self._discard(name)
                raise AdapterLoadError(
                    f"adapter {name!r} failed to load from {path}: {exc}"
                ) from exc
            self._adapters[name] = path
            log.info("adapter %s loaded from %s", name, path)

    def _check_finite(self, name: str) -> None:
        """A NaN or inf weight would poison every answer; refuse it at load time."""
        for pname, param in self.model.named_parameters():
            if f".{name}." in pname and not torch.isfinite(param).all():
                raise AdapterLoadError(f"non-finite values in {pname}")

    def _discard(self, name: str) -> None:
        peft_config = getattr(self.model, "peft_config", {})
        if name not in peft_config:
            return
        if len(peft_config) == 1:  # the only adapter: back to the bare base model
            self.model = self.model.unload()
            self.base = self.model
        else:
            others = [a for a in peft_config if a != name]
            self.model.set_adapter(others[0])
            self.model.delete_adapter(name)

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            if name not in self._adapters:
                raise EngineError(f"adapter {name!r} is not loaded")
            self._discard(name)
            del self._adapters[name]
            log.info("adapter %s unloaded", name)

    def adapters(self) -> list[str]:
        return list(self._adapters)

    def close(self) -> None:
        with self._lock:
            self._adapters.clear()
            self.model = self.base = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
