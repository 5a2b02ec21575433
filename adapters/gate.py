"""The eval gate's decision rule: does a candidate adapter replace the active one?

A pure function of per-item scores, so the rule can be read, tested and replayed apart
from the (slow) evaluation that produces them (``daemon/learning/evaluate.py``).

The candidate and the active adapter answer the *same* items, so the rule compares them
item by item (paired): on each item both were scored, the difference is +1 (only the
candidate right), -1 (only the active) or 0. The mean difference is the improvement, and
its uncertainty comes from a paired bootstrap of those differences at ``level`` (95% by
default). Pairing matters: on 200 items two adapters that agree on most of them differ
far less by chance than two independent 200-item scores would.

* **Promote** only when the interval's *lower* bound clears ``margin`` (and is above 0):
  8 items cannot show a 2-point gain, so on 8 items a lucky 0.500 against 0.375 is held
  back. A tie keeps what serves, since every swap has a cost.
* **No regression**: on every other metric, a drop larger than ``tolerance`` whose interval
  excludes 0 (the drop is real, not noise) rejects the candidate. A noisy secondary metric
  on a few items can neither promote nor block a candidate by chance.
* A metric without data on either side (an empty held-out slice) is reported and skipped,
  except the primary, which must be measurable: no number, no promotion.
* Some item sets can never show the margin: :func:`min_wins` is the smallest number of
  items the candidate must win (losing none) to pass; when the active adapter fails fewer
  items than that, the decision says the gate cannot pass on these items, rather than
  rejecting every candidate without saying why.

The bootstrap resamples counts of the distinct differences (a multinomial draw, which is
exactly resampling the items), from a fixed seed: the same scores always give the same
interval and the same decision, and a replay of a stored decision agrees with it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

LABELED = "labeled_pass@1"
HELDOUT = "heldout_cascade_pass"
METRICS = (LABELED, HELDOUT)

#: One metric's per-item scores: item id -> score in [0, 1] (1.0 passed, 0.0 failed).
Items = Mapping[str, float]


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
        description="Minimum improvement on the primary metric (absolute, rates in [0, 1]) "
        "that the LOWER bound of the paired interval must clear; a candidate must be "
        "strictly better even at 0.",
    )
    tolerance: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest drop allowed on any other metric (absolute); a larger drop "
        "rejects when its interval excludes 0.",
    )
    level: float = Field(
        0.95,
        gt=0.5,
        lt=1,
        description="Confidence level of the paired bootstrap interval of each metric's "
        "difference (two-sided: at 0.95 the lower bound is the 2.5th percentile).",
    )
    resamples: int = Field(
        10_000, ge=200, le=1_000_000, description="Bootstrap resamples per interval."
    )
    auto_promote: bool = Field(
        True,
        description="Promote a candidate that passes the gate (false: leave it a candidate "
        "for `selfdistill adapters promote`).",
    )


@dataclass(frozen=True)
class Check:
    metric: str
    candidate: float | None  # the candidate's score on the paired items
    active: float | None
    delta: float | None  # mean paired difference, candidate - active
    passed: bool | None  # None: not measurable, skipped
    rule: str
    items: int = 0  # items both were scored on
    low: float | None = None  # the interval of delta at `level`
    high: float | None = None
    level: float | None = None
    wins: int = 0  # items only the candidate got right
    losses: int = 0  # items only the active got right


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    primary: str
    checks: list[Check] = field(default_factory=list)
    #: How much evidence the primary's items can give: {items, min_wins, can_win, can_pass}.
    resolution: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def paired_interval(
    deltas: Sequence[float], level: float, resamples: int, seed: int = 0
) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``deltas`` at ``level``.

    Resampling n items with replacement is a multinomial draw of how often each distinct
    value appears, so the interval depends only on the counts (not on the items' order) and
    costs one draw per resample whatever n is.
    """
    if not deltas:
        raise ValueError("no paired items")
    counts = Counter(float(d) for d in deltas)
    values = np.array(list(counts))
    probs = np.array([counts[v] for v in counts], dtype=float) / len(deltas)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(deltas), probs, size=resamples)
    means = draws @ values / len(deltas)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def min_wins(n: int, margin: float, level: float, resamples: int) -> int | None:
    """The fewest items a candidate must win out of ``n`` (losing none) for the lower bound
    to clear ``margin``: what the item set can show at best. None: not even n wins."""
    if n <= 0:
        return None
    lo, hi = 1, n
    if not _clears(n, n, margin, level, resamples):
        return None
    while lo < hi:  # the lower bound grows with the wins: bisect
        mid = (lo + hi) // 2
        if _clears(mid, n, margin, level, resamples):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _clears(wins: int, n: int, margin: float, level: float, resamples: int) -> bool:
    low, _ = paired_interval([1.0] * wins + [0.0] * (n - wins), level, resamples)
    return _improves(low, margin)


