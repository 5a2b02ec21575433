"""Real models and adapters for tests: a tiny random Llama and real PEFT LoRA adapters.

The tiny model is built from a config (seconds) and saved as a normal HF model directory,
with the embedded SmolLM2 tokenizer and its chat template, so engines load it exactly as
they load any local model. Adapters are real PEFT adapters saved as safetensors.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from daemon.engines.model_files import resolve_model_dir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def build_tiny_llama(out: Path, embedded_dir: Path, seed: int = 0) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # No pad_token_id: SmolLM2 pads with its end-of-turn token, and a padding_idx would
        # pin that token's (tied) embedding to zero, so the model could never learn to stop.
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (embedded_dir / name).exists():
            shutil.copy(embedded_dir / name, out / name)
    return out


def build_adapter(
    model_dir: Path, out: Path, seed: int = 1, r: int = 4, scale: float = 0.5
) -> Path:
    """A LoRA adapter with random (non-zero) B matrices, so its outputs differ from the base."""
    from peft import LoraConfig, get_peft_model

    base = LlamaForCausalLM.from_pretrained(model_dir)
    cfg = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        target_modules="all-linear",
        lora_dropout=0.0,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * scale)
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


def embedded_dir() -> Path:
    return resolve_model_dir("embedded")


def build_yes_model(tiny_dir: Path, out: Path, steps: int = 100) -> Path:
    """The tiny model trained for a few seconds to answer every chat with "[[Y]]".

    A real model through the real engine whose judge always says yes, so integration tests
    can watch accepted samples flow (a random model writes no verdicts at all).
    """
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = LlamaForCausalLM.from_pretrained(tiny_dir)
    from daemon.verifying.cascade import load_templates

    # The real judge prompts (and a plain question), so it says yes where the cascade asks.
    values = [
        ("What is 12 + 7?", "19", "What is 12 plus 7?"),
        ("How many grams are in 3 kilograms?", "3000 grams", "How many grams in 3 kg?"),
    ]
    prompts = ["What is 2 + 2?", "Hi"] + [
        t.substitute(question=q, answer=a, inferred=i)
        for t in load_templates().values()
        for q, a, i in values
    ]
    rows, labels = [], []
    for p in prompts:
        prefix = tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        ids_prompt = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        ids_answer = tokenizer("[[Y]]" + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        rows.append(ids_prompt + ids_answer)
        labels.append([-100] * len(ids_prompt) + ids_answer)  # learn the answer only
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    label_ids = torch.tensor([lb + [-100] * (width - len(lb)) for lb in labels])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    torch.manual_seed(0)
    # Logits only where the answer is predicted: the full (tokens x 49k vocab) logit tensor of
    # these long judge prompts would cost seconds per step; this costs milliseconds.
    targets = label_ids[:, 1:]
    where = targets != -100
    for _ in range(steps):
        hidden = model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        logits = model.lm_head(hidden[:, :-1][where])
        loss = torch.nn.functional.cross_entropy(logits, targets[where])
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tiny_dir / name).exists():
            shutil.copy(tiny_dir / name, out / name)
    return out
