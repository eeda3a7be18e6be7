"""What a study found, read back from MLflow: one row per complete configuration.

Reads only complete configurations (the parent runs the driver marked complete), so a
report taken while a study runs, or after it was killed, never shows half-logged rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from airsearch.evaluation.outcomes import ACCURACY
from airsearch.stats import ALPHA, NEGLIGIBLE, Comparison, Rate, can_tell, compare, wilson
from airsearch.study.mlflow_layout import (
    ALL_OUTCOMES,
    COMPLETE,
    CONFIG_ID,
    CONFUSION,
    ERROR_TAG,
    KIND,
    MODE,
    OVERRIDES,
    REFERENCE,
    STOPPED_EARLY,
    STORAGE,
    STUDY,
    TIMES,
    TRIAL_COUNT,
    VARIED,
)
from airsearch.survival import SeedTime, TimeToCount, kaplan_meier, logrank_p, seed_time


class StudyNotFound(LookupError):
    """No MLflow experiment holds a study of that name."""


@dataclass
class ConfigRow:
    """One configuration's result: k of n seeds converged, with its Wilson 95% interval."""

    config_id: str
    values: dict[str, Any]
    k: int
    n: int
    rate: float
    low: float
    high: float
    objective: float
    outcomes: dict[str, int]
    mean_steps_to_converge: float | None
    mean_seconds_to_converge: float | None
    error: str
    vs_reference: Comparison | None = None  # this rate minus the reference's; None for itself
    confusion: list[list[int]] | None = None  # true x inferred count, summed over its seeds
    times: list[SeedTime] | None = None  # per seed, when it first reached the threshold
    run_id: str = ""  # the configuration's parent run
    logrank_p: float = math.nan  # time to count against the reference's (log-rank)
    name: str = ""  # the parent run's name in MLflow
    threshold: float = math.nan  # eval.threshold its seeds were judged at
    stopped_early_at: int | None = None  # the step at which the study's scheduler stopped it

    @property
    def time_to_count(self) -> TimeToCount | None:
        return kaplan_meier(self.times) if self.times else None


@dataclass
class StudyReport:
    name: str
    mode: str
    varied: list[str]
    expected: int
    storage: str
    rows: list[ConfigRow]  # best first
    running: int
    reference: str = ""  # config id of the reference ('' when the study has none)

    @property
    def best(self) -> ConfigRow | None:
        return self.rows[0] if self.rows else None

    @property
    def reference_row(self) -> ConfigRow | None:
        return next((r for r in self.rows if r.config_id == self.reference), None)

    def verdict(self) -> str:
        """One line on what the tests against the reference can say."""
        ref = self.reference_row
        if ref is None:
            return ("no reference configuration complete: nothing tested" if self.reference
                    else "no reference configuration named: nothing tested")
        others = [r for r in self.rows if r is not ref]
        if others and not any(can_tell(r.n, ref.n) for r in others):
            return (f"too small to tell: with {ref.n} reference seeds even all vs none "
                    f"cannot reach p < {ALPHA}")
        found = [r.config_id for r in others
                 if r.vs_reference and r.vs_reference.verdict in ("better", "worse")]
        untold = sum(1 for r in others
                     if r.vs_reference and r.vs_reference.verdict == "too small to tell")
        text = (f"differs from the reference at p < {ALPHA} (Fisher): {', '.join(found)}"
                if found else f"no configuration differs from the reference at p < {ALPHA}")
        if untold:
            text += (f"; {untold} of {len(others)} too small to tell (their Newcombe interval "
                     f"allows a difference of {NEGLIGIBLE} or more)")
        return text


def experiment_of(client: MlflowClient, name: str) -> Any:
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.tags.get(STUDY) != name:
        known = ", ".join(study_names(client)) or "none yet"
        raise StudyNotFound(f"no study named {name!r} in this tracking store; studies: {known}")
    return experiment


def study_names(client: MlflowClient) -> list[str]:
    return [e.name for e in client.search_experiments(max_results=1000) if STUDY in e.tags]


