"""The execution stage's sandbox, against real hostile candidates in real processes.

Every hostile case must end in a failed result (never an exception in this process), leave
no process and no directory behind, and leave the worker able to run the next candidate.
Which isolation layers a run has depends on the machine (root or not, whether ``unshare``
works); a test that exercises one layer alone skips where that layer is missing, while the
hostile cases themselves must fail on any machine.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.verifying.sandbox import SandboxConfig, SandboxResult, extract_code, run_tests

ROOT = Path(__file__).resolve().parent.parent
ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


@pytest.fixture
def config(tmp_path: Path) -> SandboxConfig:
    """Small limits so each hostile case ends in well under a few seconds."""
    runs = tmp_path / "runs"
    runs.mkdir()
    return SandboxConfig(timeout_s=3.0, memory_mb=256, tmp_dir=str(runs))


def leftovers(config: SandboxConfig) -> list[str]:
    """Live processes that belong to a run made under ``config.tmp_dir``.

    Every process of a run (launcher, harness and anything they fork) carries the run's
    directory on its command line, and nothing else on the machine does.
    """
    assert config.tmp_dir is not None
    needle = config.tmp_dir.encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found.append(f"{name}: {cmdline[:120]!r}")
    return found


def processes_with(token: str) -> list[str]:
    """Live processes whose command line contains ``token`` (a unique sleep duration)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            except OSError:
                continue
            if token.encode() in cmdline:
                found.append(name)
    return found


def run(code: str, tests: str, config: SandboxConfig) -> SandboxResult:
    """Run, then check what must hold after *any* run: nothing left running, no directory."""
    result = run_tests(code, tests, config)
    assert isinstance(result, SandboxResult)
    assert leftovers(config) == []
    assert config.tmp_dir is not None and os.listdir(config.tmp_dir) == []
    assert len(result.detail) <= 300 and "\n" not in result.detail
    return result


def layers(config: SandboxConfig) -> tuple[str, ...]:
    return run("", "", config).layers


def fails(result: SandboxResult, *reasons: str) -> None:
    assert not result.passed, result
    assert result.reason in reasons, result


# --- ordinary candidates ---------------------------------------------------------------------


def test_a_correct_solution_passes(config: SandboxConfig) -> None:
    result = run(ADD, ADD_TESTS, config)
    assert result.passed and result.reason == "ok" and result.returncode == 0, result
    assert "rlimits" in result.layers and "audit-hook" in result.layers


def test_a_failing_assert_fails_and_says_where(config: SandboxConfig) -> None:
    result = run("def add(a, b):\n    return a - b\n", ADD_TESTS, config)
    fails(result, "failed")
    assert "tests.py" in result.detail and "assert add(2, 3) == 5" in result.detail
    assert "AssertionError" in result.detail


def test_a_syntax_error_fails(config: SandboxConfig) -> None:
    result = run("def add(a, b) return a + b", ADD_TESTS, config)
    fails(result, "failed")
    assert "SyntaxError" in result.detail


def test_an_exception_in_the_solution_fails(config: SandboxConfig) -> None:
    fails(run("raise RuntimeError('boom')", ADD_TESTS, config), "failed")


def test_unittest_cases_in_the_tests_are_run(config: SandboxConfig) -> None:
    cases = (
        "import unittest\n"
        "class TestAdd(unittest.TestCase):\n"
        "    def test_add(self):\n"
        "        self.assertEqual(add(2, 3), {})\n"
    )
    assert run(ADD, cases.format(5), config).passed
    wrong = run(ADD, cases.format(6), config)
    fails(wrong, "failed")
    assert "5 != 6" in wrong.detail
    # unittest.main() in the tests, as a script would have it, runs the same cases.
    assert not run(ADD, cases.format(6) + "unittest.main()\n", config).passed
    assert run(ADD, cases.format(5) + "unittest.main()\n", config).passed


def test_the_solution_is_a_module_named_solution(config: SandboxConfig) -> None:
    # A __main__ block (reading stdin, say) does not run; tests may import from it.
    code = ADD + "if __name__ == '__main__':\n    print(add(int(input()), 1))\n"
    assert run(code, "from solution import add as plus\nassert plus(1, 1) == 2\n", config).passed


def test_exiting_early_with_status_0_skips_no_test(config: SandboxConfig) -> None:
    for early in ("import os\nos._exit(0)", "import sys\nsys.exit(0)", "raise SystemExit"):
        fails(run(ADD + early, "assert add(1, 1) == 3\n", config), "failed")


def test_odd_source_text_is_a_failed_run_not_an_error(config: SandboxConfig) -> None:
    for code in ("x = 1\x00", "x = '\udc80'", "\ufeffx = 1"):
        result = run(code, "assert True", config)
        assert result.reason in ("ok", "failed"), result


