"""The transformers engine on a tiny random Llama, and on the real embedded SmolLM2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from adapters.files import (
    AdapterFileError,
    adapter_digest,
    check_adapter_files,
    resolve_in_registry,
)
from daemon.engines.base import AdapterLoadError, ChatRequest, EngineError
from daemon.engines.transformers_engine import TransformersEngine

Q = [{"role": "user", "content": "What is 2 + 2?"}]


def _greedy(engine: TransformersEngine, adapter: str | None = None, messages=Q) -> str:
    return (
        engine.generate([ChatRequest(messages, max_tokens=8, adapter=adapter)])[0]
        .completions[0]
        .text
    )


def test_batched_sampling_returns_n_per_request_in_order(tiny_engine: TransformersEngine) -> None:
    reqs = [
        ChatRequest(Q, n=3, temperature=0.9, top_p=0.95, max_tokens=6, seed=7),
        ChatRequest(
            [
                {
                    "role": "user",
                    "content": "A much longer question that the batch must pad on the left, with many more words?",
                }
            ],
            n=3,
            temperature=0.9,
            top_p=0.95,
            max_tokens=6,
            seed=7,
        ),
        ChatRequest(Q, n=1, max_tokens=4),  # another group: greedy
    ]
    out = tiny_engine.generate(reqs)
    assert [len(r.completions) for r in out] == [3, 3, 1]
    assert out[0].prompt_tokens < out[1].prompt_tokens  # each prompt's own length, not padded
    assert all(c.tokens <= 6 for r in out[:2] for c in r.completions)
    assert len({c.text for c in out[0].completions}) > 1  # sampled, not copies
    # Left padding must not change what a prompt generates: same as when run alone.
    alone = tiny_engine.generate([ChatRequest(Q, n=1, max_tokens=4)])[0]
    assert alone.completions[0].text == out[2].completions[0].text
    # Same seed, same samples.
    again = tiny_engine.generate(reqs[:2])
    assert [c.text for c in again[0].completions] == [c.text for c in out[0].completions]


def test_first_token_logprobs_when_asked(tiny_engine: TransformersEngine) -> None:
    res = tiny_engine.generate([ChatRequest(Q, max_tokens=1, logprobs=5)])[0]
    top = res.completions[0].top_logprobs
    assert top is not None and 1 <= len(top) <= 5
    assert all(v <= 0 for v in top.values())
    # The greedy token is the most likely one.
    assert res.completions[0].text == "" or max(top, key=top.get).strip() in res.completions[0].text
    assert (
        tiny_engine.generate([ChatRequest(Q, max_tokens=1)])[0].completions[0].top_logprobs is None
    )


def test_several_adapters_on_one_base(
    tiny_engine: TransformersEngine, tiny_adapters: dict[str, Path]
) -> None:
    base = _greedy(tiny_engine)
    for name, path in tiny_adapters.items():
        tiny_engine.load_adapter(name, str(path))
    assert sorted(tiny_engine.adapters()) == sorted(tiny_adapters)
    names = list(tiny_adapters)
    mixed = tiny_engine.generate(
        [ChatRequest(Q, max_tokens=8, adapter=a) for a in (None, names[0], names[1], None)]
    )
    texts = [r.completions[0].text for r in mixed]
    assert texts[0] == texts[3] == base  # the base is untouched by loaded adapters
    assert texts[1] != base and texts[2] != base and texts[1] != texts[2]
    assert [r.adapter for r in mixed] == [None, names[0], names[1], None]
    with pytest.raises(AdapterLoadError, match="immutable"):
        tiny_engine.load_adapter(names[0], str(tiny_adapters[names[0]]))
    tiny_engine.unload_adapter(names[0])
    assert _greedy(tiny_engine, names[1]) == texts[2]
    tiny_engine.unload_adapter(names[1])
    assert tiny_engine.adapters() == [] and _greedy(tiny_engine) == base
    with pytest.raises(EngineError, match="not loaded"):
        _greedy(tiny_engine, names[0])


def test_corrupt_and_pickle_adapters_are_refused_and_the_old_one_keeps_serving(
    tiny_engine: TransformersEngine, tiny_adapters: dict[str, Path], tmp_path: Path
) -> None:
    good_name, good = next(iter(tiny_adapters.items()))
    tiny_engine.load_adapter(good_name, str(good))
    before = _greedy(tiny_engine, good_name)

    corrupt = tmp_path / "corrupt"
    shutil.copytree(good, corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(AdapterLoadError):
        tiny_engine.load_adapter("corrupt", str(corrupt))

    pickled = tmp_path / "pickled"
    shutil.copytree(good, pickled)
    (pickled / "adapter_model.bin").write_bytes(b"not loaded, ever")
    with pytest.raises(AdapterLoadError, match="pickle"):
        tiny_engine.load_adapter("pickled", str(pickled))

    assert tiny_engine.adapters() == [good_name]
    assert _greedy(tiny_engine, good_name) == before


def test_adapter_files_rules(
    tiny_adapters: dict[str, Path], registry_dir: Path, tmp_path: Path
) -> None:
    path = next(iter(tiny_adapters.values()))
    check_adapter_files(path)
    digest = adapter_digest(path)
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    assert adapter_digest(copy) == digest  # content, not location
    (copy / "adapter_config.json").write_text((copy / "adapter_config.json").read_text() + " ")
    assert adapter_digest(copy) != digest
    assert resolve_in_registry(registry_dir, path.name) == path.resolve()
    for escape in ("../outside", "/etc", str(tmp_path)):
        with pytest.raises(AdapterFileError, match="outside"):
            resolve_in_registry(registry_dir, escape)
    link = registry_dir / "sneaky-link"
    link.symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(AdapterFileError, match="outside"):
        resolve_in_registry(registry_dir, "sneaky-link")


def test_embedded_smollm2_answers_through_its_chat_template(embedded_model_dir: Path) -> None:
    engine = TransformersEngine(embedded_model_dir)
    try:
        assert engine.model_name == "SmolLM2-135M-Instruct"
        res = engine.generate(
            [
                ChatRequest(
                    [{"role": "user", "content": "What is the capital of France?"}], max_tokens=16
                )
            ]
        )[0]
        text = res.completions[0].text
        assert "Paris" in text, text  # the real weights, the real chat template
        assert res.prompt_tokens > 10  # the template's system turn is there too
    finally:
        engine.close()


def test_greedy_with_n_gives_n_identical_samples(tiny_engine: TransformersEngine) -> None:
    res = tiny_engine.generate([ChatRequest(Q, n=3, max_tokens=5)])[0]
    assert len(res.completions) == 3 and len({c.text for c in res.completions}) == 1
