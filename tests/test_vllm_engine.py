"""What of the vLLM engine can be checked without vLLM: the import guard and the id rules.

Everything else in the module is a thin translation into vLLM calls that only a GPU machine
with vLLM installed can exercise; a fake ``LLM`` here would only test the fake.
"""

from __future__ import annotations

import importlib.util
import itertools

import pytest

from daemon.engines.base import AdapterLoadError, EngineError
from daemon.engines.vllm_engine import LoraIds, VllmEngine

no_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None, reason="vllm is installed here"
)


@no_vllm
def test_constructing_without_vllm_names_the_extra() -> None:
    with pytest.raises(EngineError, match=r"selfdistill\[vllm\]"):
        VllmEngine("x")


def test_ids_start_at_one_and_strictly_increase() -> None:
    ids = LoraIds()
    got = [ids.allocate(f"v{i}", f"/r/v{i}") for i in range(5)]
    assert got[0] == 1  # vLLM rejects ids below 1
    assert all(a < b for a, b in itertools.pairwise(got))
    assert ids.loaded() == [f"v{i}" for i in range(5)]


def test_a_loaded_name_is_refused() -> None:
    ids = LoraIds()
    ids.allocate("v1", "/r/v1")
    with pytest.raises(AdapterLoadError, match="already loaded"):
        ids.allocate("v1", "/r/v1")
    assert ids.loaded() == ["v1"]


def test_a_name_loads_again_after_unload_under_a_fresh_id() -> None:
    """A rollback to an evicted version loads the same name again; vLLM caches by id, so
    the id is new (the files are read again) and no id is ever recycled."""
    ids = LoraIds()
    first = ids.allocate("v1", "/r/v1")
    second = ids.allocate("v2", "/r/v2")
    assert ids.release("v1") == first
    assert "v1" not in ids
    assert ids.loaded() == ["v2"]
    again = ids.allocate("v1", "/r/v1")
    assert again > second > first
    assert sorted(ids.loaded()) == ["v1", "v2"]
    # Releasing everything does not reset the counter either.
    ids.release("v1")
    ids.release("v2")
    assert ids.allocate("v4", "/r/v4") > again


def test_a_used_name_from_another_path_is_refused() -> None:
    """One name is one set of weights: another directory under a used name is refused, and
    the refusal consumes no id."""
    ids = LoraIds()
    first = ids.allocate("v1", "/r/v1")
    ids.release("v1")
    with pytest.raises(AdapterLoadError, match="needs a new name"):
        ids.check("v1", "/elsewhere/v1")
    with pytest.raises(AdapterLoadError, match="needs a new name"):
        ids.allocate("v1", "/elsewhere/v1")
    assert ids.allocate("v2", "/r/v2") == first + 1


def test_releasing_an_unknown_name_is_an_engine_error() -> None:
    ids = LoraIds()
    with pytest.raises(EngineError, match="not loaded"):
        ids.release("nope")
    ids.allocate("v1", "/r/v1")
    ids.release("v1")
    with pytest.raises(EngineError, match="not loaded"):
        ids.release("v1")
