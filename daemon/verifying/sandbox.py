"""Running untrusted candidate code: the execution stage's sandbox.

The execution stage runs a code candidate followed by the prompt's tests (plain Python with
asserts, or ``unittest.TestCase`` classes) and counts the vote as passed only when the tests
finish without an error within the limits. The candidate is text a model wrote: it may loop
forever, fork, allocate without bound, print without end, reach for the network or write
where it should not, by accident or because something taught it to. Whatever it does, the
worker must get a failed vote back and go on, so :func:`run_tests` never raises for anything
the candidate does, and a run leaves no process and no directory behind.

One run is three processes deep. The worker starts a *launcher* (``python -I -S``, a fresh
single-threaded process, so no ``preexec_fn`` runs in a threaded daemon) that unshares the
namespaces and forks an *init* (the first process of the new PID namespace, still the
worker's user) that mounts and forks the *harness* process, which drops privileges, sets the
resource limits and execs a fresh interpreter that installs an audit hook and runs the
solution and then the tests in one namespace. The init reports the harness's status and
exits, which tears the namespace down. The layers, what each one stops, and what it does
not:

- **A separate process, its own session, killed as a group** (always). The wall-clock limit
  is enforced from outside: on timeout, and after *every* run, the worker SIGKILLs the whole
  process group. A process that leaves the group (``setsid``) escapes this layer alone; the
  PID namespace below (or, without one, a sweep of ``/proc`` for processes whose working
  directory is the run's) catches it.
- **Resource limits** (always): ``RLIMIT_AS`` (memory; a hog gets ``MemoryError``),
  ``RLIMIT_CPU`` (a backstop to the wall clock), ``RLIMIT_FSIZE`` (stdout and stderr are files,
  so a flood ends at the cap instead of filling memory or disk; files the candidate writes
  are capped the same way), ``RLIMIT_NOFILE``, ``RLIMIT_CORE`` 0 and ``RLIMIT_NPROC``. The
  kernel does not apply ``RLIMIT_NPROC`` to root, which is why a root worker drops privileges.
  There are no cgroups: memory a candidate puts in its private ``/tmp`` (a tmpfs) is bounded
  by the tmpfs size, not by ``RLIMIT_AS``.
- **Dropped privileges** (when the worker is root): the harness runs as ``run_as_uid``
  (65534, *nobody*) with no supplementary groups and ``no_new_privs``, so ``RLIMIT_NPROC``
  binds and file permissions apply. Where the interpreter lives under a directory that
  user cannot enter (``/root/.pyenv``), the mount namespace hides that directory behind an
  empty tmpfs that holds only the interpreter's prefix; without a mount namespace the run
  stays root (the layers reported say so). All runs share the one uid, so a fork bomb in
  one run can make ``fork`` fail in a concurrent run for its duration (never exec: the
  limit is lowered after the uid changes).
- **Namespaces** (when ``unshare`` works: as root, or as a user through a user namespace):
  a new *network* namespace has only a loopback interface that is down, so no connection
  leaves, not even to ``127.0.0.1``; in a new *PID* namespace, when the init exits (after
  the harness) or is killed, the kernel kills everything the run started, ``setsid`` or not,
  and parent-death signals tie the init to the launcher and the harness to the init; a new
  *mount* namespace gives the run a private tmpfs ``/tmp``
  (its working directory, ``disk_mb`` large, gone with the run), a fresh ``/proc`` that shows
  only its own processes, and makes every other mount read-only, so a write outside ``/tmp``
  fails even where permissions would allow it. Abstract unix sockets are per network
  namespace; filesystem unix sockets in the host's ``/tmp`` are hidden by the private one.
- **An audit hook** in the harness (``sys.addaudithook``, unless ``audit_hook`` is off):
  refuses process creation (``os.fork``/``forkpty``/``posix_spawn``/``exec``/``system``,
  ``subprocess.Popen``, and ``_posixsubprocess.fork_exec``, which raises no event, is
  replaced), signals to other processes, sockets that connect, bind or resolve names,
  ``urllib`` requests and ``ctypes`` (and so the import of ``ctypes``). Each refusal writes a
  marker to stderr, so the run fails as ``forbidden`` even if the candidate catches the
  exception. Audit hooks are not a security boundary (the Python docs say so): code in the
  same interpreter can reload an extension module or poke memory in other ways. This layer
  makes the ordinary case fail fast and legibly; the layers above bound the rest.

None of this is a boundary against a determined attacker with a kernel exploit, and it does
not stop a candidate from *reading* world-readable files (it cannot send them anywhere but
its own, clipped, stderr). What is protected: the worker (it survives every candidate), the
machine's processes, memory and disk (bounded), the network (unreachable), and the files of
other users and of the project (read-only, or hidden). Which layers a run actually had is in
:attr:`SandboxResult.layers`.

**Fail closed.** The isolation a run needs is not assumed from the steps above having
worked: each harness process *measures* it in its final state, before any candidate code
(``verify.sandbox.require``, :data:`REQUIREMENTS`: no network, a uid that owns nothing of
the worker's, a read-only filesystem but scratch, no readable environment of another
process), and with any property missing the run is refused ("unavailable") and the
candidate's code never starts. Where the worker cannot isolate its own children (non-root,
namespaces forbidden), ``verify.sandbox.socket`` sends runs to ``selfdistill sandbox
serve`` in a container or unit of its own (:mod:`daemon.verifying.sandbox_server`).

**No forged passes.** The solution and the tests run in two processes
(:mod:`daemon.verifying.sandbox_harness`): the tests' process calls into the solution's
through proxies and compares plain values it rebuilt itself (:mod:`daemon.verifying.sandbox_wire`),
so an ``__eq__`` that always says yes, a patched ``unittest`` or ``assert``, a token read
from a frame, an early ``exit(0)`` or a write to every descriptor all happen in a process
that decides nothing. Only the tests' process holds the completion token and the status
descriptor, and it is non-dumpable. A pass needs its exit status 0 *and* that token. The
solution runs as module ``solution`` (``if __name__ == "__main__":`` blocks do not run;
tests may ``from solution import f``); its names are bound in the tests' namespace.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from daemon.verifying.sandbox_harness import solution_harness, tests_harness
from daemon.verifying.sandbox_programs import SAFE_ENV_KEYS, launcher, program, source

#: Lines the harness and the launcher write to stderr start with this; a candidate can write
#: it too, which can only make its own run fail.
MARKER = "selfdistill-sandbox: "
#: How much of the end of stderr the result's detail may quote.
DETAIL_CHARS = 300
#: Environment of the launcher and the candidate: nothing inherited from the worker.
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
#: Most file descriptors a run may open (RLIMIT_NOFILE).
_MAX_OPEN_FILES = 64
#: After a kill, how long to wait for the run's processes to be gone before moving on.
_REAP_WAIT_S = 3.0


#: The isolation properties a run can be required to have, each measured inside the run
#: (by the launcher's ``measure``, in the final state, before any candidate code):
#: ``no-network``: its own network namespace, with no interface but loopback;
#: ``foreign-uid``: a uid and groups that own nothing of the worker's (not root, not the
#: worker's uid or gid, as the kernel sees them from the worker's user namespace);
#: ``read-only-fs``: every mount read-only except scratch (/tmp, /proc, /dev), and the run
#: works in /tmp;
#: ``no-worker-env``: no other process's environment it can read holds anything but the
#: sandbox's own variables (the worker's secrets live in its environment).
Requirement = Literal["no-network", "foreign-uid", "read-only-fs", "no-worker-env"]
REQUIREMENTS: tuple[Requirement, ...] = get_args(Requirement)


class SandboxConfig(BaseModel):
    """Limits of one sandboxed run of candidate code against a prompt's tests."""

    model_config = ConfigDict(extra="forbid")

    require: list[Requirement] = Field(
        default_factory=lambda: list(REQUIREMENTS),
        description="Isolation properties a run must have, measured inside it before the "
        "candidate's code starts; with any missing the run is refused (reason "
        "'unavailable'), the candidate is not accepted and the stage reports itself "
        "unavailable. Remove one only knowingly: each stands between candidate code and "
        "the worker's network, files or secrets.",
    )
    socket: str | None = Field(
        None,
        description="Unix socket of a `selfdistill sandbox serve` process (its own user, "
        "container or unit) to run candidates in, instead of in this process's children: "
        "for workers that cannot isolate their own (non-root, no namespaces). Unreachable "
        "counts as unavailable.",
    )

    timeout_s: float = Field(5.0, gt=0, description="Wall-clock limit of one run.")
    memory_mb: int = Field(512, ge=32, description="Address-space limit (RLIMIT_AS), MiB.")
    max_output_bytes: int = Field(
        65536, ge=1024, description="Largest stdout+stderr kept; more fails the run."
    )
    max_processes: int = Field(
        32,
        ge=1,
        le=4096,
        description="RLIMIT_NPROC of the run (processes and threads of its uid). The kernel "
        "does not apply it to root, so a root worker runs candidates as run_as_uid.",
    )
    run_as_uid: int = Field(
        65534,
        ge=1,
        description="uid and gid a root worker drops to for the run (65534: nobody). "
        "Ignored when the worker is not root.",
    )
    disk_mb: int = Field(
        64,
        ge=1,
        description="Size of the run's private /tmp (a tmpfs, its working directory) where "
        "a mount namespace is available.",
    )
    tmp_dir: str | None = Field(
        None,
        description="Directory where each run's temporary directory is made (default: the "
        "system's). It is removed after the run.",
    )
    namespaces: bool = Field(
        True,
        description="Put the run in new network, PID and mount namespaces where the kernel "
        "allows (root, or a user namespace). Off only to test the fallback.",
    )
    audit_hook: bool = Field(
        True,
        description="Refuse process creation, network calls and ctypes inside the run with "
        "a Python audit hook. Leave on; off only to test the other layers alone.",
    )


