"""What training hands on: one record per trained seed, and the run's files.

The training loop makes a `SeedRecord`; a study's trial ships it to the driver as JSON, and
MLflow tracking and the report read it back with `from_json`: one shape end to end. A seed
whose configuration failed before any result is a record with outcome `error`. A run folder
holds metrics.jsonl (one row per seed and evaluation, appended) and summary.json (rewritten
atomically at every evaluation, so a killed run keeps everything recorded so far).
"""

from __future__ import annotations

import functools
import json
import math
import subprocess
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from airsearch.atomic import atomic_write
from airsearch.config import AIRConfig
from airsearch.evaluation import outcomes
from airsearch.evaluation.outcomes import CONVERGED, ERROR
from airsearch.stats import Rate, wilson


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
    stopped_at_step: int | None = None  # where a verdict took it out of training (eval.verdicts)

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


@dataclass
class EvalRecord:
    """Handed to `on_eval` after every held-out evaluation."""

    step: int
    wall_s: float
    per_seed: list[dict[str, float]]  # this evaluation's metrics of the seeds in training
    # Every seed begun so far, labelled as if training stopped here: a rate so far uses the
    # same rule as the final one.
    seeds: list[SeedRecord] = field(default_factory=list)


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


def append_metrics(out: Path, record: EvalRecord) -> None:
    """Add one evaluation's rows to OUT/metrics.jsonl."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.jsonl", "a") as f:
        for metrics in record.per_seed:
            f.write(json.dumps({"step": record.step, "wall_s": record.wall_s, **metrics}) + "\n")


def summarise(config: AIRConfig, data: dict[str, Any], results: list[SeedRecord], wall: float,
              status: str, out: Path | None) -> RunSummary:
    """The run's summary (status running or finished), written to OUT/summary.json."""
    counts = {name: 0 for name in outcomes.OUTCOMES}
    for result in results:
        counts[result.outcome] += 1
    summary = RunSummary(config=config.to_flat(), data=data, seeds=results,
                         rate=rate_of(results), outcome_counts=counts,
                         steps=config.train.steps, wall_s=wall, status=status,
                         git_commit=git_commit())
    if out is not None:
        with atomic_write(out / "summary.json") as f:
            f.write(json.dumps(summary.to_dict(), indent=2, default=_json_default).encode())
    return summary


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


@functools.cache  # summaries are rewritten at every evaluation; the commit does not change
def git_commit() -> str:
    """The commit of the code running, or 'unknown' outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
