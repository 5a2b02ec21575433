"""No secret leaves: every credential-bearing value is masked wherever the daemon shows it.

Issue 19, point 4. One distinctive secret is put in every place that holds a credential at
once (the Kafka SASL password, ``kafka.client_options``, a password and a token inside
``engine.base_url``, the engine's API key, the admin and API tokens; from the TOML file and
from the environment), then everything the daemon shows is grepped for it: ``config show``,
configuration errors, the log of a real ``selfdistill serve`` start-up, and HTTP bodies
(a forced 500, a 400, an engine's failure quoting its URL).

Issue 28, point 7: no secret anywhere. An error is forced through every path that writes
text out (a CLI error printed through rich, a swap refused on ``adapter-status``, a prompt
dead-lettered, /readyz, a traceback), then every topic is read back, headers and all.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from kafka import KafkaAdminClient
from typer.testing import CliRunner

from daemon.engines.base import ChatRequest, ChatResult, EngineRejected, EngineUnavailable
from daemon.operating.cli import app as cli_app
from daemon.operating.config import ConfigError, load_settings
from daemon.operating.observe import create_app as observe_app
from daemon.serving.openai_server import create_app
from streams.adapter_status import read_statuses
from streams.broker import free_port
from streams.connection import KafkaSettings
from streams.deadletter import DeadLetter
from streams.producer import Producer
from streams.schemas import AdapterEvent, PromptMessage
from streams.topics import TopicsConfig
from tests.conftest import cli, read_topic, start_cli, wait_for

ROOT = Path(__file__).resolve().parents[2]
PYTHON_CLI = [sys.executable, "-c", "from daemon.operating.cli import app; app()"]
SECRET = "hunter2-SECRET-xyz"
ADMIN = f"{SECRET}-admin"
#: Every credential in the configuration below (each contains SECRET).
ENV = {
    "SELFDISTILL_ENGINE__API_KEY": f"{SECRET}-apikey",
    "SELFDISTILL_SERVE__HTTP__API_TOKEN": f"{SECRET}-apitoken",
}


#: The ``[kafka]`` block's connection: SASL_SSL to nowhere, its credentials in the clear
#: options too (``sasl_oauth_token`` is no kafka-python option: only where no client starts).
SASL = f"""
security_protocol = "SASL_SSL"
sasl_mechanism = "PLAIN"
client_options = {{ sasl_oauth_token = "{SECRET}-oauth", ssl_password = "{SECRET}-sslpw", \
request_timeout_ms = 4000 }}
"""


def write_config(
    tmp_path: Path,
    *,
    base_url: str,
    http_port: int = 8000,
    extra: str = "",
    kafka: str = SASL,
    metrics: str = "enabled = false",
) -> Path:
    """The configuration with every credential. ``kafka``: the connection lines of its
    ``[kafka]`` block (the SASL credentials are there whatever they say, used or not)."""
    path = tmp_path / "selfdistill.toml"
    path.write_text(
        f"""
log_level = "DEBUG"
data_dir = "{tmp_path / "var"}"

[kafka]
{kafka}
sasl_plain_username = "svc-user"
sasl_plain_password = "{SECRET}-sasl"

[engine]
kind = "openai"
base_url = "{base_url}"

[serve.http]
port = {http_port}
admin_token = "{ADMIN}"

[metrics]
{metrics}
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


# ------------------------------------------------------------------ every path out, end to end
class _QuotingServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that fails the way real ones do, quoting what it got.

    ``GET /v1/models`` drops the connection (the engine's error then names its ``base_url``,
    credentials and all); chat is refused with 400 naming the credentials the request carried
    (as servers echo a key they reject). Both reach the daemon as exception text.
    """

    def do_GET(self) -> None:
        self.close_connection = True  # no response at all: "Server disconnected"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        scheme, _, given = (self.headers.get("authorization") or "").partition(" ")
        if scheme.lower() == "basic":  # httpx sends base_url's user:password this way
            given = base64.b64decode(given).decode()
        body = json.dumps({"error": {"message": f"credentials {given!r} are not valid here"}})
        self.send_response(400)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def quoting_engine() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _QuotingServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def every_record(kafka: KafkaSettings, tag: str) -> dict[str, list[str]]:
    """Every record (key, value and headers, as text) of every topic whose name has ``tag``:
    the test's own topics and the dead-letter topics the workers created beside them."""
    admin = KafkaAdminClient(**kafka.client_kwargs("test-admin"))
    try:
        names = sorted(t for t in admin.list_topics() if tag in t)
    finally:
        admin.close()
    return {
        name: [
            repr((r.key, r.value, r.headers))
            + "".join((v or b"").decode("utf-8", "replace") for _, v in r.headers)
            for r in read_topic(kafka, name, idle_s=1.0)
        ]
        for name in names
    }


