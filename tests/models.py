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
        pad_token_id=tokenizer.pad_token_id,
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
