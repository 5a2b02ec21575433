"""The two programs a sandboxed run executes: the launcher and the harness.

``daemon/verifying/sandbox.py`` runs them and judges what they report; here is what runs
*inside* the run's processes. The *launcher* unshares the namespaces and forks the init that
mounts, drops privileges and execs the *harness*, which installs the audit hook and runs the
solution, then the tests, and writes the completion token. Both are ordinary functions here,
so they are linted and read like the rest; they run as ``python -I -S -c <their source>`` in
a fresh process and import only the standard library, so they must not use anything else
from this module or the package.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any


@functools.cache
def source(function: Any) -> str:
    """A ``-c`` program that defines ``function`` and calls it with argv[1] as JSON."""
    return (
        "from __future__ import annotations\n"
        + inspect.getsource(function)
        + f"\nimport json, sys\n{function.__name__}(json.loads(sys.argv[1]))\n"
    )


def program(function: Any, cfg: dict[str, Any]) -> list[str]:
    return ["-c", source(function), json.dumps(cfg)]


def launcher(cfg: dict[str, Any]) -> None:  # pragma: no cover - runs in the launcher process
    """The launcher: namespaces, then fork the child that mounts, drops privileges, execs.

    Runs as the worker's user in a fresh process. It reports, as JSON lines on
    ``report_fd``: ``layers`` (from the child, before it execs), ``child`` (its pid) and
    ``exit``/``cpu`` (the child's status), or ``error``.
    """
    import ctypes
    import fcntl
    import json
    import os
    import re
    import resource
    import select
    import signal

    report_fd = cfg["report_fd"]

    def report(**data: Any) -> None:
        os.write(report_fd, (json.dumps(data) + "\n").encode())

    clone_newns, clone_newuser = 0x00020000, 0x10000000
    clone_newpid, clone_newnet = 0x20000000, 0x40000000
    ms_rdonly, ms_nosuid, ms_nodev, ms_noexec = 1, 2, 4, 8
    ms_remount, ms_bind, ms_rec, ms_private = 32, 4096, 16384, 1 << 18
    mount_flags = {
        "nosuid": ms_nosuid,
        "nodev": ms_nodev,
        "noexec": ms_noexec,
        "noatime": 1024,
        "nodiratime": 2048,
        "relatime": 1 << 21,
        "strictatime": 1 << 24,
    }
    pr_set_pdeathsig, pr_set_no_new_privs = 1, 38

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    except (OSError, AttributeError) as exc:  # no namespaces or prctl then, limits still
        libc = None
        report(note=f"no usable libc ({exc})")

    def enc(text: str | None) -> bytes | None:
        return None if text is None else os.fsencode(text)

    def mount(
        src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
    ) -> None:
        if libc is None or libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
            err = ctypes.get_errno() if libc is not None else 0
            raise OSError(err, os.strerror(err), target)

    def unshare(flags: int) -> bool:
        return libc is not None and libc.unshare(flags) == 0

    real_uid, real_gid = os.getuid(), os.getgid()
    layers: list[str] = ["rlimits", "pgroup"]
    namespaces = 0
    wanted = clone_newnet | clone_newns | clone_newpid
    extra = 0 if os.geteuid() == 0 else clone_newuser  # root needs no user namespace
    for flags in (wanted, clone_newnet | clone_newpid, clone_newnet) if cfg["namespaces"] else ():
        if unshare(flags | extra):
            namespaces = flags | extra
            break
    if namespaces & clone_newuser:
        layers.append("userns")
        try:  # identity maps: the candidate stays an ordinary user, without capabilities
            for name, text in (
                ("setgroups", "deny"),
                ("uid_map", f"{real_uid} {real_uid} 1"),
                ("gid_map", f"{real_gid} {real_gid} 1"),
            ):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        except OSError:
            pass
    for flag, name in ((clone_newnet, "netns"), (clone_newpid, "pidns"), (clone_newns, "mountns")):
        if namespaces & flag:
            layers.append(name)
    alive_r, alive_w = os.pipe()  # the child sees EOF here once the launcher is gone
    child = [0]
    stop = [False]

    def on_term(_signum: int, _frame: Any) -> None:
        """The worker's timeout: kill the child; wait4 below then reaps it."""
        stop[0] = True
        if child[0]:
            os.kill(child[0], signal.SIGKILL)

    signal.signal(signal.SIGTERM, on_term)
    uid = cfg["uid"]  # None: not root, nothing to drop

    def search_blocked(path: str) -> str | None:
        """The topmost directory on ``path`` that uid cannot enter, or None."""
        current = ""
        for part in path.strip("/").split("/"):
            current += "/" + part
            st = os.stat(current)
            bit = 0o100 if st.st_uid == uid else 0o010 if st.st_gid == uid else 0o001
            if not st.st_mode & bit:
                return current
        return None

    needed = cfg["needed"]  # what uid must be able to enter: the interpreter's directories

    def mask_closed_directories() -> bool:
        """Hide directories uid cannot enter behind a tmpfs holding only the interpreter's
        prefix, bound back at its own path (so its rpath holds). False: cannot."""
        try:
            masks: dict[str, list[str]] = {}
            for path in needed:
                blocked = search_blocked(path)
                if blocked == path:
                    return False  # the prefix itself is closed: nothing to bind
                if blocked is not None:
                    masks.setdefault(blocked, []).append(path)
            for mask, inside in masks.items():
                handles = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in inside]
                options = "size=1m,nr_inodes=1024,mode=0755"
                mount("tmpfs", mask, "tmpfs", ms_nosuid | ms_nodev, options)
                for p, handle in zip(inside, handles, strict=True):
                    os.makedirs(p, mode=0o755, exist_ok=True)
                    mount(f"/proc/self/fd/{handle}", p, None, ms_bind | ms_rec)
                    os.close(handle)
            if masks:
                layers.append("masked:" + ",".join(sorted(masks)))
            return True
        except OSError:
            return False

    def read_only_elsewhere() -> None:
        """Every mount but /tmp and /proc read-only: writes land only in the private /tmp."""
        done = failed = 0
        with open("/proc/self/mountinfo", "rb") as f:
            mountinfo = f.read().decode("utf-8", "replace").splitlines()
        for line in mountinfo:
            fields = line.split(" ")
            if len(fields) < 6:
                continue
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if any(point == p or point.startswith(p + "/") for p in ("/tmp", "/proc")):
                continue
            flags = ms_remount | ms_bind | ms_rdonly  # keeping the flags a remount may not drop
            for option in fields[5].split(","):
                flags |= mount_flags.get(option, 0)
            try:
                mount(None, point, None, flags)
                done += 1
            except OSError:
                failed += 1
        if done and not failed:
            layers.append("read-only-fs")
        elif done:
            layers.append(f"read-only-fs({failed} mounts left)")

    def set_up_mounts() -> tuple[str, bool]:
        """The mount namespace's view; returns (working directory, whether uid can run)."""
        work = cfg["work"]
        if namespaces & clone_newns:
            try:  # nothing mounted here may propagate back to the host
                mount(None, "/", None, ms_rec | ms_private)
            except OSError:
                layers.remove("mountns")
        if "mountns" not in layers:
            try:
                return work, uid is None or all(search_blocked(p) is None for p in needed)
            except OSError:
                return work, False
        can_run = uid is None or mask_closed_directories()
        try:
            options = f"size={cfg['disk_mb']}m,nr_inodes=16384,mode=1777"
            mount("tmpfs", "/tmp", "tmpfs", ms_nosuid | ms_nodev, options)
            os.mkdir("/tmp/work", 0o700)
            if uid is not None:
                os.chown("/tmp/work", uid, uid)
            work = "/tmp/work"
            layers.append("private-tmp")
        except OSError:
            pass
        if namespaces & clone_newpid:
            try:
                mount("proc", "/proc", "proc", ms_nosuid | ms_nodev | ms_noexec)
                layers.append("private-proc")
            except OSError:
                pass
        if "private-tmp" in layers:
            read_only_elsewhere()
        return work, can_run

    def exec_harness(work: str, can_run: bool) -> None:
        """In the harness's process: drop privileges, set the limits, exec the harness."""
        os.chdir(work)
        if uid is not None and can_run:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            layers.append(f"uid:{uid}")
        elif uid is not None:
            layers.append("root")
        if libc is not None:
            if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) == 0:
                layers.append("no-new-privs")
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)  # cleared by setuid
        report(layers=layers)
        # The harness gets the input on fd 3 and the status on fd 4, and nothing else;
        # the report stays open (close-on-exec) to tell of a failed exec.
        moved = [fcntl.fcntl(cfg[k], fcntl.F_DUPFD, 5) for k in ("input_fd", "status_fd")]
        last = fcntl.fcntl(report_fd, fcntl.F_DUPFD_CLOEXEC, 5)
        os.dup2(moved[0], 3)
        os.dup2(moved[1], 4)
        os.closerange(5, last)
        os.closerange(last + 1, 1 << 20)
        limits = cfg["limits"]
        for limit, value in (
            (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_AS, limits["as"]),
            (resource.RLIMIT_CPU, limits["cpu"]),
            (resource.RLIMIT_FSIZE, limits["fsize"]),
            (resource.RLIMIT_NOFILE, limits["nofile"]),
            (resource.RLIMIT_NPROC, limits["nproc"]),
        ):
            # CPU: SIGXCPU at the limit, SIGKILL a second later.
            soft, hard = value, value + 1 if limit == resource.RLIMIT_CPU else value
            current = resource.getrlimit(limit)[1]
            if current != resource.RLIM_INFINITY:
                soft, hard = min(soft, current), min(hard, current)
            resource.setrlimit(limit, (soft, hard))
        env = dict(cfg["env"], HOME=work, TMPDIR=work)
        interpreter = cfg["interpreter"]
        os.execve(interpreter, [interpreter, "-I", "-S", *cfg["harness"]], env)

    # The init: the first process of the PID namespace (when there is one). It stays root,
    # does the mounts, forks the harness and reports the harness's status. The harness is
    # not the init because an init ignores the signals it sends itself (abort(), alarm()
    # without a handler), which would make a crashing candidate look like a passing one.
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.close(alive_w)
            if libc is not None:
                libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
            if select.select([alive_r], [], [], 0)[0]:
                os._exit(137)  # the launcher died before the death signal was armed
            os.close(alive_r)
            work, can_run = set_up_mounts()
            harness = os.fork()
            if harness == 0:
                exec_harness(work, can_run)
            _, status, usage = os.wait4(harness, 0)
            cpu = round(usage.ru_utime + usage.ru_stime, 3)
            report(exit=os.waitstatus_to_exitcode(status), cpu=cpu)
            os._exit(0)
        except BaseException as exc:  # anything here is a setup failure
            try:
                report(error=f"sandbox setup failed: {type(exc).__name__}: {exc}")
            finally:
                os._exit(126)
    child[0] = pid
    if stop[0]:
        os.kill(pid, signal.SIGKILL)
    os.close(alive_r)
    report(child=pid)
    os.waitpid(pid, 0)  # reap the init (its status says nothing: the harness's is reported)
    os._exit(0)


