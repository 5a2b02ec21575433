"""The two harnesses a sandboxed run execs: the solution's and the tests'.

The launcher (``sandbox_programs``) forks both inside the run's namespaces, after each has
dropped privileges and measured its isolation. The *solution harness* runs the candidate's
code and answers questions about what it defined; the *tests harness* runs the prompt's
tests against proxies of those names (``sandbox_wire``), compares values it rebuilt itself,
and alone holds the completion token and the status descriptor, in a process made
non-dumpable so the solution's (same uid) can neither ptrace it nor open its ``/proc``
entries. Each function runs as ``python -I -S -c <its source>`` with the helpers named in
:data:`HELPERS`, and imports only the standard library.
"""

from __future__ import annotations

from typing import Any

from daemon.verifying.sandbox_wire import (
    Remote,
    SolutionGone,
    WireChannel,
    wire_decode,
    wire_encode,
)


def install_audit_hook(say: Any) -> None:  # pragma: no cover - runs in a harness
    """Refuse process creation, signals to others, network calls and ctypes (module doc of
    ``sandbox``); each refusal also writes a marker, so catching the error does not help."""
    import _posixsubprocess  # imported now so that ``import subprocess`` still works
    import sys

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


def harness_setup(
    cfg: dict[str, Any], name: str, script: str
) -> Any:  # pragma: no cover - in a harness
    """What both harnesses share: the marker writer, the input, the module ``name`` runs
    as, the hook, and the failure path. Returns (say, data, namespace, fail)."""
    import builtins
    import json
    import os
    import sys
    import traceback
    import types

    marker = b"selfdistill-sandbox: "

    def say(text: str) -> None:
        os.write(2, marker + text.encode("utf-8", "replace") + b"\n")

    with open(3, "rb", closefd=True) as f:
        data = json.loads(f.read())
    if cfg["hook"]:
        install_audit_hook(say)
    sys.argv = [script]  # as if run as a script; unittest.main() parses it
    module = types.ModuleType(name)
    module.__file__ = script
    module.__builtins__ = builtins  # type: ignore[attr-defined]
    sys.modules[name] = module
    sys.modules["__main__"] = module  # unittest.main() in the tests finds their cases here

    def fail(exc: BaseException) -> None:
        if isinstance(exc, MemoryError):
            os.write(2, marker + b"memory\n")
        tb = exc.__traceback__
        if tb is not None and tb.tb_frame.f_code.co_filename == "<string>":
            tb = tb.tb_next  # our own exec() frame tells the reader nothing
        try:
            traceback.print_exception(type(exc), exc, tb, limit=-6)
            sys.stderr.flush()
        except BaseException:  # e.g. no memory left to format it
            pass
        os._exit(1)

    return say, data, module.__dict__, fail


def solution_harness(cfg: dict[str, Any]) -> None:  # pragma: no cover - in the sandbox
    """The candidate's process: run its code as module ``solution`` (``__main__`` blocks do
    not run), then answer the tests' questions until they hang up. It holds no token and
    no status descriptor: nothing it does here can pass a run."""
    import linecache
    import os

    say, data, namespace, fail = harness_setup(cfg, "solution", "solution.py")
    code = data["code"]
    del data
    linecache.cache["solution.py"] = (len(code), None, code.splitlines(True), "solution.py")
    channel = WireChannel(5)
    if channel.receive() is None:  # the tests' go: they made themselves safe first
        os._exit(1)
    handles: dict[int, Any] = {}

    def remember(obj: Any) -> int:
        handles.setdefault(id(obj), obj)
        return id(obj)

    def resolve(ref: Any) -> Any:
        if ref not in handles:
            raise ValueError(f"no object {ref!r} on the solution's side")
        return handles[ref]

    def base_of(kind: type) -> str:
        return next(k.__name__ for k in kind.__mro__ if k.__module__ == "builtins")

    def raised(exc: BaseException) -> dict[str, Any]:
        try:
            message = str(exc)[:2000]
        except BaseException:
            message = "?"
        kind = type(exc)
        from_solution = getattr(kind, "__module__", "") == "solution"
        return {
            "type": kind.__name__,
            "base": base_of(kind),
            "solution": from_solution,
            "message": message,
        }

    try:
        exec(compile(code, "solution.py", "exec"), namespace)  # the point
    except SystemExit as exc:
        say(f"the solution exited ({exc.code!r}) before the tests ran")
        os._exit(1)
    except BaseException as exc:
        fail(exc)
    names, exceptions = {}, {}
    for name, value in list(namespace.items()):
        if name.startswith("__"):
            continue
        solution_error = isinstance(value, type) and issubclass(value, BaseException)
        if solution_error and value.__module__ == "solution":
            exceptions[name] = base_of(value)
            continue
        names[name] = wire_encode(value, remember)
    channel.send({"names": names, "exceptions": exceptions})
    operations = {
        "getattr": getattr,
        "setattr": setattr,
        "call": lambda f, args, kwargs: f(*args, **kwargs),
        "len": len,
        "iter": iter,
        "next": next,
        "getitem": lambda obj, key: obj[key],
        "setitem": lambda obj, key, value: obj.__setitem__(key, value),
        "contains": lambda obj, item: item in obj,
        "bool": bool,
        "str": str,
        "repr": repr,
    }
    while True:
        try:
            request = channel.receive()
        except BaseException as exc:
            fail(exc)
        if request is None:
            os._exit(0)
        try:
            target = resolve(request["ref"])
            args = [wire_decode(a, resolve) for a in request["args"]]
            result = operations[request["op"]](target, *args)
            reply = {"ok": wire_encode(result, remember)}
        except BaseException as exc:  # the tests' side raises its own rebuilt copy
            if isinstance(exc, MemoryError):
                fail(exc)
            reply = {"raise": raised(exc)}
        channel.send(reply)


