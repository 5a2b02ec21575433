"""Is the engine usable? The small request a worker asks before it blames a record.

Workers never dead-letter a record for the engine's sake (``streams.handling``): a record
is at fault only when it fails while the engine is shown healthy. This probe is how it is
shown when no other record of the batch succeeded: one short generation on the base
model. It is also asked at start, so a misconfigured model server (a rotated API key, a
``model.name`` the server does not serve) is named on ``/readyz`` before any prompt
arrives, and while a worker waits, so it notices the engine back without traffic.

An engine that knows more than "it generates" says so in a ``check()`` of its own: the
HTTP engine lists the server's models first, so the operator reads "the model server does
not serve `X`; it serves [...]" rather than a bare 404.
"""

from __future__ import annotations

from daemon.engines.base import ChatRequest, Engine

#: One token on the base model: cheap on any engine, and it runs the whole path.
PROBE = ChatRequest([{"role": "user", "content": "Reply with OK."}], max_tokens=1)


def probe(engine: Engine) -> None:
    """Raise unless ``engine`` answers a one-token request (its ``check()`` when it has one)."""
    check = getattr(engine, "check", None)
    if callable(check):
        check()
        return
    engine.generate([PROBE])
