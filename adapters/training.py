"""LoRA supervised fine-tuning on self-verified answers: loss on the answer tokens only.

The model should learn to *answer* the prompts it was asked, not to reproduce the prompts
(which it did not write and which can be long), so every token but the last assistant turn's
carries label -100. The end-of-turn token is part of the answer: a model that never sees it
as a target learns to ramble past the end of its answer.

Two things keep a CPU run cheap:
* examples are grouped by length into batches (sorted, chunked, the batch order shuffled each
  epoch), so little compute goes to padding;
* the vocabulary projection runs only where a label is predicted. A normal causal-LM forward
  builds a (tokens x vocab) logit tensor, 49k wide for SmolLM2, and on a CPU that tensor, its
  softmax and its gradient cost more than the rest of a small model; here the decoder's
  hidden states are gathered at the answer positions and only those go through ``lm_head``.
  Whether the model's layout allows this is checked numerically against its own forward on
  one example before training; a model where it does not falls back to the normal forward.

The adapter is written in PEFT's standard layout (``adapter_config.json`` +
``adapter_model.safetensors``), which PEFT and vLLM's ``--lora-modules`` both load. Nothing is
written when a run is interrupted, so a half-trained adapter never reaches the registry.

torch, transformers and peft are imported inside the functions: the config modules import
this file for :class:`TrainingConfig`, and a CLI that only reads settings should not pay
seconds of import time for them.
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    import torch

log = logging.getLogger("adapters.training")

IGNORE = -100  # the label torch's cross-entropy skips
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class TrainingConfig(BaseModel):
    """How an adapter is trained: the LoRA shape, the optimiser and the data limits."""

    model_config = {"extra": "forbid"}

    r: int = Field(16, gt=0, description="LoRA rank: the width of the low-rank update.")
    alpha: int = Field(
        32, gt=0, description="LoRA alpha; the update is scaled by alpha / r (PEFT lora_alpha)."
    )
    dropout: float = Field(
        0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA branch's input (PEFT lora_dropout)."
    )
    target_modules: str | list[str] = Field(
        "all-linear",
        description='Modules that get a LoRA branch: "all-linear" (every linear layer but the '
        'output head) or a list of module names, e.g. ["q_proj", "v_proj"].',
    )
    learning_rate: float = Field(2e-4, ge=0.0, description="Peak AdamW learning rate.")
    epochs: int = Field(2, ge=1, description="Passes over the training data (unless max_steps).")
    max_steps: int | None = Field(
        None,
        ge=0,
        description="Train for exactly this many optimizer steps, cycling over the data as "
        "often as needed; unset: `epochs` decides.",
    )
    batch_size: int = Field(8, ge=1, description="Examples per forward pass.")
    grad_accum: int = Field(
        1, ge=1, description="Forward passes per optimizer step (effective batch = product)."
    )
    max_length: int = Field(
        512,
        ge=2,
        description="Most tokens per example. An example whose prompt alone does not fit is "
        "dropped; one whose answer does not fit is cut at the answer's end.",
    )
    warmup_ratio: float = Field(
        0.03,
        ge=0.0,
        le=1.0,
        description="Share of the steps over which the learning rate ramps up linearly from 0; "
        "it then decays linearly to 0.",
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    seed: int = Field(
        0,
        description="Seed for the LoRA initialisation, dropout and batch order: same seed, "
        "same data, same adapter.",
    )
    init: Literal["base", "active"] = Field(
        "base",
        description='"base": train a fresh adapter on the cumulative data (reproducible from '
        'the data alone); "active": continue training the active adapter.',
    )


class TrainingInterrupted(RuntimeError):
    """``should_stop`` asked the run to stop; nothing was written."""


@dataclass(frozen=True)
class TrainResult:
    """What a run did, for the registry's record and the metrics."""

    samples: int  # examples actually used
    dropped: int  # examples dropped (prompt too long, empty answer, not ending in an answer)
    steps: int  # optimizer steps
    epochs: float  # passes over the data (fractional when max_steps ends mid-epoch)
    tokens: int  # non-pad tokens through the forward, summed over all steps
    answer_tokens: int  # tokens that carried loss, summed over all steps
    final_loss: float  # mean loss over the last epoch's worth of batches (nan: no steps)
    seconds: float  # the optimisation loop's wall time (model load and save excluded)
    tokens_per_s: float  # tokens / seconds

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: a nan loss (no steps) becomes None."""
        out = asdict(self)
        if math.isnan(out["final_loss"]):
            out["final_loss"] = None
        return out


# ------------------------------------------------------------------- encoding
def encode_conversation(
    tokenizer: Any, messages: list[dict[str, str]], max_length: int
) -> tuple[list[int], list[int]] | None:
    """``(input_ids, labels)`` for one chat, labels -100 except on the last assistant turn.

    The prompt is encoded exactly as serving encodes it (the chat template with the generation
    prompt), and the answer as the tokens the template puts after it, up to and including the
    end-of-turn token: the very sequence the model produces at inference time. Anything the
    template adds after the end-of-turn token (a newline) is dropped: the model never
    generates it. Returns None for an unusable example: no final assistant turn, an empty
    answer, a template whose prompt is not a prefix of the full chat, or a prompt that leaves
    no room for an answer within ``max_length``.
    """
    if not messages or messages[-1].get("role") != "assistant":
        return None
    if not (messages[-1].get("content") or "").strip():
        return None
    prefix = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prefix):
        return None
    prompt_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prefix) :], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is not None and eos in answer_ids:
        answer_ids = answer_ids[: len(answer_ids) - answer_ids[::-1].index(eos)]
    if not prompt_ids or not answer_ids or len(prompt_ids) >= max_length:
        return None
    answer_ids = answer_ids[: max_length - len(prompt_ids)]
    return prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids


# ------------------------------------------------------------------- batching
@dataclass
class _Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    tokens: int
    answer_tokens: int

    def to(self, device: torch.device) -> _Batch:
        if self.input_ids.device == device:
            return self
        return _Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            self.tokens,
            self.answer_tokens,
        )


def _length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length (ties by index), chunked: batches of similar lengths."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> _Batch:
    """Right-padded tensors; padding is masked out and carries no label."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
        labels[row, : len(y)] = torch.tensor(y)
    return _Batch(ids, mask, labels, int(mask.sum()), int((labels[:, 1:] != IGNORE).sum()))