def _improves(low: float, margin: float) -> bool:
    return low > 0 and low >= margin - 1e-12


def _paired(cand: Items, act: Items) -> tuple[list[str], list[float], list[float]]:
    ids = sorted(set(cand) & set(act))
    return ids, [float(cand[i]) for i in ids], [float(act[i]) for i in ids]


def _check(
    name: str, cand: Items | None, act: Items | None, primary: bool, config: GateConfig
) -> Check:
    if not cand or not act:
        return Check(name, _mean(cand), _mean(act), None, None, "no data")
    ids, c, a = _paired(cand, act)
    if not ids:
        return Check(name, _mean(cand), _mean(act), None, None, "no items scored by both")
    deltas = [x - y for x, y in zip(c, a, strict=True)]
    delta = sum(deltas) / len(deltas)
    low, high = paired_interval(deltas, config.level, config.resamples)
    pct = f"{config.level:.0%}"
    if primary:
        ok = _improves(low, config.margin)
        rule = f"lower {pct} bound must clear {config.margin:g} (and 0)"
    else:
        ok = not (delta < -config.tolerance - 1e-12 and high < 0)
        rule = f"may not drop by > {config.tolerance:g} with the {pct} interval below 0"
    return Check(
        name,
        sum(c) / len(c),
        sum(a) / len(a),
        delta,
        ok,
        rule,
        items=len(ids),
        low=low,
        high=high,
        level=config.level,
        wins=sum(1 for d in deltas if d > 0),
        losses=sum(1 for d in deltas if d < 0),
    )


def _mean(items: Items | None) -> float | None:
    if not items:
        return None
    return sum(float(v) for v in items.values()) / len(items)


def _interval(c: Check) -> str:
    return f"delta {c.delta:+.3f}, {c.level:.0%} interval [{c.low:+.3f}, {c.high:+.3f}]"


def decide(
    candidate: Mapping[str, Items | None],
    active: Mapping[str, Items | None],
    config: GateConfig,
) -> GateDecision:
    """Promote only if the primary's paired lower bound clears ``margin`` and no other metric
    shows a real drop beyond ``tolerance``."""
    names = [config.primary, *sorted((set(candidate) | set(active)) - {config.primary})]
    checks = [
        _check(name, candidate.get(name), active.get(name), name == config.primary, config)
        for name in names
    ]
    first = checks[0]
    p = config.primary
    if first.passed is None:
        return GateDecision(False, f"{p} could not be measured: no promotion", p, checks)
    resolution = _resolution(first, active.get(p) or {}, config)
    shown = (
        f"{p} {first.candidate:.3f} vs active {first.active:.3f} on {first.items} items "
        f"({first.wins} won, {first.losses} lost; {_interval(first)})"
    )
    if not first.passed:
        reason = f"{shown}: the lower bound does not clear {config.margin:g}"
        if not resolution["can_pass"]:
            reason += f"; {resolution['why']}"
        return GateDecision(False, reason, p, checks, resolution)
    regressions = [c for c in checks[1:] if c.passed is False]
    if regressions:
        worst = ", ".join(
            f"{c.metric} {c.candidate:.3f} vs {c.active:.3f} ({_interval(c)})" for c in regressions
        )
        return GateDecision(
            False,
            f"regresses beyond tolerance {config.tolerance:g}: {worst}",
            p,
            checks,
            resolution,
        )
    return GateDecision(
        True, f"{shown}; no real regression beyond {config.tolerance:g}", p, checks, resolution
    )


def _resolution(first: Check, active: Items, config: GateConfig) -> dict[str, object]:
    """What the primary's items can show: the fewest wins that would pass, and whether the
    active adapter fails enough items for a candidate to win that many."""
    n = first.items
    need = min_wins(n, config.margin, config.level, config.resamples)
    can_win = n - round((first.active or 0.0) * n)  # items the active fails
    can_pass = need is not None and need <= can_win
    if need is None:
        why = (
            f"the gate cannot pass on {n} items: even winning all of them leaves the lower "
            f"bound under {config.margin:g}"
        )
    elif not can_pass:
        why = (
            f"the gate cannot pass on these {n} items: a candidate must win at least {need} "
            f"(losing none) and the active adapter fails only {can_win}; score more items "
            "(train.eval.labeled_max / labeled_set)"
        )
    else:
        why = f"a candidate must win at least {need} of {n} items (losing none) to pass"
    return {"items": n, "min_wins": need, "can_win": can_win, "can_pass": can_pass, "why": why}
