"""LoRA training on a real tiny Llama: answer-only labels, the adapter on disk, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from pydantic import ValidationError
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters.files import PICKLE_SUFFIXES, check_adapter_files
from adapters.training import (
    IGNORE,
    TrainingConfig,
    TrainingInterrupted,
    TrainResult,
    _answer_only_loss,
    _collate,
    _full_forward_loss,
    _pick_loss,
    encode_conversation,
    train_lora,
)

ROOT = Path(__file__).resolve().parent.parent
# peft asks transformers 5 for a deprecated property when it wraps a model.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

PAIRS = [(17, 25), (3, 9), (40, 2), (8, 8), (12, 7), (6, 30)]


def chat(a: int, b: int) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": f"What is {a} + {b}?"},
        {"role": "assistant", "content": f"{a} + {b} = {a + b}."},
    ]


CONVERSATIONS = [chat(a, b) for a, b in PAIRS]
# Small and fast on the tiny model: a high learning rate makes 30 steps visibly move the loss.
TINY = TrainingConfig(
    r=4, alpha=8, dropout=0.0, learning_rate=1e-2, max_steps=30, batch_size=4, seed=0
)


def answer_nll(model: torch.nn.Module, tokenizer, conversations) -> float:
    """Mean negative log-likelihood of the answer tokens (the trained target), in eval mode."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for conv in conversations:
            ids, labels = encode_conversation(tokenizer, conv, 512)
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            targets = torch.tensor(labels[1:])
            where = targets != IGNORE
            total += float(
                torch.nn.functional.cross_entropy(logits[where], targets[where], reduction="sum")
            )
            count += int(where.sum())
    return total / count


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def trained(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, TrainResult]:
    out = tmp_path_factory.mktemp("trained") / "adapter"
    bad = [
        [{"role": "user", "content": "no answer"}],
        [*chat(1, 1)[:1], {"role": "assistant", "content": " "}],
    ]
    result = train_lora(tiny_model_dir, [*CONVERSATIONS, *bad], out, TINY, threads=1)
    return out, result


