"""Configuration: TOML + environment + defaults, and errors that name the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from daemon.operating.config import ConfigError, Settings, load_settings, render_toml
from tests.conftest import ROOT, cli


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "selfdistill.toml"
    p.write_text(text)
    return p


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.topics.prompts == "prompts" and s.topics.dlq("prompts") == "prompts.dlq"
    assert s.broker.host == "127.0.0.1"
    # Group joins in ~3 s on the embedded broker only with these (DESIGN.md).
    assert (s.kafka.session_timeout_ms, s.kafka.heartbeat_interval_ms) == (6000, 1000)


def test_file_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(
        tmp_path,
        '[kafka]\nbootstrap_servers = "a:1,b:2"\nbatch_size = 3\n[topics]\nprompts = "in"\n',
    )
    s = load_settings(path)
    assert (
        s.kafka.servers == ["a:1", "b:2"] and s.kafka.batch_size == 3 and s.topics.prompts == "in"
    )
    monkeypatch.setenv("SELFDISTILL_KAFKA__BATCH_SIZE", "5")
    monkeypatch.setenv("SELFDISTILL_CONFIG", str(path))
    s = load_settings()  # file found through $SELFDISTILL_CONFIG, env var wins over it
    assert s.kafka.batch_size == 5 and s.kafka.servers == ["a:1", "b:2"]


def test_unknown_and_invalid_keys_are_named(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[kafka]\nbootstrap_server = "typo:1"\nbatch_size = 0\n'
        'heartbeat_interval_ms = 5000\n[topics]\nprompts = "has space"\n',
    )
    with pytest.raises(ConfigError) as e:
        load_settings(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "kafka.bootstrap_server: unknown key" in msg
    assert "kafka.batch_size: Input should be greater than or equal to 1" in msg
    assert "kafka.heartbeat_interval_ms: 5000 must be at most a third of session_timeout_ms" in msg
    assert "topics.prompts:" in msg and "'has space'" in msg


def test_cross_field_rules_and_env_source_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, '[kafka]\nsecurity_protocol = "SASL_SSL"\n')
    with pytest.raises(
        ConfigError, match=r"kafka\.sasl_mechanism: required when security_protocol"
    ):
        load_settings(path)
    monkeypatch.setenv("SELFDISTILL_KAFKA__BOOTSTRAP_SERVERS", "no-port-here")
    with pytest.raises(
        ConfigError,
        match=r"kafka.bootstrap_servers: .*not host:port.*"
        r"\$SELFDISTILL_KAFKA__BOOTSTRAP_SERVERS",
    ):
        load_settings(None)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(_write(tmp_path, "[kafka\n"))


def test_sasl_ssl_settings_reach_kafka_python() -> None:
    s = Settings(
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "u",
            "sasl_plain_password": "p",
            "ssl_cafile": "/etc/ca.pem",
            "client_options": {"request_timeout_ms": 4000},
        }
    )
    kw = s.kafka.client_kwargs("x")
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_password"] == "p" and kw["ssl_cafile"] == "/etc/ca.pem"
    assert kw["request_timeout_ms"] == 4000
    assert "p" not in render_toml(s).split("sasl_plain_password")[1].splitlines()[0]  # masked


def test_rendered_reference_round_trips_and_repo_file_is_current() -> None:
    text = render_toml()
    data = tomllib.loads(text)
    assert Settings(**data) == Settings()
    # Every key is documented: each assignment line follows a description and an env line.
    for section in ("[kafka]", "[topics]", "[broker]"):
        assert section in text
    assert "# env: SELFDISTILL_KAFKA__BOOTSTRAP_SERVERS" in text
    assert (ROOT / "selfdistill.toml").read_text() == text, (
        "selfdistill.toml is stale: run `selfdistill config init --force`"
    )


def test_cli_fails_at_startup_naming_the_key() -> None:
    res = cli("topics", "list", env={"SELFDISTILL_KAFKA__BATCH_SIZE": "zero"})
    assert res.returncode == 2
    assert "kafka.batch_size" in res.stderr and "SELFDISTILL_KAFKA__BATCH_SIZE" in res.stderr
    ok = cli("config", "check")
    assert ok.returncode == 0, ok.stderr
