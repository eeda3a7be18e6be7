"""The one writer of a study's MLflow records (layout: airsearch.study.mlflow_layout), run by
the driver alone. Workers never touch MLflow: concurrent
first writes to a sqlite store race, and a worker's cwd would become the artifact root.

Seed runs are live: they are created at a configuration's first evaluation and receive each
evaluation as the driver hears of it, so a long study can be watched seed by seed.

Logging is idempotent so that a resumed study counts every configuration once: parent runs
are keyed by configuration id and seed runs by (configuration, seed); each seed run records
the last step it holds and only later steps are added, so a configuration trained again after
a crash continues the same runs. A parent is marked complete only after its children are
finished, and a rerun of a complete configuration (a trial Ray replays after the driver was
killed) is skipped.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from airsearch.config import ConfigError
from airsearch.evaluation.outcomes import ACCURACY, ERROR
from airsearch.study.mlflow_layout import (
    ALL_OUTCOMES,
    BEST,
    COMPLETE,
    CONFIG_ID,
    CONFIGURATION,
    CONFUSION,
    CURVES_VIEW,
    ERROR_TAG,
    EXPERIMENT_KIND,
    KIND,
    LAST_STEP,
    MODE,
    OUTCOME,
    OVERRIDES,
    PLACEMENT,
    RATES_VIEW,
    REFERENCE,
    RUNNING,
    SEED,
    SET_ASIDE,
    SHARE_REACHED,
    STOPPED_EARLY,
    STORAGE,
    STUDY,
    TIMES,
    TRIAL_COUNT,
    TRIAL_ID,
    VARIED,
    WALL,
    artifact_location,
    curves_view,
    provenance,
    rates_view,
    run_name,
)
from airsearch.study.space import overrides_from_params
from airsearch.study.spec import StudySpec
from airsearch.study.trial import decode_artifacts, seeds_of
from airsearch.survival import TimeToCount, kaplan_meier, seed_time
from airsearch.training.records import SeedRecord

BATCH = 900  # MLflow's log_batch takes at most 1000 metrics


@dataclass
class SeedRun:
    """A seed's MLflow run and the last evaluation step it holds."""

    run_id: str
    last_step: int


SHOWN_DIGITS = 3  # decimals of the rates and Wilson bounds in MLflow's tables