# ------------------------------------------------------------------------ loss
LossFn = Callable[[Any, _Batch], "torch.Tensor"]


def _full_forward_loss(peft_model: Any, batch: _Batch) -> torch.Tensor:
    """Summed answer-token loss through the model's own forward (every position's logits)."""
    out = peft_model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        labels=batch.labels,
        use_cache=False,
    )
    return out.loss * batch.answer_tokens  # the model's loss is the mean over answer tokens


def _answer_only_loss(peft_model: Any, batch: _Batch) -> torch.Tensor:
    """Summed answer-token loss with ``lm_head`` applied to the answer positions only."""
    import torch

    causal_lm = peft_model.base_model.model
    hidden = causal_lm.model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
    ).last_hidden_state
    targets = batch.labels[:, 1:]
    where = targets != IGNORE
    logits = causal_lm.lm_head(hidden[:, :-1][where])
    return torch.nn.functional.cross_entropy(logits.float(), targets[where], reduction="sum")


def _pick_loss(peft_model: Any, probe: _Batch) -> LossFn:
    """The answer-only loss if this model's layout gives the same loss as its own forward.

    Llama-style models (``.model`` the decoder, ``.lm_head`` the head) do; a model that scales
    or soft-caps its logits in ``forward``, or has another layout, does not and keeps the
    normal forward.
    """
    import torch

    causal_lm = peft_model.base_model.model
    if not (
        isinstance(getattr(causal_lm, "model", None), torch.nn.Module)
        and isinstance(getattr(causal_lm, "lm_head", None), torch.nn.Module)
    ):
        log.info("no .model/.lm_head layout: full-vocabulary forward")
        return _full_forward_loss
    was_training = peft_model.training
    peft_model.eval()
    try:
        with torch.no_grad():
            fast = float(_answer_only_loss(peft_model, probe))
            full = float(_full_forward_loss(peft_model, probe))
    except Exception as exc:  # an unexpected layout: the model's own forward is the truth
        log.info("answer-only loss unavailable (%s): full-vocabulary forward", exc)
        return _full_forward_loss
    finally:
        peft_model.train(was_training)
    if math.isclose(fast, full, rel_tol=1e-3, abs_tol=1e-3):
        return _answer_only_loss
    log.info("answer-only loss %.5f != forward loss %.5f: full-vocabulary forward", fast, full)
    return _full_forward_loss


