"""What every benchmark shares: machine facts, quiet logs, stderr progress, the JSON record."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

import kafka

TARGET_RATIO = 0.9


def machine(*modules: str) -> dict[str, Any]:
    """Where the numbers were measured; ``modules`` adds their versions (torch: its threads)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
    }
    for name in modules:
        mod = importlib.import_module(name)
        info[name] = mod.__version__
        if name == "torch":
            info["torch_threads"] = mod.get_num_threads()
    info["kafka_python"] = kafka.__version__
    return info


def quiet() -> None:
    """Warnings only; no progress bars or transformers chatter."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)
    # peft asks transformers 5 for a deprecated property when it wraps a model.
    warnings.filterwarnings("ignore", category=FutureWarning)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"}


def write_json(path: Path | None, record: dict[str, Any]) -> None:
    """The run's full record beside the printed table, for `make bench` to collect."""
    if path is not None:
        path.write_text(json.dumps(record, indent=2) + "\n")
