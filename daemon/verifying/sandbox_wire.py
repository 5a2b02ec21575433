"""What the two processes of a sandboxed run say to each other, and how values cross.

A run's *tests* and its *solution* run in two processes (``sandbox_programs``): the tests'
process asks, the solution's process answers. What crosses is data, never objects: a value
of a built-in type is encoded by its exact type and rebuilt on the other side from built-in
types alone, so a pass is decided by the tests' own ``==`` on values the tests' process
built. A candidate's ``__eq__`` that always says yes, a patched ``unittest``, a rewritten
``assert`` or a token read from a frame all live in the solution's process, which decides
nothing. Anything else (an instance of a class the solution defines, a generator) stays on
the solution's side behind a handle; the tests' side sees a :class:`Remote`, which forwards
attribute access, calls, ``len``, iteration and the like, but compares by identity only, so
a remote object can never *equal* an expected value.

Everything here runs inside the sandbox: the functions are sent as source text
(``sandbox_programs.source``) and use the standard library only, imported inside each
function, so they must not use anything else from this module or the package.
"""

from __future__ import annotations

from typing import Any

#: Nested containers deeper than this are refused rather than followed (and cycles end).
MAX_DEPTH = 64


def wire_encode(value: Any, remember: Any, depth: int = 0) -> Any:
    """``value`` as JSON-ready data, by its *exact* type; ``remember(obj)`` gives the handle
    of anything else (a subclass of a built-in included: its methods are the candidate's)."""
    import decimal
    import fractions
    import math

    if depth > 64:
        raise ValueError("a value nested more than 64 deep cannot be passed")
    kind = type(value)
    if value is None or kind is bool or kind is str or kind is int:
        return value
    if kind is float:
        return value if math.isfinite(value) else ["f", repr(value)]

    def each(items: Any) -> list[Any]:
        return [wire_encode(v, remember, depth + 1) for v in items]

    if kind is list:
        return ["l", each(value)]
    if kind is tuple:
        return ["t", each(value)]
    if kind is set:
        return ["s", each(value)]
    if kind is frozenset:
        return ["fs", each(value)]
    if kind is dict:
        return ["d", [each(pair) for pair in value.items()]]
    if kind is bytes:
        return ["b", value.hex()]
    if kind is bytearray:
        return ["ba", value.hex()]
    if kind is complex:
        return ["c", each((value.real, value.imag))]
    if kind is range:
        return ["rg", [value.start, value.stop, value.step]]
    if kind is decimal.Decimal:
        return ["dec", str(value)]
    if kind is fractions.Fraction:
        return ["fr", str(value)]
    return ["r", remember(value)]


def wire_decode(data: Any, resolve: Any) -> Any:
    """The value :func:`wire_encode` encoded, built from built-in types; ``resolve(ref)``
    gives what a handle stands for on this side."""
    import decimal
    import fractions

    if data is None or isinstance(data, bool | int | float | str):
        return data
    if not isinstance(data, list) or len(data) != 2 or not isinstance(data[0], str):
        raise ValueError("malformed value on the wire")
    tag, body = data

    def each() -> list[Any]:
        if not isinstance(body, list):
            raise ValueError("malformed value on the wire")
        return [wire_decode(v, resolve) for v in body]

    builders: dict[str, Any] = {
        "l": lambda: each(),
        "t": lambda: tuple(each()),
        "s": lambda: set(each()),
        "fs": lambda: frozenset(each()),
        "d": lambda: {wire_decode(k, resolve): wire_decode(v, resolve) for k, v in body},
        "b": lambda: bytes.fromhex(body),
        "ba": lambda: bytearray.fromhex(body),
        "c": lambda: complex(*each()),
        "rg": lambda: range(*(int(x) for x in body)),
        "f": lambda: float(body),
        "dec": lambda: decimal.Decimal(body),
        "fr": lambda: fractions.Fraction(body),
        "r": lambda: resolve(body),
    }
    if tag not in builders:
        raise ValueError(f"unknown value tag {tag!r} on the wire")
    return builders[tag]()


class WireChannel:
    """JSON lines over one end of a socket pair, with plain ``os.read``/``os.write`` (no
    ``socket`` calls, so the audit hook has nothing to refuse)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def send(self, message: dict[str, Any]) -> None:
        import json
        import os

        data = (json.dumps(message, ensure_ascii=True) + "\n").encode("ascii")
        while data:
            data = data[os.write(self.fd, data) :]

    def receive(self) -> dict[str, Any] | None:
        """The next message, or None at the end (the other process is gone)."""
        import json
        import os

        while b"\n" not in self.buffer:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError("malformed message on the wire")
        return message


class SolutionGone(RuntimeError):
    """The solution's process ended (exit, crash, kill) while the tests needed it."""


class Remote:
    """The tests' side of an object that lives in the solution's process.

    Forwards what code does *with* an object (attributes, calls, ``len``, iteration, items,
    ``in``, truth, ``str``/``repr``) and brings back plain data. Equality, ordering and
    hashing stay the default (identity): how a candidate's object compares is the
    candidate's to claim, so it is not asked.
    """

    __slots__ = ("_ask", "_ref")

    def __init__(self, ref: int, ask: Any) -> None:
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_ask", ask)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # special lookups (pickle, copy) are not forwarded
        return self._ask("getattr", self._ref, name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._ask("setattr", self._ref, name, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ask("call", self._ref, list(args), kwargs)

    def __len__(self) -> int:
        return self._ask("len", self._ref)

    def __iter__(self) -> Any:
        return self._ask("iter", self._ref)

    def __next__(self) -> Any:
        return self._ask("next", self._ref)

    def __getitem__(self, key: Any) -> Any:
        return self._ask("getitem", self._ref, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._ask("setitem", self._ref, key, value)

    def __contains__(self, item: Any) -> bool:
        return self._ask("contains", self._ref, item)

    def __bool__(self) -> bool:
        return self._ask("bool", self._ref)

    def __str__(self) -> str:
        return self._ask("str", self._ref)

    def __repr__(self) -> str:
        return self._ask("repr", self._ref)