def test_a_missing_interpreter_is_an_error_result(
    config: SandboxConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    result = run(ADD, ADD_TESTS, config)
    assert not result.passed and result.reason == "error", result


# --- hostile candidates ----------------------------------------------------------------------


def test_an_infinite_loop_times_out_and_is_killed(config: SandboxConfig) -> None:
    quick = config.model_copy(update={"timeout_s": 1.0})
    result = run("while True:\n    pass\n", "", quick)
    fails(result, "timeout")
    assert result.returncode is None or result.returncode < 0


def test_a_sleeping_candidate_times_out(config: SandboxConfig) -> None:
    quick = config.model_copy(update={"timeout_s": 1.0})
    fails(run("import time\ntime.sleep(3600)", "", quick), "timeout")


@pytest.mark.parametrize(
    "code",
    [
        "import os\nwhile True:\n    os.fork()\n",
        "import subprocess, sys\n"
        "while True:\n    subprocess.Popen([sys.executable, '-c', 'while True: pass'])\n",
        "import os\nos.system(':(){ :|:& };:')\n",
        "import os\nos.posix_spawn('/bin/sh', ['sh', '-c', 'sleep 100'], {})\n",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()\n",
        "import _posixsubprocess\n_posixsubprocess.fork_exec(*([None] * 23))\n",
    ],
    ids=["os.fork", "Popen", "os.system", "posix_spawn", "multiprocessing", "fork_exec"],
)
def test_a_fork_bomb_is_refused_and_nothing_survives(code: str, config: SandboxConfig) -> None:
    result = run(code, "", config)
    fails(result, "forbidden", "crashed", "failed")


def test_without_the_audit_hook_a_fork_bomb_is_bounded_and_killed(
    config: SandboxConfig,
) -> None:
    bare = config.model_copy(update={"audit_hook": False})
    if "root" in layers(bare):
        pytest.skip("the run stays root here, so RLIMIT_NPROC does not bind")
    result = run("import os\nwhile True:\n    os.fork()\n", "", bare)
    fails(result, "failed", "crashed", "timeout", "memory")


def test_a_process_that_leaves_the_group_is_killed(config: SandboxConfig) -> None:
    """``setsid`` escapes a process-group kill; the PID namespace or the sweep catch it."""
    bare = config.model_copy(update={"audit_hook": False})
    token = f"98{uuid.uuid4().int % 10**6}.5"
    code = (
        "import subprocess\n"
        f"subprocess.Popen(['sleep', '{token}'], start_new_session=True)\n"
        f"subprocess.Popen(['sh', '-c', 'sleep {token} & sleep {token}'])\n"
    )
    run(code, "", bare)  # passes: nothing forbade it; what matters is what is left
    assert processes_with(token) == []
    no_namespaces = bare.model_copy(update={"namespaces": False, "require": []})
    run(code, "", no_namespaces)
    assert processes_with(token) == []


@pytest.mark.parametrize(
    "code",
    [
        "xs = []\nwhile True:\n    xs.append('x' * 10_000_000)\n",
        "buffer = bytearray(8 * 1024**3)\n",
        "xs = [0] * (1 << 40)\n",
    ],
    ids=["growing-list", "8GiB-bytearray", "huge-list"],
)
def test_a_memory_hog_fails_with_memory(code: str, config: SandboxConfig) -> None:
    result = run(code, "", config)
    fails(result, "memory")
    assert "256 MiB" in result.detail


@pytest.mark.parametrize(
    "code",
    ["import faulthandler\nfaulthandler._sigsegv()\n", "import os\nos.abort()\n"],
    ids=["segfault", "abort"],
)
def test_a_crash_fails_with_crashed(code: str, config: SandboxConfig) -> None:
    result = run(code, ADD_TESTS, config)
    fails(result, "crashed")
    assert "SIG" in result.detail


class Server:
    """A real TCP server on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> int:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.sock.close()
        return self.accepted


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    # The server works: a connection from this process is counted.
    socket.create_connection(("127.0.0.1", srv.port), timeout=5).close()
    deadline = time.monotonic() + 10
    while srv.accepted == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.accepted == 1
    yield srv
    srv.close()


NETWORK_CALLS = [
    "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n",
    "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=2)\n",
    "import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\n",
    "import socket\n"
    "try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
    "except BaseException:\n    pass\n",  # caught: the attempt alone fails the run
]


@pytest.mark.parametrize("code", NETWORK_CALLS, ids=["socket", "urllib", "connect", "caught"])
def test_a_network_call_fails_and_reaches_nothing(
    code: str, config: SandboxConfig, server: Server
) -> None:
    seen = server.accepted
    result = run(code.format(port=server.port), "", config)
    fails(result, "forbidden", "failed")
    assert server.close() == seen  # no connection from the sandbox


def test_without_the_audit_hook_the_network_namespace_stops_a_connection(
    config: SandboxConfig, server: Server
) -> None:
    bare = config.model_copy(update={"audit_hook": False})
    if "netns" not in layers(bare):
        pytest.skip("no network namespace on this machine")
    seen = server.accepted
    result = run(NETWORK_CALLS[0].format(port=server.port), "", bare)
    fails(result, "failed")
    assert "unreachable" in result.detail.lower()
    assert server.close() == seen


@pytest.mark.parametrize(
    "code",
    [
        "while True:\n    print('x' * 1000)\n",
        "import sys\nwhile True:\n    sys.stderr.write('y' * 1000)\n",
        "print('z' * 10_000_000)\n",
    ],
    ids=["stdout", "stderr", "one-write"],
)
def test_an_output_flood_fails_with_output(code: str, config: SandboxConfig) -> None:
    fails(run(code, "", config), "output")


def test_writing_outside_its_directory_does_not_reach_the_host(config: SandboxConfig) -> None:
    found = layers(config)
    if "read-only-fs" not in found and not any(x.startswith("uid:") for x in found):
        pytest.skip("the run is root without a mount namespace here")
    name = f"sandbox_escape_{uuid.uuid4().hex}"
    targets = [ROOT / name, Path("/root") / name, Path("/tmp") / name, Path("/var/tmp") / name]
    try:
        for target in targets:
            result = run(f"open({str(target)!r}, 'w').write('escaped')\n", "", config)
            assert not target.exists(), (target, result)
        # Its own working directory (and the temp dir it is told about) is writable.
        writes = "import tempfile\nopen('out.txt', 'w').write('ok')\ntempfile.mkstemp()\n"
        assert run(writes, "assert open('out.txt').read() == 'ok'\n", config).passed
    finally:
        for target in targets:
            if target.exists():
                target.unlink()


def test_without_namespaces_the_hostile_cases_still_fail(config: SandboxConfig) -> None:
    # require=[]: the fallback's own layers, which the default would refuse to rely on.
    plain = config.model_copy(update={"namespaces": False, "timeout_s": 1.0, "require": []})
    assert not any(x in layers(plain) for x in ("netns", "pidns", "mountns"))
    fails(run("import os\nwhile True:\n    os.fork()\n", "", plain), "forbidden")
    fails(run("import socket\nsocket.create_connection(('127.0.0.1', 9))", "", plain), "forbidden")
    fails(run("while True:\n    pass\n", "", plain), "timeout")
    fails(run("buffer = bytearray(8 * 1024**3)\n", "", plain), "memory")
    assert run(ADD, ADD_TESTS, plain).passed


def test_the_worker_survives_every_hostile_case_in_a_row(
    config: SandboxConfig, server: Server
) -> None:
    """All hostile cases one after another in this process; then a good one still passes."""
    quick = config.model_copy(update={"timeout_s": 1.0})
    hostile = [
        "while True:\n    pass\n",
        "import os\nwhile True:\n    os.fork()\n",
        "import subprocess\nsubprocess.Popen(['sleep', '100'])\n",
        "import os\nos.system('sleep 100')\n",
        "xs = []\nwhile True:\n    xs.append('x' * 10_000_000)\n",
        "buffer = bytearray(8 * 1024**3)\n",
        f"import socket\nsocket.create_connection(('127.0.0.1', {server.port}), timeout=2)\n",
        f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{server.port}/')\n",
        "while True:\n    print('x' * 1000)\n",
        "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n",
        "import sys\nsys.setrecursionlimit(10**6)\ndef f(n):\n    return f(n + 1)\nf(0)\n",
        "import ctypes\nctypes.string_at(0)\n",
    ]
    seen = server.accepted
    for code in hostile:
        result = run(code, ADD_TESTS, quick)
        assert not result.passed, (code, result)
    assert server.accepted == seen
    assert run(ADD, ADD_TESTS, quick).passed


# --- extracting the code ---------------------------------------------------------------------


def test_extract_code_takes_the_last_python_block() -> None:
    answer = (
        "First try:\n```python\ndef f(): return 1\n```\n"
        "Better:\n```python\ndef f():\n    return 2\n```\n"
        "Output:\n```\n2\n```\n"
    )
    assert extract_code(answer) == "def f():\n    return 2"


def test_extract_code_untagged_unclosed_and_bare() -> None:
    assert extract_code("Here:\n```\nx = 1\n```") == "x = 1"
    assert extract_code("~~~py\nx = 2\n~~~\n") == "x = 2"
    assert extract_code("```python\nx = 3\n# cut off at max tokens") == (
        "x = 3\n# cut off at max tokens"
    )
    assert extract_code("  x = 4\n") == "x = 4"
    assert extract_code("````python\nprint('```')\n````") == "print('```')"
    assert extract_code("") == ""
