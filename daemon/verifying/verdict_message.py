"""A prompt's outcome as it travels: the cascade's ``PromptOutcome`` as a ``verdicts`` message.

Verify publishes, the store writer materialises; between them is the wire schema
(``streams.schemas.VerdictMessage``), which the streams layer defines without knowing the
cascade. Its candidate, stage and call models carry the cascade's own field names, so the
translation is pydantic reading the dataclasses' attributes, and the store writer records
a message's candidates as they are (``Store.record_many`` takes either form): what the store
writes from a message is exactly what the cascade decided.
"""

from __future__ import annotations

from daemon.verifying.cascade import PromptOutcome
from streams.schemas import CandidatesMessage, VerdictCandidate, VerdictMessage


def to_verdict(
    outcome: PromptOutcome,
    message: CandidatesMessage,
    *,
    policy: str,
    judge_adapter: str | None = None,
    judged_at: float | None = None,
) -> VerdictMessage:
    """The message verify publishes for one judged prompt."""
    extra = {} if judged_at is None else {"judged_at": judged_at}
    return VerdictMessage(
        id=message.id,
        question=outcome.question,
        candidates=message,
        policy=policy,  # type: ignore[arg-type]  # validated by the schema
        judge_adapter=judge_adapter,
        outcomes=[
            VerdictCandidate.model_validate(c, from_attributes=True) for c in outcome.candidates
        ],
        **extra,
    )
