"""No secret leaves: every credential-bearing value is masked wherever the daemon shows it.

Issue 19, point 4. One distinctive secret is put in every place that holds a credential at
once (the Kafka SASL password, ``kafka.client_options``, a password and a token inside
``engine.base_url``, the engine's API key, the admin and API tokens; from the TOML file and
from the environment), then everything the daemon shows is grepped for it: ``config show``,
configuration errors, the log of a real ``selfdistill serve`` start-up, and HTTP bodies
(a forced 500, a 400, an engine's failure quoting its URL).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from daemon.engines.base import ChatRequest, ChatResult, EngineRejected
from daemon.operating.cli import app as cli_app
from daemon.operating.config import ConfigError, load_settings
from daemon.serving.openai_server import create_app
from streams.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
PYTHON_CLI = [sys.executable, "-c", "from daemon.operating.cli import app; app()"]
SECRET = "hunter2-SECRET-xyz"
ADMIN = f"{SECRET}-admin"
#: Every credential in the configuration below (each contains SECRET).
ENV = {
    "SELFDISTILL_ENGINE__API_KEY": f"{SECRET}-apikey",
    "SELFDISTILL_SERVE__HTTP__API_TOKEN": f"{SECRET}-apitoken",
}


def write_config(tmp_path: Path, *, base_url: str, http_port: int = 8000, extra: str = "") -> Path:
    path = tmp_path / "selfdistill.toml"
    path.write_text(
        f"""
log_level = "DEBUG"
data_dir = "{tmp_path / "var"}"

[kafka]
security_protocol = "SASL_SSL"
sasl_mechanism = "PLAIN"
sasl_plain_username = "svc-user"
sasl_plain_password = "{SECRET}-sasl"
client_options = {{ sasl_oauth_token = "{SECRET}-oauth", ssl_password = "{SECRET}-sslpw", \
request_timeout_ms = 4000 }}

[engine]
kind = "openai"
base_url = "{base_url}"

[serve.http]
port = {http_port}
admin_token = "{ADMIN}"

[metrics]
enabled = false
{extra}
"""
    )
    return path


def no_secret(text: str, where: str) -> None:
    assert SECRET not in text, f"the secret leaked into {where}:\n{text[-3000:]}"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for k in [k for k in os.environ if k.startswith("SELFDISTILL_")]:
        monkeypatch.delenv(k)
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    return ENV


# ------------------------------------------------------------------ config show
def test_config_show_masks_every_credential(tmp_path: Path, env: dict[str, str]) -> None:
    url = f"https://svc:{SECRET}-urlpw@vllm.internal:8000/v1?api_key={SECRET}-query&x=1"
    path = write_config(tmp_path, base_url=url)
    for args in (["config", "show"], ["config", "show", "--defaults"]):
        result = CliRunner().invoke(cli_app, ["--config", str(path), *args], env=env)
        assert result.exit_code == 0, result.output
        no_secret(result.output, "`config show`")
        # Masked, not dropped: the rest of each value is still there to read.
        assert '"request_timeout_ms" = 4000' in result.output  # a known-safe option
        assert "vllm.internal:8000/v1" in result.output and "x=1" in result.output
        assert 'sasl_plain_username = "svc-user"' in result.output


# ------------------------------------------------------------------ configuration errors
def test_configuration_errors_name_the_key_but_never_echo_a_secret(
    tmp_path: Path, env: dict[str, str]
) -> None:
    # Mistakes an operator makes next to (and in) credentials: a numeric token unquoted, a
    # client_options line that is not a table, a bad timeout beside a credentialed URL.
    path = tmp_path / "bad.toml"
    path.write_text(
        f"""
[kafka]
sasl_plain_password = "{SECRET}-sasl"
client_options = "sasl_oauth_token={SECRET}-oauth"

[engine]
base_url = "https://svc:{SECRET}-urlpw@vllm.internal/v1"
timeout_s = -1