# ---------------------------------------------------------------------- train
def train_lora(
    model_dir: Path,
    conversations: Sequence[list[dict[str, str]]],
    out_dir: Path,
    config: TrainingConfig,
    *,
    init_adapter: Path | None = None,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
    threads: int | None = None,
    device: str = "auto",
    on_step: Callable[[int, int, float, float], None] | None = None,
) -> TrainResult:
    """Train a LoRA adapter on ``conversations`` (answer tokens only) and save it to ``out_dir``.

    A fresh adapter is built from ``config`` (r, alpha, dropout, target modules); with
    ``init_adapter``, that adapter's weights and LoRA shape are trained further instead
    (``config.init == "active"``, the caller picks the adapter). ``should_stop`` is polled
    between forward passes; when it returns True, :class:`TrainingInterrupted` is raised and
    nothing is written. ``on_step(step, total_steps, loss, tokens_per_s)`` is called after
    every optimizer step (the daemon's progress reporting; this library knows no daemon).
    Raises ValueError when no conversation is usable. ``device``:
    "auto" trains on CUDA when there is one, else on the CPU.
    """
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    if threads is not None:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoded = [encode_conversation(tokenizer, list(c), config.max_length) for c in conversations]
    examples = [e for e in encoded if e is not None]
    dropped = len(encoded) - len(examples)
    if not examples:
        raise ValueError(
            f"no usable training examples: all {len(encoded)} conversation(s) were dropped "
            f"(each must end in a non-empty assistant turn whose prompt fits in "
            f"max_length={config.max_length} tokens)"
        )
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0

    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(dev)
    torch.manual_seed(config.seed)
    with warnings.catch_warnings():
        # peft asks transformers 5 for a deprecated property when it wraps a model.
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        if init_adapter is not None:
            peft_model = PeftModel.from_pretrained(base, init_adapter, is_trainable=True)
        else:
            lora = LoraConfig(
                r=config.r,
                lora_alpha=config.alpha,
                lora_dropout=config.dropout,
                target_modules=config.target_modules,
                task_type="CAUSAL_LM",
            )
            peft_model = get_peft_model(base, lora)
    params = [p for p in peft_model.parameters() if p.requires_grad]

    batches = [
        _collate([examples[i] for i in idx], pad_id)
        for idx in _length_batches([len(x) for x, _ in examples], config.batch_size)
    ]
    loss_fn = _pick_loss(peft_model, _collate([examples[0]], pad_id).to(dev))
    steps_per_epoch = math.ceil(len(batches) / config.grad_accum)
    total_steps = (
        config.max_steps if config.max_steps is not None else steps_per_epoch * config.epochs
    )
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, round(config.warmup_ratio * total_steps), total_steps
    )
    rng = random.Random(config.seed)
    window = len(batches)  # the final loss averages over an epoch's worth of batches
    losses: list[float] = []
    tokens = answer_tokens = micro = steps = 0
    bar = _Bar(total_steps) if progress and total_steps else None
    peft_model.train()
    t0 = time.perf_counter()
    try:
        epoch = 0
        while steps < total_steps:
            epoch += 1
            order = list(range(len(batches)))
            rng.shuffle(order)
            epoch_losses: list[float] = []
            groups = [
                order[i : i + config.grad_accum] for i in range(0, len(order), config.grad_accum)
            ]
            for group in groups:
                if steps >= total_steps:
                    break
                # Token-level mean over the whole step, however it is split into passes.
                group_answer = sum(batches[b].answer_tokens for b in group)
                step_loss = 0.0
                for b in group:
                    if should_stop is not None and should_stop():
                        raise TrainingInterrupted(f"stopped after {steps} of {total_steps} steps")
                    batch = batches[b].to(dev)
                    loss_sum = loss_fn(peft_model, batch)
                    (loss_sum / group_answer).backward()
                    summed = float(loss_sum.detach())
                    step_loss += summed
                    tokens += batch.tokens
                    answer_tokens += batch.answer_tokens
                    micro += 1
                    losses.append(summed / max(batch.answer_tokens, 1))
                    epoch_losses.append(losses[-1])
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                steps += 1
                tps = tokens / max(time.perf_counter() - t0, 1e-9)
                if bar is not None:
                    bar.advance(step_loss / group_answer, tps)
                if on_step is not None:
                    on_step(steps, total_steps, step_loss / group_answer, tps)
            log.info(
                "epoch %d: loss %.4f over %d batches, %d/%d steps, %.0f tokens/s",
                epoch,
                sum(epoch_losses) / max(len(epoch_losses), 1),
                len(epoch_losses),
                steps,
                total_steps,
                tokens / max(time.perf_counter() - t0, 1e-9),
            )
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0

    tail = losses[-window:]
    result = TrainResult(
        samples=len(examples),
        dropped=dropped,
        steps=steps,
        epochs=micro / len(batches),
        tokens=tokens,
        answer_tokens=answer_tokens,
        final_loss=sum(tail) / len(tail) if tail else float("nan"),
        seconds=seconds,
        tokens_per_s=tokens / seconds if seconds > 0 else 0.0,
    )
    _save(peft_model, Path(out_dir))
    return result


def _save(peft_model: Any, out_dir: Path) -> None:
    """The adapter in PEFT's standard layout, and nothing else (no README, no embeddings)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out_dir, safe_serialization=True, save_embedding_layers=False)
    readme = out_dir / "README.md"
    if readme.exists():
        readme.unlink()


class _Bar:
    """A rich progress bar over optimizer steps: loss and tokens/s as it goes."""

    def __init__(self, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeRemainingColumn(),
        )
        self._task = self._progress.add_task("training", total=total, loss="-", tps="-")
        self._progress.start()

    def advance(self, loss: float, tokens_per_s: float) -> None:
        self._progress.update(self._task, advance=1, loss=f"{loss:.4f}", tps=f"{tokens_per_s:.0f}")

    def close(self) -> None:
        self._progress.stop()
