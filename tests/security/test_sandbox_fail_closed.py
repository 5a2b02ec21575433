"""The sandbox fails closed: with a required isolation property missing, candidate code never
runs, the candidate is not accepted, the refusal is counted and the stage says it is down.

The missing layers are real, not simulated: ``namespaces = false`` is what a worker gets
where ``unshare`` is forbidden (a pod with every capability dropped, a unit with
``RestrictNamespaces=yes``): no network namespace, no private mounts, and as root on this
machine no uid it could drop to. The sandbox server runs as its own process over a real unix
socket, in a network namespace of its own, as deploy/ runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from daemon.operating.config import Settings
from daemon.operating.observe import MetricsConfig, observability
from daemon.operating.status import _probe_worker
from daemon.verifying.sandbox import SandboxConfig, run_tests, worker_identity
from daemon.verifying.sandbox_server import run_candidate
from daemon.verifying.store import Store
from daemon.verifying.worker import VerifyWorker
from streams.connection import KafkaSettings
from streams.schemas import CheckSpec
from streams.topics import TopicsConfig
from tests.conftest import candidates_message, committed_total, store_verdicts, wait_for
from tests.test_serve import _start
from tests.test_verify import _produce

ROOT = Path(__file__).resolve().parents[2]
SELFDISTILL = str(Path(sys.executable).parent / "selfdistill")
ADD = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(2, 3) == 5\n"


def witness_code(path: Path) -> str:
    """A correct solution that also leaves a file behind: proof that its code ran."""
    return ADD + f"open({str(path)!r}, 'w').write('ran')\n"


@pytest.fixture
def witness(tmp_path: Path) -> Path:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # anyone could write here, so only "did it run" decides
    return shared / f"ran-{uuid.uuid4().hex}"


def refused(name: str) -> float:
    return REGISTRY.get_sample_value("selfdistill_sandbox_refused_total", {"missing": name}) or 0.0


def test_missing_layers_refuse_the_run_before_any_candidate_code(
    tmp_path: Path, witness: Path
) -> None:
    bare = SandboxConfig(namespaces=False, timeout_s=3.0)
    result = run_tests(witness_code(witness), TESTS, bare)
    assert not result.passed and result.reason == "unavailable", result
    assert "no-network" in result.missing and "read-only-fs" in result.missing, result
    assert "no-network" in result.detail and "not run" in result.detail
    assert not witness.exists()  # the code never started
    # The same run with the requirement lifted does run it: the witness can tell.
    allowed = run_tests(witness_code(witness), TESTS, bare.model_copy(update={"require": []}))
    assert allowed.passed and witness.exists(), allowed


def test_a_uid_that_is_the_workers_is_not_foreign(witness: Path) -> None:
    """Measured, not assumed: the run compares its uid with whom it must be kept from. A
    worker that itself runs as the sandbox's uid gets no foreign uid, and no run."""
    me = worker_identity()
    nobody = {"uid": 65534, "gid": 65534, "netns": me["netns"]}
    result = run_tests(witness_code(witness), TESTS, SandboxConfig(), worker=nobody)
    assert result.reason == "unavailable" and "foreign-uid" in result.missing, result
    assert not witness.exists()
    assert run_tests(ADD, TESTS, SandboxConfig()).passed  # the normal worker is fine here


def test_the_verify_worker_rejects_counts_and_reports_the_stage_unavailable(
    kafka: KafkaSettings, topics: TopicsConfig, tiny_model_dir: Path, tmp_path: Path, witness: Path
) -> None:
    answer = f"```python\n{witness_code(witness)}```"
    msg = candidates_message(
        "c1", "Write add(a, b).", [answer], domain="code", check=CheckSpec(tests=TESTS)
    )
    _produce(kafka, topics.candidates, [msg])
    metrics = MetricsConfig(host="127.0.0.1", verify_port=_free_port())
    settings = Settings(
        data_dir=tmp_path,
        kafka=kafka.model_dump(),
        topics=topics.model_dump(),
        model={"path": str(tiny_model_dir)},
        metrics=metrics.model_dump(),
        verify={
            "votes": 1,
            "domains": {"code": ["execution"]},
            "group_id": "verify-sandbox-closed",
            "sandbox": {"namespaces": False, "timeout_s": 3.0},
        },
    )
    before = refused("no-network,read-only-fs") + refused(
        "no-network,foreign-uid,read-only-fs,no-worker-env"
    )
    worker = VerifyWorker(settings)
    with observability(settings.metrics, "verify", worker.readiness) as port:
        assert port is not None
        t = _start(worker)
        wait_for(
            lambda: committed_total(kafka, "verify-sandbox-closed", topics.candidates) == 1,
            120,
            what="the code candidate judged",
        )
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        probe = _probe_worker(settings, "verify", 10)
        worker.stop()
        t.join(30)
    assert not witness.exists()
    assert ready.status_code == 503
    execution = ready.json()["unavailable"]["execution"]
    assert execution["available"] is False and "no-network" in execution["missing"]
    assert probe["state"] == "not ready" and "execution stage unavailable" in probe["error"]
    after = refused("no-network,read-only-fs") + refused(
        "no-network,foreign-uid,read-only-fs,no-worker-env"
    )
    assert after > before  # counted by what was missing
    gauge = REGISTRY.get_sample_value("selfdistill_sandbox_available", {"stage": "execution"})
    assert gauge == 0
    store_verdicts(settings)
    with Store(settings.store.path_in(tmp_path), read_only=True) as store:
        assert list(store.accepted_samples(None)) == []
        funnel = store.stage_funnel()
    assert funnel["stages"]["execution"] == {"reached": 1, "passed": 0}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------- the sandbox server
