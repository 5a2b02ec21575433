"""The eval gate's decision rule: does a candidate adapter replace the active one?

A pure function of two sets of numbers, so the rule can be read, tested and replayed apart
from the (slow) evaluation that produces them (``daemon/learning/evaluate.py``). The candidate must
*beat* the active adapter on the primary metric by at least ``margin`` — a tie keeps what
already serves, since every swap has a cost and a noisy eval set makes small wins luck —
and may regress on no other metric by more than ``tolerance``. A metric without data on
either side (an empty held-out slice) is reported and skipped, except the primary, which
must be measurable: no number, no promotion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

LABELED = "labeled_pass@1"
HELDOUT = "heldout_cascade_pass"
METRICS = (LABELED, HELDOUT)


class GateConfig(BaseModel):
    """When a candidate adapter is promoted automatically."""

    model_config = ConfigDict(extra="forbid")

    primary: Literal["labeled_pass@1", "heldout_cascade_pass"] = Field(
        LABELED,
        description=f"The metric a candidate must beat the active adapter on: {LABELED} "
        f"(greedy pass@1 on the labeled held-out set) or {HELDOUT} (rate at which its answers "
        "to held-out accepted prompts pass the cascade).",
    )
    margin: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Minimum improvement on the primary metric (absolute, rates in [0, 1]); a "
        "candidate must be strictly better even at 0.",
    )
    tolerance: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest drop allowed on any other metric (absolute).",
    )
    auto_promote: bool = Field(
        True,
        description="Promote a candidate that passes the gate (false: leave it a candidate "
        "for `selfdistill adapters promote`).",
    )


@dataclass(frozen=True)
class Check:
    metric: str
    candidate: float | None
    active: float | None
    delta: float | None
    passed: bool | None  # None: not measurable, skipped
    rule: str


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    primary: str
    checks: list[Check] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _number(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def decide(
    candidate: Mapping[str, float | None],
    active: Mapping[str, float | None],
    config: GateConfig,
) -> GateDecision:
    """Promote only if the primary metric improves by ``margin`` and nothing else regresses."""
    checks: list[Check] = []
    names = [config.primary, *sorted((set(candidate) | set(active)) - {config.primary})]
    for name in names:
        c, a = _number(candidate.get(name)), _number(active.get(name))
        primary = name == config.primary
        if c is None or a is None:
            checks.append(Check(name, c, a, None, None, "no data"))
            continue
        delta = c - a
        if primary:
            ok = delta > 0 and delta >= config.margin - 1e-12
            rule = f"must improve by >= {config.margin:g} (and > 0)"
        else:
            ok = delta >= -config.tolerance - 1e-12
            rule = f"may drop by <= {config.tolerance:g}"
        checks.append(Check(name, c, a, delta, ok, rule))

    first = checks[0]
    if first.passed is None:
        return GateDecision(
            False, f"{config.primary} could not be measured: no promotion", config.primary, checks
        )
    if not first.passed:
        reason = (
            f"{config.primary} {first.candidate:.3f} vs active {first.active:.3f} "
            f"(delta {first.delta:+.3f}) does not beat it by {config.margin:g}"
        )
        return GateDecision(False, reason, config.primary, checks)
    regressions = [c for c in checks[1:] if c.passed is False]
    if regressions:
        worst = ", ".join(
            f"{c.metric} {c.candidate:.3f} vs {c.active:.3f} ({c.delta:+.3f})" for c in regressions
        )
        return GateDecision(
            False,
            f"regresses beyond tolerance {config.tolerance:g}: {worst}",
            config.primary,
            checks,
        )
    return GateDecision(
        True,
        f"{config.primary} {first.candidate:.3f} vs active {first.active:.3f} "
        f"(delta {first.delta:+.3f}); no regression beyond {config.tolerance:g}",
        config.primary,
        checks,
    )