class StudyTracker:
    """Reads and writes one study's experiment."""

    def __init__(self, tracking_uri: str, spec: StudySpec) -> None:
        self.uri = tracking_uri
        self.spec = spec
        self.name = spec.name
        self.client = MlflowClient(tracking_uri)
        self._parents: dict[str, str] = {}
        self._seeds: dict[str, dict[int, SeedRun]] = {}  # config id -> seed -> its run
        experiment = self.client.get_experiment_by_name(spec.name)
        tags = {STUDY: spec.name, MODE: spec.mode, "airsearch.spec": spec.path,
                STORAGE: spec.storage, VARIED: ",".join(spec.varied),
                TRIAL_COUNT: str(spec.trial_count),
                "airsearch.seeds": str(len(spec.seeds)),
                REFERENCE: spec.reference_id, EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1],
                "mlflow.note.content": spec.question or spec.name}
        tags[f"mlflow.sharedViewState.{RATES_VIEW}"] = rates_view(spec.varied)
        tags[f"mlflow.sharedViewState.{CURVES_VIEW}"] = curves_view()
        if experiment is None:
            self.experiment_id = self.client.create_experiment(
                spec.name, artifact_location=artifact_location(tracking_uri), tags=tags)
        else:
            self.experiment_id = experiment.experiment_id
            for key, value in tags.items():
                self.client.set_experiment_tag(self.experiment_id, key, value)

    def _runs(self, filter_string: str) -> list[Any]:
        return list(self.client.search_runs([self.experiment_id], filter_string,
                                            max_results=50000))

    def complete_ids(self) -> set[str]:
        """Configuration ids whose parent run holds a finished result."""
        return {run.data.tags[CONFIG_ID] for run in self._runs(
            f"tags.`{KIND}` = 'configuration' and tags.`{COMPLETE}` = '1'")}

    def parent(self, cid: str, overrides: dict[str, Any], trial_id: str) -> Any:
        """The configuration's parent run, created (with its params) on first sight."""
        if cid not in self._parents:
            found = self._runs(f"tags.`{KIND}` = 'configuration' and tags.`{CONFIG_ID}` = "
                               f"'{cid}'")
            params = self._flat(overrides)
            if found:
                self._log_missing_params(found[0], params)
                self._parents[cid] = found[0].info.run_id
            else:
                tags = {**provenance(), KIND: "configuration", STUDY: self.spec.name,
                        CONFIG_ID: cid,
                        TRIAL_ID: trial_id, VARIED: ",".join(self.spec.varied),
                        OVERRIDES: json.dumps(overrides, sort_keys=True)}
                name = run_name(overrides)
                if self._runs(f"tags.`{KIND}` = 'configuration' and "
                              f"attributes.run_name = '{name}'"):
                    name = f"{name} ({cid})"  # short values coincide: the id tells them apart
                run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
                self._log_missing_params(run, params)
                self._parents[cid] = run.info.run_id
        return self.client.get_run(self._parents[cid])

    def _log_missing_params(self, run: Any, params: dict[str, Any]) -> None:
        """Log the params a run lacks: a driver killed between creating a run and logging its
        params leaves a run without them, which the resumed launch completes."""
        missing = [Param(k, str(v)) for k, v in params.items() if k not in run.data.params]
        if missing:
            self.client.log_batch(run.info.run_id, params=missing)

    def _flat(self, overrides: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.spec.config_for(overrides).to_flat()
        except ConfigError:  # the trial reports the error; keep what was asked for
            return {**self.spec.base_flat(), **overrides}

    def record_set_aside(self, trial_id: str, result: dict[str, Any]) -> str | None:
        """Tag the configuration's parent with what its trial set aside (a damaged checkpoint);
        returns the note the first time it is recorded, for the launch to say."""
        note = result.get("set_aside") or ""
        if not note:
            return None
        config = result.get("config") or {}
        overrides = (json.loads(result["overrides_json"]) if "overrides_json" in result
                     else overrides_from_params(config))
        parent = self.parent(result["config_id"], overrides, trial_id)
        if parent.data.tags.get(SET_ASIDE) == note:
            return None
        self.client.set_tag(parent.info.run_id, SET_ASIDE, note)
        return note

    def log_progress(self, trial_id: str, result: dict[str, Any]) -> None:
        """Live progress on the parent while the configuration trains."""
        overrides = overrides_from_params(result["config"])
        parent = self.parent(result["config_id"], overrides, trial_id)
        if parent.data.tags.get(COMPLETE) == "1":
            return
        now = int(time.time() * 1000)
        step = int(result["step"])
        metrics = [Metric(f"progress/{k}", round(float(result[k]), SHOWN_DIGITS), now, step)
                   for k in ("convergence_rate", "wilson_low", "wilson_high")]
        self.client.log_batch(parent.info.run_id, metrics=metrics)
        runs = self.seed_runs(result["config_id"], parent, overrides)
        for seed, row in result.get("per_seed", {}).items():
            seed_run = runs[int(seed)]
            if int(row["step"]) > seed_run.last_step:
                self._log_rows(seed_run, [row])

    def seed_runs(self, cid: str, parent: Any, overrides: dict[str, Any]) -> dict[int, SeedRun]:
        """The configuration's seed runs, found or created."""
        if cid not in self._seeds:
            existing = {int(run.data.tags[SEED]): run for run in self._runs(
                f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent.info.run_id}'")}
            params = self._flat(overrides)
            found: dict[int, SeedRun] = {}
            for seed in self.spec.seeds:
                run = existing[seed] if seed in existing else self.client.create_run(
                    self.experiment_id, run_name=f"{parent.info.run_name} / seed {seed}",
                    tags={**provenance(), MLFLOW_PARENT_RUN_ID: parent.info.run_id, KIND: "seed",
                          STUDY: self.spec.name, CONFIG_ID: cid, SEED: str(seed),
                          OUTCOME: RUNNING, CONFIGURATION: parent.info.run_name})
                if CONFIGURATION not in run.data.tags:  # a seed run logged before the tag
                    self.client.set_tag(run.info.run_id, CONFIGURATION, parent.info.run_name)
                self._log_missing_params(run, {**params, "seed": seed})
                found[seed] = SeedRun(run.info.run_id, int(run.data.tags.get(LAST_STEP, -1)))
            self._seeds[cid] = found
        return self._seeds[cid]

    def _log_rows(self, seed_run: SeedRun, rows: list[dict[str, float]]) -> None:
        """Log evaluations on a seed run and move its mark to the latest one it holds
        (the mark travels with the last batch: one call per evaluation)."""
        if not rows:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, int(row["step"])) for row in rows
                   for key, value in row.items()
                   if key not in ("step", "seed") and math.isfinite(value)]
        seed_run.last_step = max(seed_run.last_step, *(int(row["step"]) for row in rows))
        starts = range(0, max(len(metrics), 1), BATCH)
        for start in starts:
            mark = [RunTag(LAST_STEP, str(seed_run.last_step))] if start == starts[-1] else []
            self.client.log_batch(seed_run.run_id, metrics=metrics[start:start + BATCH],
                                  tags=mark)

    def log_final(self, trial_id: str, result: dict[str, Any]) -> bool:
        """Log a finished configuration once; False when it was already complete."""
        overrides = json.loads(result["overrides_json"])
        parent = self.parent(result["config_id"], overrides, trial_id)
        if parent.data.tags.get(COMPLETE) == "1":
            return False
        run_id = parent.info.run_id
        seeds = seeds_of(result)
        figures = decode_artifacts(result["artifacts_json"])
        runs = self.seed_runs(result["config_id"], parent, overrides)
        for rec in seeds:
            self._finish_seed(runs[rec.seed], rec, figures)
        counts = {name: sum(r.outcome == name for r in seeds) for name in ALL_OUTCOMES}
        steps = [r.steps_to_converge for r in seeds if r.steps_to_converge is not None]
        secs = [r.seconds_to_converge for r in seeds if r.seconds_to_converge is not None]
        values = {"convergence_rate": result["convergence_rate"],
                  # rounded where MLflow shows them; reports recompute them from k and n
                  "wilson_low": round(result["wilson_low"], SHOWN_DIGITS),
                  "wilson_high": round(result["wilson_high"], SHOWN_DIGITS),
                  "objective": result["objective"], "seeds_done": result["seeds_done"],
                  "converged": result["converged"],
                  **{f"outcome/{name}": n for name, n in counts.items()}}
        if steps:
            values["mean_steps_to_converge"] = sum(steps) / len(steps)
            values["mean_seconds_to_converge"] = sum(secs) / len(secs)
        times = [seed_time(rec.history, ACCURACY, self.spec.threshold) for rec in seeds
                 if rec.outcome != ERROR]
        curve = kaplan_meier(times) if times else None
        if curve is not None and curve.median is not None:
            values["median_steps_to_threshold"] = curve.median
        now = int(time.time() * 1000)
        points = [Metric(k, float(v), now, 0) for k, v in values.items()]
        if curve is not None:  # MLflow draws it per configuration, steps on the x axis
            evaluated = range(self.spec.eval_every, self.spec.steps + 1, self.spec.eval_every)
            points += [Metric(SHARE_REACHED, curve.share_by(step), now, step)
                       for step in evaluated]
        for start in range(0, len(points), BATCH):
            self.client.log_batch(run_id, metrics=points[start:start + BATCH])
        # A configuration that failed (errors, not diverged seeds) is no result: it stays
        # incomplete, and the next launch trains it.
        tags = [RunTag(TRIAL_ID, trial_id), RunTag(COMPLETE, "0" if result["error"] else "1"),
                *(RunTag(f"airsearch.{key}", str(result[key])) for key in PLACEMENT
                  if result.get(key) not in (None, ""))]
        if result["error"]:
            tags.append(RunTag(ERROR_TAG, result["error"][:7000]))
        matrices = [rec.confusion for rec in seeds if rec.confusion]
        if matrices:  # every seed of a configuration has the same counts, so the same shape
            tags.append(RunTag(CONFUSION, json.dumps(np.sum(matrices, axis=0).tolist())))
        if times:
            tags.append(RunTag(TIMES, json.dumps([[t.reached, t.last] for t in times])))
        if result.get("stopped_early_at"):
            tags.append(RunTag(STOPPED_EARLY, str(result["stopped_early_at"])))
        if result.get("resumed_from_step"):
            tags.append(RunTag("airsearch.resumed_from_step", str(result["resumed_from_step"])))
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, "FAILED" if result["error"] else "FINISHED")
        return True

    def _finish_seed(self, seed_run: SeedRun, rec: SeedRecord,
                     figures: dict[str, bytes]) -> None:
        """Evaluations the live logging missed, the outcome, the figures; then the run ends.

        Missed evaluations can lie before the mark: those a killed driver never heard of,
        which the resumed configuration's history holds from its checkpoint.
        """
        run_id = seed_run.run_id
        logged = {m.step for m in self.client.get_metric_history(run_id, WALL)}
        self._log_rows(seed_run, [row for row in rec.history if int(row["step"]) not in logged])
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, 0)
                   for key, value in (("steps_to_converge", rec.steps_to_converge),
                                      ("seconds_to_converge", rec.seconds_to_converge))
                   if value is not None]
        self.client.log_batch(run_id, metrics=metrics, tags=[RunTag(OUTCOME, rec.outcome)])
        with tempfile.TemporaryDirectory() as tmp:
            confusion = Path(tmp) / "confusion.json"
            confusion.write_text(json.dumps({"rows_true_count": rec.confusion,
                                             "final": rec.final}))
            self.client.log_artifact(run_id, str(confusion))
            for name, data in figures.items():  # the seed's figures sit in its figure's folder
                if rec.figure_path and Path(name).parent == Path(rec.figure_path).parent:
                    figure = Path(tmp) / Path(name).name
                    figure.write_bytes(data)
                    self.client.log_artifact(run_id, str(figure))
        self.client.set_terminated(run_id, "FAILED" if rec.outcome == ERROR else "FINISHED")

    def delete_all(self) -> int:
        """For --restart: the study's runs go, the experiment (and its id) stays."""
        runs = self._runs("")
        for run in runs:
            self.client.delete_run(run.info.run_id)
        return len(runs)