def test_no_path_out_carries_the_secret(
    tmp_path: Path, env: dict[str, str], kafka: KafkaSettings, topics: TopicsConfig
) -> None:
    """Issue 28, point 7: an error forced through every path that writes text out, then
    every topic read back, every output of the CLI and the worker's log: no secret anywhere.

    ``selfdistill serve --http`` on an engine whose ``base_url`` carries a password: a
    promotion it must refuse (the engine's error, quoting the URL, goes to the ``error`` of
    ``adapter-status``), a prompt the engine refuses (its 400, quoting the credentials, goes
    to the dead-letter headers), /readyz of both its endpoints, and the CLI failing on the
    same engine (an error printed through rich) and showing those topics (``tail``)."""
    with quoting_engine() as engine_port:
        base_url = f"http://svc:{SECRET}-url@127.0.0.1:{engine_port}/v1"
        http_port, metrics_port = free_port(), free_port()
        path = write_config(
            tmp_path,
            base_url=base_url,
            http_port=http_port,
            kafka=f'bootstrap_servers = "{kafka.bootstrap_servers}"\n'
            f'client_options = {{ ssl_password = "{SECRET}-sslpw", request_timeout_ms = 9000 }}',
            metrics=f"serve_port = {metrics_port}",
            extra=_serve_block(topics),
        )
        log = tmp_path / "serve.log"
        proc = start_cli("-c", str(path), "serve", "--http", env=env, stderr=log)
        try:
            wait_for(
                lambda: _alive(proc, log) and bool(read_statuses(kafka, topics.adapter_status)),
                60,
                every=0.5,
                what="the replica's first adapter-status record",
            )
            # A promotion the replica must refuse: the engine cannot list its adapters.
            with contextlib.closing(Producer(kafka, name="test-events")) as producer:
                event = AdapterEvent(
                    action="promote", version="tiny-sd-v0009", path="tiny-sd-v0009", sha256="0" * 64
                )
                producer.send(topics.adapter_events, event, key="adapters")
                prompt = PromptMessage(id="p-1", prompt="What is 2 + 2?")
                producer.send(topics.prompts, prompt, key=prompt.id)
                producer.flush()
            wait_for(
                lambda: (
                    _alive(proc, log)
                    # Refused, or retried (the engine unreachable is a passing reason):
                    # either way the engine's error is in the record's ``error``.
                    and any(
                        (r.refused or r.retrying) and r.status.error
                        for r in read_statuses(kafka, topics.adapter_status)
                    )
                ),
                60,
                every=0.5,
                what="the refused swap on adapter-status",
            )
            wait_for(
                lambda: (
                    _alive(proc, log)
                    and bool(read_topic(kafka, topics.dlq(topics.prompts), idle_s=0.5))
                ),
                60,
                every=0.5,
                what="the refused prompt's dead letter",
            )
            bodies = [
                httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).text
                for port in (http_port, metrics_port)
            ]
            no_secret("\n".join(bodies), "a /readyz body")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        no_secret(log.read_text(), "the worker's log")
        # The CLI on the same engine: an error it prints, and what it shows of the topics.
        failed = cli("-c", str(path), "eval", "verifier", "--max-items", "1", env=env)
        assert failed.returncode == 1, failed.stderr
        assert "error: the engine failed" in failed.stderr and "not valid here" in failed.stderr
        no_secret(failed.stdout + failed.stderr, "the CLI's error (eval verifier)")
        for topic in (topics.adapter_status, topics.dlq(topics.prompts)):
            shown = cli("-c", str(path), "tail", topic, env=env)
            assert shown.returncode == 0 and shown.stdout, shown.stderr
            no_secret(shown.stdout + shown.stderr, f"`selfdistill tail {topic}`")
    # Every record of every topic, keys, values and headers.
    tag = topics.prompts.removeprefix("prompts-")
    records = every_record(kafka, tag)
    assert records[topics.dlq(topics.prompts)] and records[topics.adapter_status]
    for name, texts in records.items():
        no_secret("\n".join(texts), f"topic {name}")
    # Masked, not dropped: the refusal and the dead letter still say what went wrong.
    [refused] = [r for r in read_statuses(kafka, topics.adapter_status) if r.status.error]
    assert "http://**********@127.0.0.1" in (refused.status.error or "")
    [dead] = read_topic(kafka, topics.dlq(topics.prompts))
    error = DeadLetter.from_record(dead.headers, dead.key, dead.value).detail
    assert "EngineRejected" in error and "not valid here" in error


def _serve_block(topics: TopicsConfig) -> str:
    """The per-test topics, and a replica that answers with the base model on one prompt."""
    names = "\n".join(f'{k} = "{v}"' for k, v in topics.model_dump().items() if isinstance(v, str))
    return f"""
[topics]
{names}
partitions = {topics.partitions}

[model]
path = "tiny"
name = "tiny"

[serve]
group_id = "serve-{topics.prompts}"
extra_candidates = 0
status_heartbeat_s = 2
"""


def _alive(proc: subprocess.Popen[str], log: Path) -> bool:
    assert proc.poll() is None, log.read_text()[-3000:]
    return True


# ------------------------------------------------------------------ /readyz of every worker
def test_a_readiness_check_that_raises_answers_without_the_secret(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """The workers' /readyz (``observe``) answers 503 with the failing check's text: masked,
    as an engine's error quoting its URL and key would otherwise hand them to any prober."""
    load_settings(write_config(tmp_path, base_url="http://127.0.0.1:1/v1"))  # registers
    url = f"http://svc:{SECRET}-url@vllm:8000/v1/models"

    def ready() -> bool:
        raise EngineUnavailable(f"GET {url}: refused with key {env['SELFDISTILL_ENGINE__API_KEY']}")

    with TestClient(observe_app("verify", ready)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    no_secret(r.text, "a /readyz body")
    assert "EngineUnavailable" in r.text and "vllm:8000" in r.text  # still says what failed


# ------------------------------------------------------------------ a traceback
def test_an_uncaught_exception_prints_its_traceback_masked(tmp_path: Path) -> None:
    """Python prints an uncaught exception's traceback itself, past every log formatter: the
    CLI's console (``mask_console``) is what masks it."""
    code = (
        "from daemon import redact\n"
        "redact.mask_console()\n"
        f"redact.register([{SECRET + '-apikey'!r}])\n"
        f"raise RuntimeError('POST http://svc:{SECRET}-url@vllm/v1 refused key {SECRET}-apikey')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "Traceback" in done.stderr, done.stderr
    no_secret(done.stderr, "a traceback")
    assert "RuntimeError: POST http://**********@vllm/v1 refused key **********" in done.stderr
