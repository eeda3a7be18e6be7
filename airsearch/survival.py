"""Time to count as survival data: when did each seed first reach the threshold?

A rate says how many seeds learnt to count; it cannot say which configuration gets there
sooner. Each seed gives one time: the training step of its first held-out evaluation at
eval.threshold (an event), or, for a seed that never reached it, the last step it was
evaluated at (censored: it stopped undecided, was decided collapsed, diverged or ran out of
steps). The Kaplan-Meier estimate of the share that has reached the threshold by each step,
its median with a 95% interval, and a log-rank test between two configurations come from
scipy (`stats.ecdf` on `CensoredData`, `stats.logrank`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class SeedTime:
    """One seed: the step it first reached the threshold (None: never) and its last step."""

    reached: int | None
    last: int


def seed_time(history: Sequence[dict[str, float]], metric: str, threshold: float) -> SeedTime:
    """From a seed's evaluations (rows with "step" and `metric`), in order."""
    steps = [int(row["step"]) for row in history]
    hit = next((int(row["step"]) for row in history
                if math.isfinite(row.get(metric, math.nan)) and row[metric] >= threshold), None)
    return SeedTime(hit, max(steps) if steps else 0)


@dataclass(frozen=True)
class TimeToCount:
    """Kaplan-Meier estimate over one configuration's seeds."""

    steps: list[float]       # where the estimate changes
    reached: list[float]     # share of seeds at the threshold by each of those steps
    low: list[float]         # pointwise 95% interval of that share
    high: list[float]
    median: float | None     # first step by which half the seeds reached it (None: not yet)
    median_low: float | None
    median_high: float | None  # None: the interval is open above
    events: int
    n: int

    def share_by(self, step: float) -> float:
        """The estimated share of seeds at the threshold by `step`."""
        share = 0.0
        for s, r in zip(self.steps, self.reached, strict=True):
            if s <= step:
                share = r
        return share

    def median_text(self) -> str:
        if self.median is None:
            return "not reached"
        low = "-" if self.median_low is None else f"{self.median_low:.0f}"
        high = "open" if self.median_high is None else f"{self.median_high:.0f}"
        return f"{self.median:.0f} [{low}, {high}]"


def _data(times: Sequence[SeedTime]) -> stats.CensoredData:
    return stats.CensoredData(uncensored=[t.reached for t in times if t.reached is not None],
                              right=[t.last for t in times if t.reached is None])


def kaplan_meier(times: Sequence[SeedTime]) -> TimeToCount:
    events = sum(t.reached is not None for t in times)
    if events == 0:  # nothing reached: the estimate stays at 0 (scipy needs an event)
        last = float(max((t.last for t in times), default=0))
        return TimeToCount([last], [0.0], [0.0], [0.0], None, None, None, 0, len(times))
    result = stats.ecdf(_data(times))
    sf = result.sf
    with warnings.catch_warnings():  # undefined where every seed at risk has reached it
        warnings.simplefilter("ignore", RuntimeWarning)
        interval = sf.confidence_interval(method="log-log")
    steps = [float(s) for s in sf.quantiles]
    reached = [1.0 - float(p) for p in sf.probabilities]
    # The share's interval is the survival function's, turned over; where it is undefined
    # (every seed still at risk reached the threshold there) it is the estimate itself.
    low = _defined([1.0 - float(p) for p in interval.high.probabilities], reached)
    high = _defined([1.0 - float(p) for p in interval.low.probabilities], reached)

    def first(shares: list[float]) -> float | None:
        return next((s for s, r in zip(steps, shares, strict=True) if r >= 0.5), None)

    return TimeToCount(steps, reached, low, high, first(reached), first(high), first(low),
                       events, len(times))


def _defined(bounds: list[float], estimate: list[float]) -> list[float]:
    return [b if math.isfinite(b) else e for b, e in zip(bounds, estimate, strict=True)]


def logrank_p(a: Sequence[SeedTime], b: Sequence[SeedTime]) -> float:
    """Two-sided log-rank p-value that `a` and `b` reach the threshold at the same pace (nan
    where nothing can be tested: no seed in one, or no event in either)."""
    if not a or not b or not any(t.reached is not None for t in [*a, *b]):
        return math.nan
    p = float(stats.logrank(_data(a), _data(b)).pvalue)
    return 1.0 if math.isnan(p) else p  # nan: no variance, both at identical steps

