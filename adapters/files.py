"""Adapter files on disk: what a loadable adapter looks like, its digest, and where it may live.

Three rules keep a serving engine safe from what lands in the registry:
* weights load only from safetensors: a directory holding pickle-based weights
  (``.bin``, ``.pt``, ``.pkl``, ...) is refused outright, so PEFT can never fall back to
  ``torch.load``;
* an adapter is identified by a sha256 over all its files; a copy whose digest differs from
  the one recorded at training time is refused (tampered or half-copied);
* a path named in an event or an HTTP call must resolve inside the registry directory, so
  ``../../etc`` or a symlink out cannot be loaded.

An engine knows an adapter by its *served name* (:func:`served_name`), which carries the
first hex digits of that digest: a model server shared by two registries (staging and
production, or a registry re-created from scratch) sees two different names for two
``tiny-sd-v0001`` with different weights, so "already loaded" can only mean "these weights".
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class AdapterFileError(ValueError):
    """The adapter's files are missing, unsafe, outside the registry, or not what was recorded."""


def check_adapter_files(path: Path) -> None:
    """Refuse anything that is not a PEFT adapter in safetensors format."""
    if not path.is_dir():
        raise AdapterFileError(f"{path} is not a directory")
    pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise AdapterFileError(f"pickle-format files are not loaded: {', '.join(pickles)}")
    if not (path / WEIGHTS_FILE).is_file():
        raise AdapterFileError(f"{WEIGHTS_FILE} is missing")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise AdapterFileError(f"{CONFIG_FILE} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterFileError(f"{CONFIG_FILE} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise AdapterFileError(f"{CONFIG_FILE} does not describe a LoRA adapter")


def adapter_digest(path: Path) -> str:
    """sha256 over every file's relative name and bytes, in name order."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


#: Hex digits of the sha256 that a served name carries: 32 bits tell apart any two sets of
#: weights that honestly share a version name (a chance collision is 1 in 4 billion).
SERVED_DIGITS = 8


def served_name(version: str, sha256: str) -> str:
    """The name an engine loads and routes ``version`` under: ``<version>-<8 hex digits>``.

    The one place that derives it (serve's hot-swap, restore after a server restart, the
    evaluations of the trainer and the verifier gate). The version stays the registry's
    name for people (adapter-status, responses, ``adapters list``); the served name adds
    the weights' identity, because a name is all a shared server compares.
    """
    digits = sha256[:SERVED_DIGITS].lower()
    if len(digits) != SERVED_DIGITS or any(c not in "0123456789abcdef" for c in digits):
        raise AdapterFileError(f"{version}: {sha256!r} is not a sha256 digest")
    return f"{version}-{digits}"


def resolve_in_registry(registry: Path, path: str | Path) -> Path:
    """``path`` (absolute, or relative to the registry) if it resolves inside ``registry``."""
    root = registry.resolve()
    candidate = Path(path)
    full = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if full != root and root not in full.parents:
        raise AdapterFileError(f"{path} is outside the adapter registry {root}")
    return full


def verify_adapter(registry: Path, path: str | Path, sha256: str | None) -> Path:
    """Everything a serving process checks before it loads an adapter; returns its real path."""
    full = resolve_in_registry(registry, path)
    check_adapter_files(full)
    if sha256 is not None:
        actual = adapter_digest(full)
        if actual != sha256:
            raise AdapterFileError(
                f"sha256 mismatch for {full.name}: recorded {sha256[:12]}…, files {actual[:12]}…"
            )
    return full
