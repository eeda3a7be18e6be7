"""What training hands on: one record per trained seed, and the run's summary.

The trainer makes a `SeedRecord`; a study's trial ships it to the driver as JSON, and MLflow
tracking and the report read it back with `from_json`: one shape end to end. A seed whose
configuration failed before any result is a record with outcome `error`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from airsearch.stats import Rate, wilson
from airsearch.training.outcomes import CONVERGED, ERROR


@dataclass
class EvalRecord:
    """Handed to `on_eval` after every held-out evaluation."""

    step: int
    wall_s: float
    per_seed: list[dict[str, float]]


@dataclass
class SeedRecord:
    """One seed's result: its outcome, final metrics, time to converge and every evaluation."""

    seed: int
    outcome: str
    final: dict[str, float]
    steps_to_converge: int | None
    seconds_to_converge: float | None
    confusion: list[list[int]]  # held-out images, rows: true count, columns: inferred
    history: list[dict[str, float]] = field(default_factory=list)
    figure_path: str | None = None  # the seed's reconstruction.png (its figures' folder)
    diverged_at_step: int | None = None

    @classmethod
    def error(cls, seed: int) -> SeedRecord:
        return cls(seed=seed, outcome=ERROR, final={}, steps_to_converge=None,
                   seconds_to_converge=None, confusion=[])

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; numbers as floats, so a diverged seed's NaN survives."""
        out = asdict(self)
        out["final"] = _floats(self.final)
        out["history"] = [_floats(row) for row in self.history]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SeedRecord:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def rate_of(records: list[SeedRecord]) -> Rate:
    """The convergence rate: k converged of all n seeds (none dropped), Wilson interval."""
    return wilson(sum(r.outcome == CONVERGED for r in records), len(records))


@dataclass
class RunSummary:
    config: dict[str, Any]
    data: dict[str, Any]
    seeds: list[SeedRecord]
    rate: Rate
    outcome_counts: dict[str, int]
    steps: int
    wall_s: float
    status: str = "finished"
    git_commit: str = "unknown"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rate"] = {"k": self.rate.k, "n": self.rate.n, "value": self.rate.value,
                       "wilson_low": self.rate.low, "wilson_high": self.rate.high}
        return out


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
