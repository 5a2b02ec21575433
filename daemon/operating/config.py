"""The daemon's configuration: one TOML file, every knob documented and defaulted.

Sources, strongest first: ``SELFDISTILL_*`` environment variables (nested keys joined by
``__``, e.g. ``SELFDISTILL_KAFKA__BOOTSTRAP_SERVERS``), then the TOML file, then the defaults
below. The file is ``--config PATH``, else ``$SELFDISTILL_CONFIG``, else ``./selfdistill.toml``
when it exists. Each library owns its block (``streams`` the Kafka and topic settings), so
this module only composes them. Unknown keys are errors, so a typo fails at start-up instead
of silently running on a default.
"""

from __future__ import annotations

import contextlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from adapters.registry import AdaptersConfig
from daemon import redact
from daemon.engines import EngineConfig, ModelConfig
from daemon.learning.train import TrainConfig
from daemon.operating.demo import DemoConfig
from daemon.operating.observe import MetricsConfig
from daemon.serving.worker import ServeConfig
from daemon.verifying.store import StoreConfig
from daemon.verifying.worker import VerifyConfig
from streams.broker import BrokerConfig
from streams.connection import KafkaSettings
from streams.masking import set_text_filter
from streams.topics import TopicsConfig

ENV_PREFIX = "SELFDISTILL_"
CONFIG_ENV = "SELFDISTILL_CONFIG"
DEFAULT_FILE = "selfdistill.toml"
#: ``kafka.client_options`` keys shown in the clear (``config show``, errors): tuning knobs of
#: kafka-python that never carry a credential. Every other option is treated as a secret,
#: since that block is where extra auth settings (OAuth tokens, SSL passwords) go.
SAFE_CLIENT_OPTIONS = frozenset(
    {
        "acks",
        "api_version",
        "api_version_auto_timeout_ms",
        "batch_size",
        "buffer_memory",
        "check_crcs",
        "client_id",
        "compression_type",
        "connections_max_idle_ms",
        "enable_idempotence",
        "fetch_max_bytes",
        "fetch_max_wait_ms",
        "fetch_min_bytes",
        "linger_ms",
        "max_block_ms",
        "max_in_flight_requests_per_connection",
        "max_partition_fetch_bytes",
        "max_request_size",
        "metadata_max_age_ms",
        "receive_buffer_bytes",
        "reconnect_backoff_max_ms",
        "reconnect_backoff_ms",
        "request_timeout_ms",
        "retries",
        "retry_backoff_ms",
        "sasl_kerberos_service_name",
        "send_buffer_bytes",
    }
)


class Settings(BaseSettings):
    """Everything the daemon's workers and CLI read."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of every worker."
    )
    data_dir: Path = Field(
        Path("var"),
        description="Where the store, the adapter registry and logs live (relative to the cwd).",
    )
    kafka: KafkaSettings = Field(
        default_factory=KafkaSettings, description="Connection to the Kafka cluster."
    )
    topics: TopicsConfig = Field(
        default_factory=TopicsConfig, description="Topic names and layout."
    )
    broker: BrokerConfig = Field(
        default_factory=BrokerConfig,
        description="The embedded broker (`selfdistill broker`); unused with a real cluster.",
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="How it runs.")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="The serve worker.")
    adapters: AdaptersConfig = Field(
        default_factory=AdaptersConfig, description="Adapter versions on disk."
    )
    verify: VerifyConfig = Field(
        default_factory=VerifyConfig, description="The verify worker and its cascade."
    )
    store: StoreConfig = Field(
        default_factory=StoreConfig, description="The sample store (SQLite)."
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig,
        description="The train worker: schedule, LoRA hyperparameters, eval gate.",
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig,
        description="Each worker's /metrics, /healthz and /readyz endpoint.",
    )
    demo: DemoConfig = Field(default_factory=DemoConfig, description="`selfdistill demo` budgets.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)


class ConfigError(ValueError):
    """Invalid configuration; the message names each bad key and why."""


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The file to read: --config, else $SELFDISTILL_CONFIG, else ./selfdistill.toml if any."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    default = Path(DEFAULT_FILE)
    return default if default.is_file() else None


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read and validate the configuration, or raise ConfigError naming every bad key."""
    file = config_path(path)
    data: dict[str, Any] = {}
    if file is not None:
        if not file.is_file():
            raise ConfigError(f"config file {file} does not exist")
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    _deep_update(data, overrides)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, file, _raw_secrets(data))) from None
    except SettingsError as exc:  # an environment variable that is not valid JSON, ...
        raise ConfigError(redact.redact(str(exc))) from None
    # From now on every log line, error and HTTP body of this process masks them, and so
    # does every diagnostic text the Kafka library writes (streams cannot import redact).
    redact.register(secret_values(settings))
    set_text_filter(redact.redact)
    return settings