# ------------------------------------------------------------------- encoding
def test_labels_cover_exactly_the_last_answer_and_its_end_of_turn(tokenizer) -> None:
    conv = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4."},
        {"role": "user", "content": "And 17 + 25?"},
        {"role": "assistant", "content": "17 + 25 = 42."},
    ]
    ids, labels = encode_conversation(tokenizer, conv, 512)
    assert len(ids) == len(labels)
    start = next(i for i, lab in enumerate(labels) if lab != IGNORE)
    # Everything before is the prompt, exactly as serving encodes it (earlier answers included).
    prompt = tokenizer.apply_chat_template(conv[:-1], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(ids[:start]) == prompt
    assert all(lab == IGNORE for lab in labels[:start])
    assert labels[start:] == ids[start:]
    assert tokenizer.decode(ids[start:]) == "17 + 25 = 42.<|im_end|>"
    assert ids[-1] == tokenizer.eos_token_id  # the model learns to stop


def test_unusable_conversations_are_none(tokenizer) -> None:
    assert encode_conversation(tokenizer, [], 512) is None
    assert encode_conversation(tokenizer, chat(1, 2)[:1], 512) is None  # ends with the user
    empty = [chat(1, 2)[0], {"role": "assistant", "content": "  "}]
    assert encode_conversation(tokenizer, empty, 512) is None
    long_prompt = [{"role": "user", "content": "word " * 600}, chat(1, 2)[1]]
    assert encode_conversation(tokenizer, long_prompt, 512) is None


def test_a_long_answer_is_cut_at_its_end_when_the_prompt_fits(tokenizer) -> None:
    ids, labels = encode_conversation(tokenizer, chat(17, 25), 512)
    prompt_len = labels.count(IGNORE)
    cut = encode_conversation(tokenizer, chat(17, 25), prompt_len + 3)
    assert cut is not None
    cut_ids, cut_labels = cut
    assert len(cut_ids) == prompt_len + 3
    assert cut_ids == ids[: prompt_len + 3]  # the answer's beginning is kept
    assert cut_labels[prompt_len:] == ids[prompt_len : prompt_len + 3]
    assert encode_conversation(tokenizer, chat(17, 25), prompt_len) is None  # no room at all


# ---------------------------------------------------------------- config
def test_config_validates_and_forbids_unknown_keys() -> None:
    assert TrainingConfig().model_dump()["target_modules"] == "all-linear"
    with pytest.raises(ValidationError):
        TrainingConfig(r=0)
    with pytest.raises(ValidationError):
        TrainingConfig(dropout=1.0)
    with pytest.raises(ValidationError):
        TrainingConfig(lr=1e-3)  # a typo is an error, not a silently ignored key
    for name, field in TrainingConfig.model_fields.items():
        assert field.description, f"{name} has no description"


def test_importing_the_module_does_not_import_torch() -> None:
    code = (
        "import sys, adapters.training; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ loss
def test_answer_only_loss_equals_the_models_own_loss(tiny_model_dir: Path, tokenizer) -> None:
    """The lm_head-on-answers shortcut computes the very loss of the full forward, padding
    included (rows of different lengths, right-padded)."""
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"))
    model.eval()
    long = [{"role": "user", "content": "Please add these: " + "1 + " * 20 + "1?"}, chat(1, 1)[1]]
    batch = _collate(
        [encode_conversation(tokenizer, c, 512) for c in (chat(3, 9), long, chat(40, 2))],
        tokenizer.pad_token_id,
    )
    assert batch.attention_mask.sum() < batch.attention_mask.numel()  # there is padding
    with torch.no_grad():
        fast = _answer_only_loss(model, batch)
        full = _full_forward_loss(model, batch)
    assert torch.allclose(fast, full, rtol=1e-4)
    # So training takes the shortcut on a Llama (it would fall back silently otherwise).
    assert _pick_loss(model, batch) is _answer_only_loss


# ------------------------------------------------------------------ train
def test_training_writes_a_standard_safetensors_adapter(trained) -> None:
    out, _ = trained
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert not [p for p in out.iterdir() if p.suffix in PICKLE_SUFFIXES]
    check_adapter_files(out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert (config["r"], config["lora_alpha"]) == (4, 8)
    assert not config.get("modules_to_save")
    keys = load_file(out / "adapter_model.safetensors").keys()
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)  # no embeddings, no head


def test_training_result_accounts_for_the_run(trained) -> None:
    _, result = trained
    assert (result.samples, result.dropped, result.steps) == (len(CONVERSATIONS), 2, 30)
    assert result.epochs == 15.0  # 6 examples in 2 batches of 4, one step per batch
    assert 0 < result.answer_tokens < result.tokens
    assert json.dumps(result.as_dict())


def test_the_trained_adapter_loads_and_learned_the_answers(
    trained, tiny_model_dir: Path, tokenizer
) -> None:
    out, result = trained
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_nll = answer_nll(base, tokenizer, CONVERSATIONS)
    prompt = tokenizer.apply_chat_template(
        CONVERSATIONS[0][:1], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
    model = PeftModel.from_pretrained(base, out)
    tuned_nll = answer_nll(model, tokenizer, CONVERSATIONS)
    with torch.no_grad():
        tuned_logits = model(input_ids=ids).logits
    assert not torch.allclose(base_logits, tuned_logits, atol=1e-3)
    # Higher probability for the trained answers than the base gives them, by a clear margin,
    # and the loss the run reports went down from where it started (the base: B starts at 0).
    assert tuned_nll < base_nll - 0.3
    assert result.final_loss < base_nll - 0.3


def test_continuing_starts_from_the_given_adapter(
    trained, tiny_model_dir: Path, tmp_path: Path
) -> None:
    init, _ = trained
    config = TINY.model_copy(update={"max_steps": 0, "r": 8, "init": "active"})
    result = train_lora(tiny_model_dir, CONVERSATIONS, tmp_path / "next", config, init_adapter=init)
    assert result.steps == 0
    saved = load_file(tmp_path / "next" / "adapter_model.safetensors")
    original = load_file(init / "adapter_model.safetensors")
    assert saved.keys() == original.keys()
    assert all(torch.equal(saved[k], original[k]) for k in saved)
    # The adapter's own shape is kept (r=4), not the config's.
    assert json.loads((tmp_path / "next" / "adapter_config.json").read_text())["r"] == 4


def test_continued_training_starts_at_the_trained_loss(
    trained, tiny_model_dir: Path, tmp_path: Path
) -> None:
    init, first = trained
    config = TINY.model_copy(update={"max_steps": 2, "learning_rate": 1e-4})
    fresh = train_lora(tiny_model_dir, CONVERSATIONS, tmp_path / "fresh", config)
    again = train_lora(tiny_model_dir, CONVERSATIONS, tmp_path / "again", config, init_adapter=init)
    assert again.final_loss < fresh.final_loss - 0.3
    assert again.final_loss == pytest.approx(first.final_loss, abs=0.1)


def test_same_seed_same_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Dropout on, so the seed has to govern the dropout masks too.
    config = TINY.model_copy(update={"max_steps": 4, "dropout": 0.1, "batch_size": 2})

    def weights(name: str, seed: int) -> dict[str, torch.Tensor]:
        cfg = config.model_copy(update={"seed": seed})
        train_lora(tiny_model_dir, CONVERSATIONS, tmp_path / name, cfg)
        return load_file(tmp_path / name / "adapter_model.safetensors")

    a, b, c = weights("a", 0), weights("b", 0), weights("c", 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_should_stop_interrupts_without_writing(tiny_model_dir: Path, tmp_path: Path) -> None:
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) >= 3

    out = tmp_path / "adapter"
    with pytest.raises(TrainingInterrupted):
        train_lora(tiny_model_dir, CONVERSATIONS, out, TINY, should_stop=should_stop)
    assert len(calls) == 3  # polled between passes, stopped at the first True
    assert not out.exists()


def test_no_usable_examples_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    unusable = [chat(1, 2)[:1], [chat(1, 2)[0], {"role": "assistant", "content": ""}]]
    with pytest.raises(ValueError, match="no usable training examples"):
        train_lora(tiny_model_dir, unusable, tmp_path / "adapter", TINY)
    assert not (tmp_path / "adapter").exists()


def test_epochs_and_grad_accum_decide_the_steps(tiny_model_dir: Path, tmp_path: Path) -> None:
    # 6 examples in batches of 2 = 3 passes per epoch; 2 passes per step = 2 steps per epoch.
    config = TINY.model_copy(
        update={"max_steps": None, "epochs": 2, "batch_size": 2, "grad_accum": 2}
    )
    result = train_lora(tiny_model_dir, CONVERSATIONS, tmp_path / "adapter", config)
    assert (result.steps, result.epochs) == (4, 2.0)
    # Every example went through the forward exactly twice.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths = [len(encode_conversation(tokenizer, c, 512)[0]) for c in CONVERSATIONS]
    assert result.tokens == 2 * sum(lengths)
