"""The package layout holds: imports flow one way, and no module imports itself round a circle.

Read from the source. The flow counts every ``import``, those under ``TYPE_CHECKING`` and
inside functions too, so a lazy or typing-only import cannot hide an edge that points back
up; a circle counts every import that runs (inside functions too, not ``TYPE_CHECKING``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("daemon", "streams", "adapters")

# What each layer may import besides itself: operating composes the stages; a stage uses the
# ones below it (learning reads what verify stores and measures the verifier with serve's
# sampling; serve's 'verified' answer policy runs the cascade); every stage runs on engines;
# streams and adapters are libraries that know nothing of the daemon or of each other.
LIBRARIES = {"streams", "adapters"}
ALLOWED: dict[str, set[str]] = {
    "daemon.operating": {
        "daemon.learning",
        "daemon.serving",
        "daemon.verifying",
        "daemon.engines",
        "daemon",
    }
    | LIBRARIES,
    "daemon.learning": {"daemon.serving", "daemon.verifying", "daemon.engines", "daemon"}
    | LIBRARIES,
    "daemon.serving": {"daemon.verifying", "daemon.engines", "daemon"} | LIBRARIES,
    "daemon.verifying": {"daemon.engines", "daemon"} | LIBRARIES,
    "daemon.engines": {"daemon"} | LIBRARIES,
    "daemon": set(),
    "streams": set(),
    "adapters": set(),
}
MAX_LINES = 750  # about 600: past this a module has grown a seam to split at


def modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "daemon" and len(parts) > 1 and f"daemon.{parts[1]}" in ALLOWED:
        return f"daemon.{parts[1]}"
    return parts[0]


def _typing_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def imports(path: Path, module: str, known: set[str], *, typing: bool = True) -> set[str]:
    """The project modules ``path`` imports (a ``from pkg import name`` of a submodule counts
    as importing that submodule); ``typing=False`` leaves out ``TYPE_CHECKING`` imports."""
    out: set[str] = set()
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    skip = set() if typing else _typing_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_pkg else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def graph(*, typing: bool = True) -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, m, set(mods), typing=typing) for m, p in mods.items()}


def test_the_tree_is_the_one_this_test_knows() -> None:
    found = {layer(m) for m in modules()}
    assert found == set(ALLOWED), f"a package this test does not place: {found ^ set(ALLOWED)}"


def test_imports_flow_one_way() -> None:
    wrong = [
        f"{m} imports {dep}"
        for m, deps in graph().items()
        for dep in sorted(deps)
        if layer(dep) != layer(m) and layer(dep) not in ALLOWED[layer(m)]
    ]
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)


def circles(g: dict[str, set[str]]) -> list[str]:
    """Every import circle a depth-first walk of ``g`` meets, as ``a -> b -> a``."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []
    found: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(g.get(m, ())):
            if state.get(dep) == 1:
                found.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    return found


def test_no_import_circles() -> None:
    found = circles(graph(typing=False))
    assert not found, "import circles:\n" + "\n".join(found)


def test_the_reader_sees_lazy_relative_and_typing_only_imports(tmp_path: Path) -> None:
    # The checks above pass vacuously if the reader misses an import: show it sees each kind.
    path = tmp_path / "mod.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "import pkg.a\n"
        "from pkg import b\n"
        "from .c import thing\n"
        "if TYPE_CHECKING:\n"
        "    from pkg.d import Type\n"
        "def f():\n"
        "    from pkg.e import g\n"
    )
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.e", "pkg.mod"}
    every = imports(path, "pkg.mod", known)
    assert every == {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.e"}
    assert imports(path, "pkg.mod", known, typing=False) == every - {"pkg.d"}


def test_a_circle_is_found_and_a_chain_is_not() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


@pytest.mark.parametrize("module", sorted(modules()))
def test_modules_stay_readable(module: str) -> None:
    lines = len(modules()[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines: split it where a seam is natural"