@dataclass(frozen=True)
class SandboxResult:
    """How one run ended. ``passed`` only for reason "ok"; ``detail`` is one short line
    (the reason and the end of stderr) for the votes table; ``returncode`` is the harness's
    exit status (negative: killed by that signal; None: it never reported, e.g. timeout)."""

    passed: bool
    reason: str  # ok | failed | timeout | memory | crashed | forbidden | output | error
    # | unavailable (refused: a required isolation property is missing)
    detail: str
    returncode: int | None
    seconds: float
    #: The isolation layers this run had (e.g. "netns", "pidns", "mountns", "uid:65534",
    #: "rlimits", "audit-hook"); empty when it never started.
    layers: tuple[str, ...] = ()
    #: The :data:`REQUIREMENTS` measured inside the run (whether required or not).
    properties: tuple[str, ...] = ()
    #: Required properties the run lacked: it was refused ("unavailable") before any code.
    missing: tuple[str, ...] = ()


# --- extracting the code from an answer ----------------------------------------------------

_FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})[ \t]*([^\s`]*)[^\n]*$")
_PYTHON_TAGS = {"python", "py", "python3", "py3"}


def extract_code(answer: str) -> str:
    """The code of an answer: its last fenced block, else the whole answer, stripped.

    "Last", because models write the final version last. The last block *tagged* Python
    wins over a later untagged or other-language one, since answers often end with an
    example output block. A block left open (an answer cut at max_tokens) runs to the end.
    """
    blocks: list[tuple[str, str]] = []  # (tag, code)
    fence: str | None = None
    tag = ""
    lines: list[str] = []
    for line in answer.splitlines():
        m = _FENCE.match(line)
        if fence is None:
            if m:
                fence, tag, lines = m.group(1), m.group(2).lower(), []
        elif m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not m.group(2):
            blocks.append((tag, "\n".join(lines)))
            fence = None
        else:
            lines.append(line)
    if fence is not None:
        blocks.append((tag, "\n".join(lines)))
    python = [code for t, code in blocks if t in _PYTHON_TAGS]
    chosen = python[-1] if python else blocks[-1][1] if blocks else answer
    return chosen.strip()


# --- running -------------------------------------------------------------------------------


def worker_identity() -> dict[str, Any]:
    """Who a run must be isolated from: this process's uid, gid and network namespace."""
    try:
        netns = os.readlink("/proc/self/ns/net")
    except OSError:
        netns = "unknown"
    return {"uid": os.getuid(), "gid": os.getgid(), "netns": netns}


def run_tests(
    code: str, tests: str, config: SandboxConfig, *, worker: dict[str, Any] | None = None
) -> SandboxResult:
    """Run ``code`` then ``tests`` in a sandbox (see the module doc); never raises.

    Passed means: the tests ran to the end without an exception, the process exited 0
    within the time, memory and output limits, and nothing forbidden was attempted.
    """
    started = time.monotonic()
    try:
        tmp = Path(tempfile.mkdtemp(prefix="selfdistill-sandbox-", dir=config.tmp_dir))
    except (OSError, ValueError) as exc:
        return _result("error", f"cannot make a temporary directory ({exc})", None, started)
    try:
        return _run(tmp, code, tests, config, started, worker)
    except Exception as exc:  # the worker must get a vote, whatever happened
        return _result("error", f"sandbox failure ({type(exc).__name__}: {exc})", None, started)
    finally:
        _remove_tree(tmp)


@functools.cache
def _python(executable: str) -> tuple[str, list[str]] | None:
    """The interpreter to run (``executable`` resolved) and the directories a dropped uid
    must be able to enter to run it: its own and its prefixes, outermost only. None: no
    interpreter. Computed once per ``sys.executable``, not per run."""
    interpreter = os.path.realpath(executable) if executable else ""
    if not interpreter or not os.access(interpreter, os.X_OK):
        return None
    needed = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    needed.add(os.path.dirname(interpreter))
    outermost = sorted(p for p in needed if not any(p.startswith(q + "/") for q in needed))
    return interpreter, outermost


def _cpu_seconds(config: SandboxConfig) -> int:
    """RLIMIT_CPU of a run: a backstop a little beyond the wall-clock limit."""
    return math.ceil(config.timeout_s) + 1


def _run(
    tmp: Path,
    code: str,
    tests: str,
    config: SandboxConfig,
    started: float,
    worker: dict[str, Any] | None,
) -> SandboxResult:
    uid = config.run_as_uid if os.geteuid() == 0 else None
    python = _python(sys.executable)
    if python is None:
        return _result("error", f"no Python interpreter to run ({sys.executable!r})", None, started)
    interpreter, needed = python
    os.chmod(tmp, 0o711)  # the candidate may pass through (fallback cwd), never list or read
    work = tmp / "work"
    work.mkdir(mode=0o700)
    if uid is not None:
        os.chown(work, uid, uid)
    nonce = secrets.token_hex(16)
    paths = {name: tmp / name for name in ("tests", "code", "stdout", "stderr", "status", "report")}
    paths["tests"].write_text(json.dumps({"tests": tests, "nonce": nonce}), encoding="ascii")
    paths["code"].write_text(json.dumps({"code": code}), encoding="ascii")
    fds: dict[str, int] = {}
    try:
        for name, path in paths.items():
            read = name in ("tests", "code")
            flags = os.O_RDONLY if read else os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            fds[name] = os.open(path, flags | os.O_CLOEXEC, 0o600)
        limits = {
            "as": config.memory_mb * 1024 * 1024,
            "cpu": _cpu_seconds(config),
            "fsize": config.max_output_bytes + 1,
            "nofile": _MAX_OPEN_FILES,
            "nproc": config.max_processes,
        }
        # "run" is unused by the harnesses: it names the run on every process's command
        # line (forks included), so that an operator or a test can find them.
        harness_cfg = {"hook": config.audit_hook, "run": str(tmp)}
        launch = {
            "interpreter": interpreter,
            "needed": needed,
            "uid": uid,
            "work": str(work),
            "disk_mb": config.disk_mb,
            "namespaces": config.namespaces,
            "limits": limits,
            "report_fd": fds["report"],
            "env": _ENV,
            "require": list(config.require),
            "others": [worker_identity(), *([worker] if worker else [])],
            "safe_env": list(SAFE_ENV_KEYS),
            "roles": {
                "tests": {
                    "input_fd": fds["tests"],
                    "status_fd": fds["status"],
                    "harness": program(tests_harness, harness_cfg),
                },
                "solution": {
                    "input_fd": fds["code"],
                    "harness": program(solution_harness, harness_cfg),
                },
            },
        }
        try:
            proc = subprocess.Popen(
                [interpreter, "-I", "-S", "-c", source(launcher), json.dumps(launch)],
                stdin=subprocess.DEVNULL,
                stdout=fds["stdout"],
                stderr=fds["stderr"],
                cwd=tmp,
                env=_ENV,
                close_fds=True,
                pass_fds=(fds["tests"], fds["code"], fds["status"], fds["report"]),
                start_new_session=True,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            return _result("error", f"cannot start the sandbox ({exc})", None, started)
    finally:
        for fd in fds.values():
            os.close(fd)
    try:
        timed_out = not _wait_unreaped(proc.pid, config.timeout_s)
        if timed_out:
            # Ask the launcher to kill and reap its child (so nothing is left as a zombie
            # for the host's init to collect); the group kill below is the backstop.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, signal.SIGTERM)
            _wait_unreaped(proc.pid, _REAP_WAIT_S)
    finally:
        # The launcher is a zombie until proc.wait() reaps it, so its pid (the group's id)
        # cannot have been reused by an unrelated group when this kill is sent.
        _kill_group(proc.pid)
        proc.wait()
    report = _read_report(paths["report"])
    layers = tuple(report.get("layers", ())) + (
        ("audit-hook",) if config.audit_hook and report.get("layers") is not None else ()
    )
    child = report.get("child")
    if isinstance(child, int) and "exit" not in report:
        _wait_gone(child)  # the launcher was killed before it could reap the child
    if "pidns" not in layers:
        _sweep(str(tmp))
    return _classify(
        timed_out=timed_out,
        report=report,
        paths=paths,
        nonce=nonce,
        config=config,
        started=started,
        layers=layers,
    )


def _classify(
    *,
    timed_out: bool,
    report: dict[str, Any],
    paths: dict[str, Path],
    nonce: str,
    config: SandboxConfig,
    started: float,
    layers: tuple[str, ...],
) -> SandboxResult:
    """One reason for a finished run, most specific first; the detail quotes stderr's end."""
    code = report.get("exit")
    returncode = code if isinstance(code, int) else None
    stderr = _tail(paths["stderr"])
    markers = [ln[len(MARKER) :] for ln in stderr.splitlines() if ln.startswith(MARKER)]
    tail = _last_lines(stderr)

    properties = tuple(p for p in report.get("properties", ()) if p in REQUIREMENTS)
    refused = tuple(p for p in report.get("refused", ()) if p in REQUIREMENTS)

    def result(reason: str, detail: str) -> SandboxResult:
        return _result(reason, detail, returncode, started, layers, properties, refused)

    if refused:
        return result("unavailable", unavailable_detail(refused))
    if timed_out:
        return result("timeout", f"timeout: no result within {config.timeout_s:g} s")
    size = sum(_size(paths[name]) for name in ("stdout", "stderr"))
    if size > config.max_output_bytes or returncode == -signal.SIGXFSZ:
        return result("output", f"output: more than {config.max_output_bytes} bytes of output")
    forbidden = [m[len("forbidden: ") :] for m in markers if m.startswith("forbidden: ")]
    if forbidden:
        return result("forbidden", f"forbidden: {forbidden[0]} is not allowed in the sandbox")
    if "memory" in markers or "MemoryError" in stderr:
        return result("memory", f"memory: exceeded {config.memory_mb} MiB | {tail}")
    if "error" in report:
        return result("error", f"error: {report['error']}")
    if returncode is None:
        return result("error", "error: the sandbox ended without reporting the run")
    solution = report.get("solution_exit")
    if isinstance(solution, int) and solution < 0:  # the candidate's own process died
        returncode, cpu = solution, report.get("solution_cpu")
    else:
        cpu = report.get("cpu")
    if returncode < 0:
        if -returncode == signal.SIGXCPU or (
            -returncode == signal.SIGKILL
            and isinstance(cpu, float | int)
            and cpu >= config.timeout_s
        ):
            return result("timeout", f"timeout: CPU time limit ({_cpu_seconds(config)} s)")
        return result("crashed", f"crashed: killed by {_signal_name(-returncode)}" + _suffix(tail))
    if returncode == 0:
        if _read(paths["status"]) == nonce:
            return result("ok", "ok: tests passed")
        return result("failed", "failed: exited before the tests finished" + _suffix(tail))
    return result("failed", f"failed: {tail}" if tail else f"failed: exit status {returncode}")


def _result(
    reason: str,
    detail: str,
    returncode: int | None,
    started: float,
    layers: tuple[str, ...] = (),
    properties: tuple[str, ...] = (),
    missing: tuple[str, ...] = (),
) -> SandboxResult:
    return SandboxResult(
        passed=reason == "ok",
        reason=reason,
        detail=one_line(detail),
        returncode=returncode,
        seconds=round(time.monotonic() - started, 3),
        layers=layers,
        properties=properties,
        missing=missing,
    )


def unavailable_detail(missing: tuple[str, ...] | list[str]) -> str:
    return (
        f"unavailable: the sandbox lacks {', '.join(missing)} (verify.sandbox.require); "
        "the candidate's code was not run"
    )


def one_line(text: str, limit: int = DETAIL_CHARS) -> str:
    """``text`` as one line (whitespace collapsed) of at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _suffix(tail: str) -> str:
    return f" | {tail}" if tail else ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read(path: Path, limit: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def _tail(path: Path, limit: int = 8192) -> str:
    """The last ``limit`` bytes of a file, decoded leniently."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, _size(path) - limit))
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


#: stderr lines that say nothing in a one-line detail: traceback carets, unittest rules
#: and timing, the traceback header.
_NOISE = re.compile(
    r"^(?:[\s^~]*|[-=]{5,}|Ran \d+ tests? in .*|Traceback \(most recent call last\):)$"
)


def _last_lines(stderr: str, count: int = 3) -> str:
    """The last few telling lines of stderr (not our markers), joined by " | "."""
    lines = [ln.strip() for ln in stderr.splitlines()]
    lines = [ln for ln in lines if not _NOISE.match(ln) and not ln.startswith(MARKER)]
    return " | ".join(lines[-count:])


def _read_report(path: Path) -> dict[str, Any]:
    """The launcher's JSON lines merged into one dict (a later key wins)."""
    merged: dict[str, Any] = {}
    for line in _read(path, 1 << 16).splitlines():
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            if isinstance(data, dict):
                merged.update(data)
    return merged


def _wait_unreaped(pid: int, timeout: float) -> bool:
    """Wait until our child ``pid`` exits, *without* reaping it; False on timeout."""
    deadline = time.monotonic() + timeout
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if select.select([pidfd], [], [], left)[0]:
                    return True
        finally:
            os.close(pidfd)
    while time.monotonic() < deadline:  # no pidfd: poll without reaping
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None:
            return True
        time.sleep(0.01)
    return False


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


def _wait_gone(pid: int) -> None:
    """Wait (briefly, bounded) until the run's PID-namespace init has died.

    The launcher's parent-death signal kills it when the launcher is killed; the kernel then
    kills the rest of its namespace before the init is gone. Waiting here means a caller
    that looks right after the run finds nothing left.
    """
    deadline = time.monotonic() + _REAP_WAIT_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _sweep(run_dir: str) -> None:
    """Kill processes whose working directory is inside ``run_dir`` (no PID namespace).

    Catches a process that left the process group (``setsid``) when the kernel's PID
    namespace could not. Best effort: a process that changed directory is not found.
    """
    prefix = run_dir.rstrip("/") + "/"
    for _ in range(3):
        found = False
        try:
            entries = os.listdir("/proc")
        except OSError:
            return
        for name in entries:
            if not name.isdigit():
                continue
            try:
                cwd = os.readlink(f"/proc/{name}/cwd")
            except OSError:
                continue
            if cwd == run_dir or cwd.startswith(prefix):
                found = True
                with contextlib.suppress(OSError):
                    os.kill(int(name), signal.SIGKILL)
        if not found:
            return
        time.sleep(0.05)


def _remove_tree(path: Path) -> None:
    """Remove the run's directory even if the candidate made parts of it unwritable."""

    def make_writable(func: Any, target: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
        with contextlib.suppress(OSError):
            func(target)

    shutil.rmtree(path, onerror=make_writable)
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