[serve.http]
admin_token = 914276350018
max_n = 0
"""
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    for key in ("kafka.client_options", "engine.timeout_s", "serve.http.admin_token"):
        assert key in message
    assert "serve.http.max_n" in message and "(got 0)" in message  # plain values still echo
    no_secret(message, "a configuration error")
    assert "914276350018" not in message


# ------------------------------------------------------------------ HTTP bodies (in-process)
class FailingEngine:
    """An engine whose failures quote credentials, as an HTTP engine's errors quote its URL."""

    model_name = "base"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        raise self.error

    def load_adapter(self, name: str, path: str) -> None:  # pragma: no cover - unused
        raise NotImplementedError

    def unload_adapter(self, name: str) -> None:  # pragma: no cover - unused
        raise NotImplementedError

    def adapters(self) -> list[str]:
        return []

    def close(self) -> None:
        pass


CHAT = {"model": "base", "messages": [{"role": "user", "content": "hi"}]}


def test_a_500_says_only_an_error_id_that_the_masked_log_line_also_has(
    tmp_path: Path, env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    load_settings(write_config(tmp_path, base_url="http://127.0.0.1:1/v1"))  # as serve does
    boom = RuntimeError(f"backend refused token {SECRET}-sasl at http://u:{SECRET}-url@up/v1")
    app = create_app(FailingEngine(boom), registry_dir=tmp_path)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR), TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 500
    no_secret(r.text, "a 500 body")
    assert "RuntimeError" not in r.text  # no exception text at all
    message = r.json()["error"]["message"]
    assert "error id" in message
    err_id = message.split("error id ")[1].split(";")[0]
    assert err_id in caplog.text and "Traceback" in caplog.text  # the operator's copy
    no_secret(caplog.text, "the log of a 500")


def test_a_400_from_the_engine_hides_the_credentials_its_message_quotes(
    tmp_path: Path, env: dict[str, str]
) -> None:
    refused = EngineRejected(
        f"POST http://svc:{SECRET}-url@vllm:8000/v1/chat/completions refused (HTTP 400): "
        f"context too long; see http://vllm:8000/docs?token={SECRET}-query"
    )
    app = create_app(FailingEngine(refused), registry_dir=tmp_path)  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 400, r.text  # the request's fault, not the server's
    no_secret(r.text, "a 400 body")
    assert "context too long" in r.json()["error"]["message"]


# ------------------------------------------------------------------ a real start-up
def test_a_real_serve_start_up_logs_and_answers_without_the_secret(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """`selfdistill serve --http` over an OpenAI engine whose URL carries a password and
    that cannot be reached: its failures (which quote the URL) reach the log, a 500 and
    /readyz, none with the secret. Run from this checkout's source (``-c`` puts the cwd first
    on sys.path), not the console script, so the code under test is this tree's."""
    port = free_port()
    base_url = f"http://svc:{SECRET}-url@127.0.0.1:{free_port()}/v1"  # nothing listens
    path = write_config(tmp_path, base_url=base_url, http_port=port)
    log = tmp_path / "serve.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SELFDISTILL_")}
    proc = subprocess.Popen(
        [*PYTHON_CLI, "--config", str(path), "serve", "--http", "--no-worker"],
        cwd=ROOT,
        env={**full_env, **env},
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        text=True,
    )
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "serve did not start"
            try:
                if httpx.get(f"{root}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        auth = {"Authorization": f"Bearer {ADMIN}"}
        models = httpx.get(f"{root}/v1/models", headers=auth, timeout=30)
        assert models.status_code >= 500
        no_secret(models.text, "the body of a failed /v1/models")
        bodies = []
        for _ in range(20):  # the first probe starts in the background: wait for its verdict
            ready = httpx.get(f"{root}/readyz", timeout=5)
            bodies.append(ready.text)
            if ready.status_code == 503:
                break
            time.sleep(0.25)
        no_secret("\n".join(bodies), "/readyz")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    text = log.read_text()
    no_secret(text, "the start-up log")
    assert "OpenAI-compatible API" in text  # the log was written, at DEBUG
    err_id = models.json()["error"]["message"].split("error id ")[1].split(";")[0]
    assert err_id in text
    assert "http://**********@127.0.0.1" in text  # the engine's URL, logged masked