def _start_server(socket_path: Path, env: dict[str, str], netns: bool) -> subprocess.Popen[bytes]:
    command = [SELFDISTILL, "sandbox", "serve", "--socket", str(socket_path)]
    if netns:  # as the systemd unit's PrivateNetwork=yes and the compose service do
        unshare = shutil.which("unshare")
        if unshare is None or os.geteuid() != 0:
            pytest.skip("needs root and unshare to give the server its own network")
        command = [unshare, "--net", *command]
    proc = subprocess.Popen(
        command,
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while not socket_path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.stdout.read().decode() if proc.stdout else ""
            proc.kill()
            pytest.fail(f"the sandbox server did not start: {out[-2000:]}")
        time.sleep(0.05)
    return proc


def test_runs_go_to_the_sandbox_server_and_fail_closed_when_it_is_gone(
    tmp_path: Path, witness: Path
) -> None:
    socket_path = tmp_path / "sock" / "sandbox.sock"
    env = {"SELFDISTILL_DATA_DIR": str(tmp_path / "server")}
    server = _start_server(socket_path, env, netns=True)
    try:
        remote = SandboxConfig(socket=str(socket_path), timeout_s=3.0)
        good = run_candidate(ADD, TESTS, remote)
        assert good.passed, good
        assert set(good.properties) >= {
            "no-network",
            "foreign-uid",
            "read-only-fs",
            "no-worker-env",
        }
        wrong = run_candidate("def add(a, b):\n    return 0\n", TESTS, remote)
        assert wrong.reason == "failed", wrong
        # the CLI's check goes the same way and says so
        check = subprocess.run(
            [SELFDISTILL, "sandbox", "check"],
            env={**os.environ, "SELFDISTILL_VERIFY__SANDBOX__SOCKET": str(socket_path)},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert check.returncode == 0 and "available" in check.stdout, check.stdout + check.stderr
    finally:
        server.kill()
        server.wait(30)
    gone = run_candidate(witness_code(witness), TESTS, SandboxConfig(socket=str(socket_path)))
    assert gone.reason == "unavailable" and "did not run it" in gone.detail, gone
    assert not witness.exists()


def test_a_server_without_isolation_refuses_too(tmp_path: Path, witness: Path) -> None:
    """A server started where it cannot isolate (no namespaces) is no way around the rule."""
    socket_path = tmp_path / "sock" / "sandbox.sock"
    env = {
        "SELFDISTILL_DATA_DIR": str(tmp_path / "server"),
        "SELFDISTILL_VERIFY__SANDBOX__NAMESPACES": "false",
    }
    server = _start_server(socket_path, env, netns=False)
    try:
        result = run_candidate(witness_code(witness), TESTS, SandboxConfig(socket=str(socket_path)))
    finally:
        server.kill()
        server.wait(30)
    assert result.reason == "unavailable" and "no-network" in result.missing, result
    assert not witness.exists()


def test_readiness_sees_a_sandbox_that_came_back_without_waiting_for_a_candidate() -> None:
    """``/readyz`` reads the monitor without waiting; an old state starts a probe behind it,
    so a stage marked unavailable recovers once the sandbox is whole again."""
    from daemon.verifying.sandbox_health import SandboxMonitor

    monitor = SandboxMonitor(SandboxConfig(timeout_s=3.0), recheck_s=0.0)
    monitor.observe(run_tests(ADD, TESTS, SandboxConfig(namespaces=False)))  # a refusal
    first = monitor.cached()
    assert first is not None and not first.available and "no-network" in first.missing
    wait_for(
        lambda: (h := monitor.cached()) is not None and h.available,
        60,
        what="the background probe to see the sandbox whole",
    )