def tests_harness(cfg: dict[str, Any]) -> None:  # pragma: no cover - in the sandbox
    """The tests' process: make itself non-dumpable, tell the solution to start, bind
    proxies of what it defined, run the tests, and only then write the completion token.

    Exits 0 with the token only when the tests ran to the end; any exception (a call into
    a solution that is gone included) exits 1 with its traceback on stderr.
    """
    import builtins
    import ctypes
    import linecache
    import os
    import sys
    import types

    # PR_SET_DUMPABLE 0: the solution (same uid) cannot ptrace this process or open its
    # /proc entries (mem, fd/4). Done before the hook, which refuses ctypes from here on.
    if ctypes.CDLL(None).prctl(4, 0, 0, 0, 0) != 0:
        os.write(2, b"selfdistill-sandbox: cannot make the tests' process non-dumpable\n")
        os._exit(1)
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]
    del ctypes
    say, data, namespace, fail = harness_setup(cfg, "__main__", "tests.py")
    token = data.pop("nonce").encode()
    tests = data["tests"]
    del data
    linecache.cache["tests.py"] = (len(tests), None, tests.splitlines(True), "tests.py")
    channel = WireChannel(5)
    channel.send({"op": "start"})
    remotes: dict[Any, Any] = {}
    local_exceptions: dict[str, type] = {}

    def remember(obj: Any) -> Any:
        if isinstance(obj, Remote):
            return object.__getattribute__(obj, "_ref")
        raise TypeError(f"a {type(obj).__name__} cannot be passed to the solution, only data")

    def resolve(ref: Any) -> Any:
        if ref not in remotes:
            remotes[ref] = Remote(ref, ask)
        return remotes[ref]

    def builtin_error(name: Any) -> type | None:
        """The built-in ``Exception`` class of that name; None for the rest (SystemExit and
        the like included: the solution must never end the tests "successfully")."""
        kind = getattr(builtins, str(name), None)
        return kind if isinstance(kind, type) and issubclass(kind, Exception) else None

    def rebuilt(info: dict[str, Any]) -> BaseException:
        name, message = str(info.get("type")), str(info.get("message"))
        if info.get("solution") and name in local_exceptions:
            return local_exceptions[name](message)
        kind = builtin_error(info.get("base"))
        return kind(message) if kind else RuntimeError(f"the solution raised {name}: {message}")

    def ask(op: str, ref: Any, *args: Any) -> Any:
        channel.send({"op": op, "ref": ref, "args": [wire_encode(a, remember) for a in args]})
        reply = channel.receive()
        if reply is None:
            raise SolutionGone("the solution's process ended during a call")
        if "ok" in reply:
            return wire_decode(reply["ok"], resolve)
        raise rebuilt(reply.get("raise") or {})

    try:
        first = channel.receive()
    except BaseException as exc:
        fail(exc)
    if first is None or "names" not in first:
        say("the solution ended before the tests ran")
        os._exit(1)
    solution = types.ModuleType("solution")
    sys.modules["solution"] = solution
    try:
        for name, base in first.get("exceptions", {}).items():
            kind = builtin_error(base) or Exception
            local_exceptions[name] = type(name, (kind,), {"__module__": "solution"})
            setattr(solution, name, local_exceptions[name])
        for name, value in first["names"].items():
            setattr(solution, name, wire_decode(value, resolve))
    except BaseException as exc:
        fail(exc)
    for name, value in vars(solution).items():
        if not name.startswith("__"):
            namespace[name] = value
    exited = False
    try:
        exec(compile(tests, "tests.py", "exec"), namespace)
    except SystemExit as exc:  # unittest.main() ends this way (only the tests can raise it)
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
    os.write(4, token)
    os._exit(0)


#: What each harness needs defined beside it in its ``-c`` program.
HELPERS: dict[str, tuple[Any, ...]] = {
    "solution_harness": (wire_encode, wire_decode, WireChannel, install_audit_hook, harness_setup),
    "tests_harness": (
        wire_encode,
        wire_decode,
        WireChannel,
        SolutionGone,
        Remote,
        install_audit_hook,
        harness_setup,
    ),
}