def backfill_time_to_count(tracking_uri: str,
                           rows: list[tuple[str, TimeToCount | None, list[list[int | None]]]]
                           ) -> None:
    """Configurations logged before time to count was get its curve and median, so MLflow
    compares them like the others (idempotent: only where the curve is missing).

    rows: (parent run id, the Kaplan-Meier curve, per seed [first step at the threshold or
    None, last step]).
    """
    client = MlflowClient(tracking_uri)
    for run_id, curve, times in rows:
        run = client.get_run(run_id)
        if curve is None or SHARE_REACHED in run.data.metrics:
            continue
        params = run.data.params
        every, steps = int(params["train.eval_every"]), int(params["train.steps"])
        now = int(time.time() * 1000)
        points = [Metric(SHARE_REACHED, curve.share_by(step), now, step)
                  for step in range(every, steps + 1, every)]
        if curve.median is not None:
            points.append(Metric("median_steps_to_threshold", curve.median, now, 0))
        client.log_batch(run_id, metrics=points)
        client.set_tag(run_id, TIMES, json.dumps(times))


def log_report(tracking_uri: str, study: str, paths: list[Path], configurations: int,
               best: tuple[str, float] | None) -> str:
    """Log a report's files on the study's report run (created once), with the number of
    complete configurations and the best one's (config id, rate); returns the run's id."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study)
    found = client.search_runs([experiment.experiment_id], f"tags.`{KIND}` = 'report'")
    run_id = (found[0].info.run_id if found else client.create_run(
        experiment.experiment_id, run_name="report",
        tags={**provenance(), KIND: "report", STUDY: study}).info.run_id)
    for path in paths:
        client.log_artifact(run_id, str(path))
    # Idempotent: a report taken again adds a point only where the study has moved on.
    values = {"configurations_complete": float(configurations)}
    if best is not None:
        values["best_convergence_rate"] = best[1]
        client.set_tag(run_id, BEST, best[0])
    logged = client.get_run(run_id).data.metrics
    for key, value in values.items():
        if logged.get(key) != value:
            client.log_metric(run_id, key, value, step=configurations)
    client.set_terminated(run_id, "FINISHED")
    return run_id