def harness(cfg: dict[str, Any]) -> None:  # pragma: no cover - runs in the sandboxed process
    """The harness: audit hook, then the solution, then the tests, in one namespace.

    Exits 0 and writes the completion token to ``status_fd`` only when the tests ran to
    the end; any exception exits 1 with its traceback on stderr.
    """
    import builtins
    import json
    import linecache
    import os
    import sys
    import traceback
    import types

    marker = b"selfdistill-sandbox: "
    memory_line = marker + b"memory\n"

    with open(cfg["input_fd"], "rb", closefd=True) as f:
        data = json.loads(f.read())
    token = data.pop("nonce").encode()
    status_fd = cfg["status_fd"]
    code, tests = data["code"], data["tests"]
    del data

    def say(text: str) -> None:
        os.write(2, marker + text.encode("utf-8", "replace") + b"\n")

    if cfg["hook"]:
        import _posixsubprocess  # imported now so that ``import subprocess`` still works

        def refuse_fork_exec(*_args: Any, **_kwargs: Any) -> Any:
            say("forbidden: _posixsubprocess.fork_exec")
            raise PermissionError("process creation is not allowed in the sandbox")

        _posixsubprocess.fork_exec = refuse_fork_exec
        blocked = frozenset(
            {
                "os.system",
                "os.fork",
                "os.forkpty",
                "os.posix_spawn",
                "os.spawn",
                "os.exec",
                "os.kill",
                "os.killpg",
                "signal.pthread_kill",
                "subprocess.Popen",
                "socket.connect",
                "socket.bind",
                "socket.getaddrinfo",
                "socket.gethostbyname",
                "socket.gethostbyaddr",
                "socket.getnameinfo",
                "socket.sendto",
                "socket.sendmsg",
                "urllib.Request",
                "webbrowser.open",
            }
        )
        blocked_imports = frozenset({"_posixsubprocess", "_ctypes", "ctypes"})

        def hook(event: str, args: tuple[Any, ...]) -> None:
            if (
                event in blocked
                or event.startswith("ctypes.")
                or (event == "import" and args and args[0] in blocked_imports)
            ):
                what = f"import {args[0]}" if event == "import" else event
                say(f"forbidden: {what}")
                raise PermissionError(f"{what} is not allowed in the sandbox")

        sys.addaudithook(hook)

    sys.argv = ["solution.py"]  # as if run as a script; unittest.main() parses it
    module = types.ModuleType("solution")
    module.__file__ = "solution.py"
    module.__builtins__ = builtins  # type: ignore[attr-defined]
    sys.modules["solution"] = module
    sys.modules["__main__"] = module  # unittest.main() in the tests finds their cases here
    namespace = module.__dict__
    for name, text in (("solution.py", code), ("tests.py", tests)):
        linecache.cache[name] = (len(text), None, text.splitlines(True), name)

    def fail(exc: BaseException) -> None:
        if isinstance(exc, MemoryError):
            os.write(2, memory_line)
        tb = exc.__traceback__
        if tb is not None and tb.tb_frame.f_code.co_filename == "<string>":
            tb = tb.tb_next  # our own exec() frame tells the reader nothing
        try:
            traceback.print_exception(type(exc), exc, tb, limit=-6)
            sys.stderr.flush()
        except BaseException:  # e.g. no memory left to format it
            pass
        os._exit(1)

    try:
        exec(compile(code, "solution.py", "exec"), namespace)  # the point
    except SystemExit as exc:
        say(f"the solution exited ({exc.code!r}) before the tests ran")
        os._exit(1)
    except BaseException as exc:
        fail(exc)
    exited = False
    try:
        exec(compile(tests, "tests.py", "exec"), namespace)
    except SystemExit as exc:  # unittest.main() ends this way
        if exc.code not in (None, 0, False):
            say(f"the tests exited with status {exc.code!r}")
            os._exit(1)
        exited = True
    except BaseException as exc:
        fail(exc)
    unittest = sys.modules.get("unittest")
    if unittest is not None and not exited:
        try:
            loader = unittest.TestLoader()
            cases = [
                value
                for value in list(namespace.values())
                if isinstance(value, type) and issubclass(value, unittest.TestCase)
            ]
            suite = unittest.TestSuite(loader.loadTestsFromTestCase(case) for case in cases)
            if suite.countTestCases():
                outcome = unittest.TextTestRunner(stream=sys.stderr, verbosity=1).run(suite)
                if not outcome.wasSuccessful():
                    os._exit(1)
        except BaseException as exc:
            fail(exc)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # an over-full stdout shows in its size
        os._exit(1)
    os.write(status_fd, token)
    os._exit(0)
