"""The programs a sandboxed run executes: the launcher and the two harnesses.

``daemon/verifying/sandbox.py`` runs them and judges what they report; here is what runs
*inside* the run's processes. The *launcher* unshares the namespaces and forks the init that
mounts, then forks two processes that each drop privileges, *measure* the isolation they
ended up with, refuse to go on if a required property is missing, and exec a harness:

- the *solution harness* (:func:`solution_harness`) runs the candidate's code and then
  answers the tests' questions about what it defined (``sandbox_wire``);
- the *tests harness* (:func:`tests_harness`) runs the prompt's tests against proxies of
  those names, compares with its own ``==`` on values it rebuilt from plain data, and
  alone holds the completion token and the status descriptor. It makes itself
  non-dumpable first, so the solution's process (same uid) can neither ptrace it nor open
  its ``/proc/<pid>/mem`` or ``fd/``.

All of them are ordinary functions here, so they are linted and read like the rest; each
runs as ``python -I -S -c <its source>`` in a fresh process and imports only the standard
library, so it must not use anything else from this module or the package.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any

#: Environment variables a process visible to the candidate may carry without counting
#: as "the worker's environment": the sandbox's own (``sandbox._ENV`` plus HOME/TMPDIR).
SAFE_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")


@functools.cache
def source(function: Any, *helpers: Any) -> str:
    """A ``-c`` program that defines ``helpers`` and ``function`` and calls the latter with
    argv[1] as JSON."""
    parts = [inspect.getsource(h) for h in (*helpers, function)]
    return (
        "from __future__ import annotations\nfrom typing import Any\n"
        + "\n".join(parts)
        + f"\nimport json, sys\n{function.__name__}(json.loads(sys.argv[1]))\n"
    )


def program(function: Any, cfg: dict[str, Any]) -> list[str]:
    """The interpreter arguments that run ``function(cfg)``, with the helpers it needs."""
    from daemon.verifying.sandbox_harness import HELPERS

    helpers = HELPERS.get(function.__name__, ())
    return ["-c", source(function, *helpers), json.dumps(cfg)]


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
    import socket

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

    # Who the candidate must be kept from (the worker, and a sandbox server running it).
    others = cfg["others"]
    other_uids = {o["uid"] for o in others}
    other_gids = {o["gid"] for o in others}
    other_netns = {o["netns"] for o in others}

    def measure() -> list[str]:
        """The isolation this process has now, measured rather than assumed (a step that
        "worked" proves nothing): the properties ``verify.sandbox.require`` names."""
        found = []
        try:
            netns = os.readlink("/proc/self/ns/net")
            with open("/proc/self/net/dev") as f:
                interfaces = [ln.split(":")[0].strip() for ln in f.read().splitlines()[2:]]
            if netns not in other_netns and all(name == "lo" for name in interfaces):
                found.append("no-network")
        except OSError:
            pass
        inside, outside = os.getuid(), os.getuid()
        try:  # the uid the kernel checks files against, seen from the worker's namespace
            with open("/proc/self/uid_map") as f:
                for line in f:
                    first, lower, count = (int(x) for x in line.split())
                    if first <= inside < first + count:
                        outside = lower + inside - first
        except (OSError, ValueError):
            pass
        groups = {os.getgid(), *os.getgroups()}
        if inside != 0 and outside != 0 and outside not in other_uids and not groups & other_gids:
            found.append("foreign-uid")
        try:
            writable = []
            with open("/proc/self/mountinfo", "rb") as f:
                for line in f.read().decode("utf-8", "replace").splitlines():
                    fields = line.split(" ")
                    point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
                    scratch = any(
                        point == p or point.startswith(p + "/") for p in ("/tmp", "/proc", "/dev")
                    )
                    if "rw" in fields[5].split(",") and not scratch:
                        writable.append(point)
            if not writable and os.getcwd().startswith("/tmp"):
                found.append("read-only-fs")
        except (OSError, IndexError):
            pass
        leaked = False
        me = str(os.getpid())
        for name in os.listdir("/proc"):
            if not name.isdigit() or name == me:
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    environ = f.read(1 << 16)
            except OSError:
                continue  # not ours to read: that is the point
            keys = {
                entry.split(b"=", 1)[0].decode("ascii", "replace")
                for entry in environ.split(b"\0")
                if entry
            }
            if keys - set(cfg["safe_env"]):
                leaked = True
                break
        if not leaked:
            found.append("no-worker-env")
        return found

    def exec_harness(work: str, can_run: bool, role: dict[str, Any]) -> None:
        """In a harness's process: drop privileges, set the limits, measure the isolation
        and refuse if it falls short, then exec the harness."""
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
        found = measure()
        missing = [p for p in cfg["require"] if p not in found]
        report(layers=layers, properties=found)
        if missing:  # fail closed: the candidate's code never runs
            report(refused=missing)
            os._exit(125)
        # The harness gets its input on fd 3, the status on fd 4 (the tests' only) and the
        # channel on fd 5, and nothing else; the report stays open (close-on-exec) to tell
        # of a failed exec.
        wanted = [role["input_fd"], role.get("status_fd"), role["channel_fd"]]
        moved = [None if fd is None else fcntl.fcntl(fd, fcntl.F_DUPFD, 6) for fd in wanted]
        last = fcntl.fcntl(report_fd, fcntl.F_DUPFD_CLOEXEC, 6)
        for target, fd in zip((3, 4, 5), moved, strict=True):
            if fd is not None:
                os.dup2(fd, target)
                continue
            os.closerange(target, target + 1)  # the solution has no status descriptor
        os.closerange(6, last)
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
        os.execve(interpreter, [interpreter, "-I", "-S", *role["harness"]], env)

    # The init: the first process of the PID namespace (when there is one). It stays root,
    # does the mounts, forks the two harnesses and reports their statuses. A harness is
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
            tests_end, solution_end = socket.socketpair()
            channel = {"tests": tests_end.detach(), "solution": solution_end.detach()}
            pids = {}
            for name in ("tests", "solution"):
                role = dict(cfg["roles"][name], channel_fd=channel[name])
                child_pid = os.fork()
                if child_pid == 0:
                    os.close(channel["solution" if name == "tests" else "tests"])
                    exec_harness(work, can_run, role)
                pids[name] = child_pid
            for fd in channel.values():
                os.close(fd)
            ended: dict[int, tuple[int, float]] = {}
            while pids["tests"] not in ended:
                done, status, usage = os.wait4(-1, 0)
                ended[done] = (os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime)
            # The tests are done, so the solution sees its channel close and exits; a crash
            # may still be on its way to being reapable. Past a second, it is killed.
            for _ in range(100):
                if pids["solution"] in ended:
                    break
                done, status, usage = os.wait4(pids["solution"], os.WNOHANG)
                if done:
                    exit_code = os.waitstatus_to_exitcode(status)
                    ended[done] = (exit_code, usage.ru_utime + usage.ru_stime)
                else:
                    select.select([], [], [], 0.01)
            if pids["solution"] not in ended:  # whatever it still does is moot
                os.kill(pids["solution"], signal.SIGKILL)
                _, status, usage = os.wait4(pids["solution"], 0)
                ended[pids["solution"]] = (None, usage.ru_utime + usage.ru_stime)
            (tests_exit, tests_cpu), (solution_exit, solution_cpu) = (
                ended[pids["tests"]],
                ended[pids["solution"]],
            )
            report(
                exit=tests_exit,
                cpu=round(tests_cpu, 3),
                solution_exit=solution_exit,
                solution_cpu=round(solution_cpu, 3),
            )
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
    os.waitpid(pid, 0)  # reap the init (its status says nothing: the harnesses' are reported)
    os._exit(0)