def _deep_update(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v


def is_secret_key(path: tuple[str, ...] | list[str]) -> bool:
    """Whether the value at this key path is a credential: by its name (``*_password``,
    ``*_token``, ``api_key``), or as a ``kafka.client_options`` entry not known to be safe."""
    parts = [str(p) for p in path]
    if parts[:2] == ["kafka", "client_options"]:
        return len(parts) < 3 or parts[2] not in SAFE_CLIENT_OPTIONS
    return any(redact.is_secret_name(p) for p in parts)


def secret_values(settings: BaseModel) -> list[str]:
    """Every credential the configuration holds: ``SecretStr`` values, secret-named keys,
    unsafe ``kafka.client_options`` values and passwords or tokens inside URLs."""
    return _secrets_in(settings, [])


def _secrets_in(value: Any, path: list[str]) -> list[str]:
    """The credentials in a settings model or in raw (not yet validated) data, by key path."""
    if isinstance(value, BaseModel):
        return [
            s
            for name in type(value).model_fields
            for s in _secrets_in(getattr(value, name), [*path, name])
        ]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _secrets_in(v, [*path, str(k)])]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _secrets_in(v, path)]
    if isinstance(value, SecretStr):
        return [value.get_secret_value()]
    if value is not None and not isinstance(value, bool) and is_secret_key(path):
        return [str(value)]
    if isinstance(value, str) and "://" in value:
        return redact.url_secrets(value)
    return []


def _raw_secrets(data: dict[str, Any]) -> list[str]:
    """The secrets in a configuration that failed to validate: from the file's values and
    from the ``SELFDISTILL_*`` environment, judged by key (no model to ask for types)."""
    found = _secrets_in(data, [])
    for name, value in os.environ.items():
        if name.startswith(ENV_PREFIX) and name != CONFIG_ENV:
            path = name[len(ENV_PREFIX) :].lower().split("__")
            found += _secrets_in(value, path)
            with contextlib.suppress(ValueError):  # a JSON object for a whole block: its leaves
                found += _secrets_in(json.loads(value), path)
    return found


def _explain(exc: ValidationError, file: Path | None, secrets: list[str]) -> str:
    """One line per bad key. A value is echoed only when its key holds no credential, and
    the whole text is masked against every secret of the raw configuration, so that a typo
    next to a password never prints the password."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        env = ENV_PREFIX + "__".join(str(p) for p in err["loc"]).upper()
        src = f" (from ${env})" if env in os.environ else ""
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        msg = msg.removeprefix("Value error, ")
        if (
            "input" in err
            and err["type"] != "extra_forbidden"
            and not isinstance(err["input"], dict)
        ):
            secret = is_secret_key([str(p) for p in err["loc"]])
            msg += " (value hidden: a credential)" if secret else f" (got {err['input']!r})"
        lines.append(f"  {key}: {msg}{src}")
    where = f" in {file}" if file else ""
    return redact.redact(f"invalid configuration{where}:\n" + "\n".join(lines), secrets)


# ------------------------------------------------------------------ documentation
def render_toml(
    settings: Settings | None = None, *, comments: bool = True, reveal: bool = False
) -> str:
    """The configuration as TOML; with defaults and comments it is the documented reference.

    ``selfdistill config init`` writes this, and the repository's ``selfdistill.toml`` is
    exactly this output (a test keeps them in sync), so the docs cannot drift from the code.
    Credentials are masked (``SecretStr`` always; secret-named keys, unsafe
    ``kafka.client_options`` values and URL credentials unless ``reveal``): what
    ``config show`` prints can be pasted into an issue.
    """
    settings = settings or Settings()
    out: list[str] = []
    if comments:
        out += [
            "# selfdistill configuration. Every key is optional: shown here with its default.",
            "# Any key can be overridden by an environment variable, e.g.",
            "#   SELFDISTILL_KAFKA__BOOTSTRAP_SERVERS=broker1:9092,broker2:9092",
            "",
        ]
    _render_model(settings, [], out, comments, reveal)
    return "\n".join(out).rstrip() + "\n"


def _render_model(
    model: BaseModel, path: list[str], out: list[str], comments: bool, reveal: bool
) -> None:
    fields: dict[str, FieldInfo] = type(model).model_fields
    scalars = {k: f for k, f in fields.items() if not isinstance(getattr(model, k), BaseModel)}
    sections = {k: f for k, f in fields.items() if isinstance(getattr(model, k), BaseModel)}
    for name, info in scalars.items():
        value = getattr(model, name)
        if comments and info.description:
            out.append(f"# {info.description}")
        if comments:
            env = ENV_PREFIX + "__".join([*path, name]).upper()
            out.append(f"# env: {env}")
        if value is None:
            out.append(f"# {name} =")
        else:
            shown = value if reveal else _masked(value, [*path, name])
            out.append(f"{name} = {_toml_value(shown)}")
        if comments:
            out.append("")
    for name, info in sections.items():
        header = ".".join([*path, name])
        if comments and info.description:
            out.append(f"# {info.description}")
        out.append(f"[{header}]")
        if comments:
            out.append("")
        _render_model(getattr(model, name), [*path, name], out, comments, reveal)
        if not comments:
            out.append("")


def _masked(value: Any, path: list[str]) -> Any:
    """``value`` as ``config show`` may print it (see ``render_toml``)."""
    if isinstance(value, dict):
        return {k: _masked(v, [*path, str(k)]) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v, path) for v in value]
    if isinstance(value, SecretStr | bool) or value is None:
        return value
    if is_secret_key(path):
        return redact.MASK
    if isinstance(value, str):
        return redact.mask_url(value)
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return '"**********"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(f"cannot render {type(value).__name__} as TOML")
