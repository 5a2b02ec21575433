"""What learning reads of the daemon's settings, and what follows from it.

``Settings`` (``daemon/operating/config.py``) composes every stage's config; a stage names
only the part it reads, as a protocol ``Settings`` satisfies, so no stage imports the
operator's layer back. Two things follow from the engine's part, for the train cycle, the
verifier gate and the CLI alike: where the registry is, and the model name that version
names are built from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from adapters.registry import Registry
from daemon.engines import EngineSettings

if TYPE_CHECKING:
    from daemon.serving.worker import ServeConfig
    from daemon.verifying.worker import VerifyConfig


class VerifierSettings(EngineSettings, Protocol):
    """What measuring the verifier reads: how serve samples and how verify judges."""

    @property
    def serve(self) -> ServeConfig: ...
    @property
    def verify(self) -> VerifyConfig: ...


def open_registry(settings: EngineSettings, *, read_only: bool = False) -> Registry:
    return Registry(
        settings.adapters.path(settings.data_dir),
        db_path=settings.adapters.db_path,
        read_only=read_only,
    )


def model_label(settings: EngineSettings) -> str:
    """The name version names are built from (``smollm2-135m-instruct-sd-v0001``)."""
    if settings.model.name:
        return settings.model.name
    if settings.model.path == "embedded":
        from daemon.engines.model_files import EMBEDDED_NAME

        return EMBEDDED_NAME
    return settings.model.path