def load_report(tracking_uri: str, name: str) -> StudyReport:
    """Collect every complete configuration of a study, best first (objective, then id)."""
    client = MlflowClient(tracking_uri)
    experiment = experiment_of(client, name)
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`{KIND}` = 'configuration'", max_results=50000)
    rows = [_row(run) for run in runs if run.data.tags.get(COMPLETE) == "1"]
    untimed = [row for row in rows if row.times is None]
    if untimed:  # logged before time to count was: read it off the seed runs' curves
        _times_from_seed_runs(client, experiment.experiment_id, untimed,
                              {run.info.run_id: run for run in runs})
    rows.sort(key=lambda r: (-r.objective, r.config_id))
    tags = experiment.tags
    reference = tags.get(REFERENCE, "")
    ref = next((r for r in rows if r.config_id == reference), None)
    if ref is not None:
        for row in rows:
            if row is not ref:
                row.vs_reference = compare(Rate(row.k, row.n, row.low, row.high),
                                           Rate(ref.k, ref.n, ref.low, ref.high))
                if row.times and ref.times:
                    row.logrank_p = logrank_p(row.times, ref.times)
    return StudyReport(name=name, mode=tags.get(MODE, "?"),
                       varied=[k for k in tags.get(VARIED, "").split(",") if k],
                       expected=int(tags.get(TRIAL_COUNT, 0)),
                       storage=tags.get(STORAGE, ""), rows=rows,
                       running=len(runs) - len(rows), reference=reference)


def _times_from_seed_runs(client: MlflowClient, experiment_id: str, rows: list[ConfigRow],
                          parents: dict[str, Any]) -> None:
    seeds = client.search_runs([experiment_id], f"tags.`{KIND}` = 'seed'", max_results=50000)
    for row in rows:
        threshold = float(parents[row.run_id].data.params.get("eval.threshold", "nan"))
        times = []
        for run in seeds:
            if run.data.tags.get(MLFLOW_PARENT_RUN_ID) != row.run_id:
                continue
            history = sorted(client.get_metric_history(run.info.run_id, ACCURACY),
                             key=lambda m: m.step)
            times.append(seed_time([{"step": m.step, ACCURACY: m.value} for m in history],
                                   ACCURACY, threshold))
        row.times = times or None


def _row(run: Any) -> ConfigRow:
    m, tags = run.data.metrics, run.data.tags
    k, n = int(m["converged"]), int(m["seeds_done"])
    rate = wilson(k, n)
    return ConfigRow(
        config_id=tags[CONFIG_ID], values=json.loads(tags.get(OVERRIDES, "{}")),
        k=k, n=n, rate=rate.value, low=rate.low, high=rate.high, objective=m["objective"],
        outcomes={o: int(m.get(f"outcome/{o}", 0)) for o in ALL_OUTCOMES
                  if m.get(f"outcome/{o}", 0)},
        mean_steps_to_converge=m.get("mean_steps_to_converge"),
        mean_seconds_to_converge=m.get("mean_seconds_to_converge"),
        error=tags.get(ERROR_TAG, "").split("\n")[0],
        confusion=json.loads(tags[CONFUSION]) if CONFUSION in tags else None,
        times=[SeedTime(reached, last) for reached, last in json.loads(tags[TIMES])]
        if TIMES in tags else None, run_id=run.info.run_id, name=run.info.run_name,
        threshold=float(run.data.params.get("eval.threshold", "nan")),
        stopped_early_at=int(tags[STOPPED_EARLY]) if STOPPED_EARLY in tags else None)


@dataclass
class InProgress:
    """A configuration still training, as its parent run's live metrics tell."""

    name: str
    config_id: str
    step: int  # the last evaluation reported
    steps: int  # the configuration's step budget
    rate: float  # share of its seeds converged so far
    low: float
    high: float
    started_ms: int


def load_progress(tracking_uri: str, name: str) -> list[InProgress]:
    """The study's configurations that have reported progress but are not complete."""
    client = MlflowClient(tracking_uri)
    experiment = experiment_of(client, name)
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`{KIND}` = 'configuration'", max_results=50000)
    found = []
    for run in runs:
        m = run.data.metrics
        if run.data.tags.get(COMPLETE) == "1" or "progress/convergence_rate" not in m:
            continue
        history = client.get_metric_history(run.info.run_id, "progress/convergence_rate")
        found.append(InProgress(
            name=run.info.run_name, config_id=run.data.tags.get(CONFIG_ID, "?"),
            step=max(point.step for point in history),
            steps=int(run.data.params.get("train.steps", 0)),
            rate=m["progress/convergence_rate"], low=m.get("progress/wilson_low", math.nan),
            high=m.get("progress/wilson_high", math.nan), started_ms=run.info.start_time))
    return found
