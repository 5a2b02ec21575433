"""A scripted judge engine for the cascade's unit tests.

The one place a stand-in is right: these tests check the cascade's logic (unanimity, early
exit, policies, parsing), not a model. Integration tests use a real model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from daemon.engines.base import ChatRequest, ChatResult, Completion

Rule = Callable[[ChatRequest], str]


class ScriptedJudge:
    """Answers each request with ``rule(request)`` for every one of its ``n`` samples.

    ``calls`` records every request, and ``batches`` every generate() call, so tests can
    assert exactly which judge calls the cascade made.
    """

    model_name = "scripted-judge"

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.calls: list[ChatRequest] = []
        self.batches: list[int] = []
        self._count = 0

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        self.batches.append(len(requests))
        out = []
        for r in requests:
            self.calls.append(r)
            comps = []
            for _ in range(r.n):
                self._count += 1
                text = self.rule(r)
                comps.append(Completion(text, len(text.split()), "stop"))
            out.append(ChatResult(comps, prompt_tokens=len(str(r.messages).split())))
        return out

    def load_adapter(self, name: str, path: str) -> None:  # pragma: no cover - unused
        raise NotImplementedError

    def unload_adapter(self, name: str) -> None:  # pragma: no cover - unused
        raise NotImplementedError

    def adapters(self) -> list[str]:
        return []

    def close(self) -> None:
        pass


def prompt_text(r: ChatRequest) -> str:
    return "\n".join(m["content"] for m in r.messages)


def is_infer(r: ChatRequest) -> bool:
    return "most likely responds to" in prompt_text(r)


def stage_of(r: ChatRequest) -> str:
    t = prompt_text(r)
    if is_infer(r):
        return "infer"
    if "compare two questions" in t:
        return "cycle"
    if "impartial reviewer" in t:
        return "factuality"
    return "correctness"
