"""The embedded engine: transformers + PEFT, on CPU or CUDA.

Batching is real: prompts of one group are left-padded into one ``generate`` call with
``num_return_sequences=n``, so the answer and its extra candidates cost one forward pass
per token. Several LoRA adapters live on one base model; requests are grouped by adapter and
the base is reached by disabling the adapter layers.

One model runs one generation at a time, so who waits matters (``daemon.engines.priority``):
the engine's lock goes to the most urgent waiter (a swap, then production answers, then
judging and evaluation), and a generation steps aside between two decoding steps when a
more urgent caller waits. It resumes where it was: its KV cache is its own, and on taking
the model back it routes it to its adapter again and restores its random state, so its
tokens are the ones it would have produced alone. A promotion therefore waits one decoding
step, not a batch. Loading an adapter reads, checks and builds its weights before taking
the lock; only attaching them to the model holds it. An adapter a running generation uses
cannot be unloaded.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria

from adapters.files import AdapterFileError, check_adapter_files
from daemon.engines.base import (
    AdapterLoadError,
    ChatRequest,
    ChatResult,
    Completion,
    EngineError,
)
from daemon.engines.priority import SWAP, PriorityLock

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
        background_starve_s: float = 10.0,
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
        self._lock = PriorityLock(starve_s=background_starve_s)
        self._routed_to: object = _UNROUTED  # what the model's adapter layers are set to now
        self._running: Counter[str] = Counter()  # adapters under a running generation
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
        for idxs in groups.values():
            n = requests[idxs[0]].n
            per_call = max(1, self.max_batch_sequences // n)
            for start in range(0, len(idxs), per_call):
                chunk = idxs[start : start + per_call]
                # The lock per chunk: a swap or a more urgent batch may go between two.
                with self._lock.hold():
                    out = self._generate([requests[i] for i in chunk])
                for i, res in zip(chunk, out, strict=True):
                    results[i] = res
        return [r for r in results if r is not None]

    def _prompt_text(self, r: ChatRequest) -> str:
        return self.tokenizer.apply_chat_template(
            list(r.messages),
            tokenize=False,
            add_generation_prompt=not r.continue_final,
            continue_final_message=r.continue_final,
        )

    def _route(self, adapter: str | None) -> Any:
        """Set the model's adapter layers for ``adapter`` (None: the bare base) and return
        the model to call. A no-op when they already are: routing walks every layer."""
        if self.model is self.base:
            self._routed_to = None
            return self.base
        if self._routed_to != adapter:
            if adapter is None:
                self.model.base_model.disable_adapter_layers()
            else:
                self.model.base_model.enable_adapter_layers()
                self.model.set_adapter(adapter)
            self._routed_to = adapter
        return self.model

    @contextlib.contextmanager
    def _running_on(self, adapter: str | None) -> Iterator[None]:
        if adapter is not None:
            self._running[adapter] += 1
        try:
            yield
        finally:
            if adapter is not None:
                self._running[adapter] -= 1

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
        model = self._route(r0.adapter)
        with self._running_on(r0.adapter):
            out = model.generate(**enc, **kwargs, stopping_criteria=[_StepAside(self, r0.adapter)])
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

    def _step_aside(self, adapter: str | None) -> None:
        """Between two decoding steps: let a more urgent caller have the model, then route it
        back to ``adapter`` with this generation's random state, as if nobody had come."""
        rng: list[torch.Tensor] = []

        def save() -> None:
            rng.append(torch.get_rng_state())
            if self.device == "cuda":
                rng.append(torch.cuda.get_rng_state())

        def restore() -> None:
            torch.set_rng_state(rng[0])
            if self.device == "cuda":
                torch.cuda.set_rng_state(rng[1])
            self._route(adapter)

        self._lock.yield_to_urgent(save, restore)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model across several calls: nobody goes in between, and generations in
        the block do not step aside. Use sparingly; it defeats the priorities."""
        with self._lock.hold():
            yield

    # ----------------------------------------------------------------- adapters
    def load_adapter(self, name: str, path: str) -> None:
        """Read and check the files and weights first, then attach them under the lock (at
        swap priority): a generation in flight waits a few hundred milliseconds, not a load."""
        if name in self._adapters:
            raise AdapterLoadError(f"adapter {name!r} is already loaded (versions are immutable)")
        config, weights = self._read_adapter(name, Path(path))
        with self._lock.hold(SWAP):
            if name in self._adapters:
                raise AdapterLoadError(
                    f"adapter {name!r} is already loaded (versions are immutable)"
                )
            try:
                self._attach(name, config, weights)
            except Exception as exc:
                self._discard(name)
                raise AdapterLoadError(
                    f"adapter {name!r} failed to load from {path}: {exc}"
                ) from exc
            self._adapters[name] = path
        log.info("adapter %s loaded from %s", name, path)

    def _read_adapter(self, name: str, path: Path) -> tuple[Any, dict[str, torch.Tensor]]:
        """The adapter's config and weights from safetensors, refused when unsafe or non-finite
        (a NaN or inf weight would poison every answer). Touches no model."""
        from peft import PeftConfig
        from peft.utils import load_peft_weights

        try:
            check_adapter_files(path)
        except AdapterFileError as exc:
            raise AdapterLoadError(f"adapter {name!r} refused: {exc}") from exc
        try:
            config = PeftConfig.from_pretrained(str(path))
            weights = load_peft_weights(str(path), device=self.device)
        except Exception as exc:
            raise AdapterLoadError(f"adapter {name!r} failed to load from {path}: {exc}") from exc
        for key, tensor in weights.items():
            if not torch.isfinite(tensor).all():
                raise AdapterLoadError(f"adapter {name!r}: non-finite values in {key}")
        config.inference_mode = True
        return config, weights

    def _attach(self, name: str, config: Any, weights: dict[str, torch.Tensor]) -> None:
        """Add the adapter's layers (empty, on the meta device) and assign its weights."""
        from peft import PeftModel, set_peft_model_state_dict

        with warnings.catch_warnings():
            # peft asks transformers 5 for a deprecated property when it wraps a model
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
            )
            if self.model is self.base:
                self.model = PeftModel(self.base, config, adapter_name=name, low_cpu_mem_usage=True)
            else:
                self.model.add_adapter(name, config, low_cpu_mem_usage=True)
        self._routed_to = _UNROUTED
        result = set_peft_model_state_dict(
            self.model, weights, adapter_name=name, low_cpu_mem_usage=True
        )
        missing = [k for k in result.missing_keys if f".{name}." in k or k.endswith(f".{name}")]
        if missing:
            raise AdapterLoadError(f"weights missing for {len(missing)} tensors, e.g. {missing[0]}")
        self.model.eval()

    def _discard(self, name: str) -> None:
        peft_config = getattr(self.model, "peft_config", {})
        if name not in peft_config:
            return
        self._routed_to = _UNROUTED
        if len(peft_config) == 1:  # the only adapter: back to the bare base model
            self.model = self.model.unload()
            self.base = self.model
        else:
            others = [a for a in peft_config if a != name]
            self.model.set_adapter(others[0])
            self.model.delete_adapter(name)

    def unload_adapter(self, name: str) -> None:
        with self._lock.hold(SWAP):
            if name not in self._adapters:
                raise EngineError(f"adapter {name!r} is not loaded")
            if self._running[name]:
                raise EngineError(f"adapter {name!r} is in use by a running generation")
            self._discard(name)
            del self._adapters[name]
            log.info("adapter %s unloaded", name)

    def adapters(self) -> list[str]:
        return list(self._adapters)

    def close(self) -> None:
        with self._lock.hold(SWAP):
            self._adapters.clear()
            self.model = self.base = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


_UNROUTED = object()  # the adapter layers' state is unknown: route before the next call


class _StepAside(StoppingCriteria):
    """Called by ``generate`` after every decoding step; never stops anything. It is where a
    generation lets a more urgent caller have the model (``TransformersEngine._step_aside``)."""

    def __init__(self, engine: TransformersEngine, adapter: str | None) -> None:
        self.engine, self.adapter = engine, adapter

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        if self.engine._lock.urgent_waiting():
            self.engine._step_aside(self.adapter)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
