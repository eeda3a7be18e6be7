"""One Ray Tune trial: one configuration trained on all the study's seeds.

The seeds run as vectorised replicas in this one process (`train_seeds`), so a trial's cost
is one configuration, and its result is that configuration's convergence rate.

Failures are reported as values, never raised: a raised trial is dropped from Optuna's view
(it would inflate the rate, or leave the Optuna trial running forever) and from the report.
An exception therefore becomes every seed with outcome "error" and the message attached.

Everything the driver needs travels inside the final report, figures included (as base64),
so it works on a cluster where the worker's disk is not the driver's.

A trial trains in its configuration's folder under the study's storage (trials/<config id>),
checkpointed at every evaluation. When the configuration trains again after a crash (a
killed driver, a lost worker), it resumes from that checkpoint instead of starting over, and
ends bitwise where it would have ended. The checkpoint is deleted once the trial reports.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import json
import math
import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from airsearch.config import AIRConfig
from airsearch.evaluation.outcomes import ACCURACY, CONVERGED, DIVERGED
from airsearch.stats import wilson
from airsearch.study.mlflow_layout import PLACEMENT, run_name
from airsearch.study.space import OBJECTIVE, overrides_from_params
from airsearch.study.spec import StudySpec, config_id
from airsearch.training.checkpoint import (
    CHECKPOINT,
    Checkpoint,
    CheckpointError,
    UnreadableCheckpoint,
    check_resumable,
    clear_run,
    load_checkpoint,
    schedule_change,
    set_aside,
)
from airsearch.training.records import EvalRecord, SeedRecord, rate_of

TRIALS_DIR = "trials"
# What every report of a trial carries about it (the `placement` of run_trial).
PLACEMENT_KEYS = ("config_id", "name", *PLACEMENT, "started_at", "resumed_from_step", "set_aside")
LOCK = ".lock"


def run_trial(params: dict[str, Any], spec: StudySpec) -> None:
    """Tune function trainable: train, report progress on every evaluation, report the rate."""
    from airsearch.training.loop import train_seeds

    torch.set_num_threads(max(1, math.floor(spec.cpus)))
    overrides = overrides_from_params(params)
    cid = config_id(overrides)
    started = time.time()
    placement = {"config_id": cid, "name": run_name(overrides),
                 "node_id": ray.get_runtime_context().get_node_id(),
                 "node_ip": ray.util.get_node_ip_address(), "hostname": socket.gethostname(),
                 "gpu_ids": json.dumps([str(g) for g in ray.get_gpu_ids()]),
                 "started_at": started, "resumed_from_step": 0,
                 "set_aside": ""}  # what the trial found damaged and set aside, said by the driver

    def on_eval(record: EvalRecord) -> None:
        rows = [{"step": record.step, "wall_s": record.wall_s, **row} for row in record.per_seed]
        rate = wilson(sum(rec.outcome == CONVERGED for rec in record.seeds), len(spec.seeds))
        report = {OBJECTIVE: spec.objective(rate.value, _accuracy(record.seeds)),
                  "convergence_rate": rate.value, "wilson_low": rate.low,
                  "wilson_high": rate.high, "step": record.step, "finished": 0,
                  "per_seed": {str(int(row["seed"])): row for row in rows}, **placement}
        if spec.early_stopping.kind != "none":
            # Every seed labelled as if training stopped here, histories included: what a
            # configuration the scheduler stops is recorded with. Only then: Ray keeps every
            # report, and these grow with each evaluation.
            report["seeds_json"] = json.dumps([rec.to_json() for rec in record.seeds])
        tune.report(report)

    try:
        config = spec.config_for(overrides)
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        with trial_folder(Path(spec.storage) / TRIALS_DIR / cid) as out:
            resume = resumable_checkpoint(out, config, spec.seeds,
                                          lambda note: placement.update(set_aside=note))
            if resume is not None:
                placement["resumed_from_step"] = resume.step
            summary = train_seeds(config, spec.seeds, out_dir=out, on_eval=on_eval,
                                  device=device, progress=False, resume=resume)
            seeds = [_relative_figure(record, out) for record in summary.seeds]
            # Every figure of a seed's folder: reconstruction, attention, confusion.
            artifacts = {str(png.relative_to(out)): _b64(png) for rec in seeds
                         if rec.figure_path
                         for png in sorted((out / rec.figure_path).parent.glob("*.png"))}
            (out / CHECKPOINT).unlink(missing_ok=True)  # reported; the weights are not kept
        error = ""
    except Exception as exc:  # noqa: BLE001 -- a failure is reported, never raised
        error = (f"{failure_cause(exc, Path(spec.storage), spec, overrides)}\n"
                 f"{traceback.format_exc(limit=8)}")
        seeds = [SeedRecord.error(s) for s in spec.seeds]
        artifacts = {}
    tune.report(final_metrics(spec, overrides, seeds, error, artifacts,
                              {**placement, "ended_at": time.time()}))


def failure_cause(exc: BaseException, folder: Path, spec: StudySpec,
                  overrides: dict[str, Any]) -> str:
    """One line on why a configuration failed; a full disk is named as such (torch's zip
    writer reports it as "unexpected pos"), with where and how much a checkpoint needs."""
    text = f"{type(exc).__name__}: {str(exc)[:300]}"
    chain: BaseException | None = exc
    full = False
    while chain is not None and not full:
        full = (isinstance(chain, OSError) and chain.errno == errno.ENOSPC) or any(
            sign in str(chain) for sign in ("No space left on device", "unexpected pos"))
        chain = chain.__cause__ or chain.__context__
    if not full:
        return text
    from airsearch.model.air import AIR

    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    model = AIR(spec.config_for(overrides), [0])
    # weights and Adam's two moments per seed, 4 bytes each
    needed = 12 * sum(p.numel() for p in model.parameters()) * len(spec.seeds)
    return (f"disk full in {folder} ({free}; a checkpoint of this configuration takes about "
            f"{needed / 1e6:.1f} MB): free space there and launch again ({text})")


@contextlib.contextmanager
def trial_folder(folder: Path) -> Iterator[Path]:
    """A configuration's folder, locked while a trial trains in it.

    A trial that finds it locked (the same configuration training in another trial at this
    moment, as Optuna may propose twice) trains in a temporary folder instead.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lock = open(folder / LOCK, "w")  # held open for the whole trial
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        with tempfile.TemporaryDirectory(prefix="airsearch-") as tmp:
            yield Path(tmp)
        return
    with lock:  # closing the file releases the lock, also when the process dies
        yield folder


def resumable_checkpoint(folder: Path, config: AIRConfig, seeds: Sequence[int],
                         set_aside_note: Callable[[str], None] = print) -> Checkpoint | None:
    """The checkpoint this configuration left in `folder`, if training can go on from it.

    Any other run there (a finished run's record, a checkpoint of another version of the
    study file) is cleared, so that the new run does not append to it. A damaged checkpoint
    is set aside, and `set_aside_note` told what was done.
    """
    if (folder / CHECKPOINT).exists():
        try:
            checkpoint = load_checkpoint(folder)
            check_resumable(checkpoint, config, seeds)
            # A study compares configurations: each must train exactly as a fresh run would.
            if schedule_change(checkpoint, config) is None:
                return checkpoint
        except UnreadableCheckpoint as exc:
            kept = set_aside(folder / CHECKPOINT)
            set_aside_note(f"{exc}; set aside as {kept}, training this configuration afresh")
        except CheckpointError:
            pass
    clear_run(folder)
    return None


def final_metrics(spec: StudySpec, overrides: dict[str, Any], seeds: list[SeedRecord],
                  error: str, artifacts: dict[str, str], placement: dict[str, Any]
                  ) -> dict[str, Any]:
    """The trial's last report: the rate, and per-seed records as JSON strings (not flattened)."""
    rate = rate_of(seeds)
    return {OBJECTIVE: spec.objective(rate.value, _accuracy(seeds)), "convergence_rate": rate.value,
            "wilson_low": rate.low, "wilson_high": rate.high, "converged": rate.k,
            "seeds_done": rate.n, "finished": 1, "error": error,
            "overrides_json": json.dumps(overrides, sort_keys=True),
            "seeds_json": json.dumps([rec.to_json() for rec in seeds]),
            "artifacts_json": json.dumps(artifacts), **placement}


def stopped_metrics(spec: StudySpec, result: dict[str, Any]) -> dict[str, Any]:
    """The final report of a configuration the scheduler stopped, from its last progress
    report: every seed counted, labelled at its last evaluation; no figures."""
    overrides = overrides_from_params(result["config"])
    seeds = seeds_of(result)
    done = {rec.seed for rec in seeds}
    seeds += [SeedRecord.error(s) for s in spec.seeds if s not in done]  # never began
    metrics = final_metrics(spec, overrides, seeds, "", {}, {
        key: result[key] for key in result if key in PLACEMENT_KEYS})
    return {**metrics, "trial_id": result["trial_id"], "stopped_early_at": int(result["step"])}


def _relative_figure(record: SeedRecord, out_dir: Path) -> SeedRecord:
    """The record as shipped: its figure path relative to the configuration's folder."""
    figure = None
    if record.figure_path and Path(record.figure_path).exists():
        figure = str(Path(record.figure_path).resolve().relative_to(out_dir.resolve()))
    return replace(record, figure_path=figure)


def _accuracy(seeds: list[SeedRecord]) -> float:
    """Mean last held-out accuracy, the tie-break. A diverged seed's accuracy is that of
    frozen, broken weights: it must not rank anything."""
    return _mean(rec.final.get(ACCURACY, math.nan) for rec in seeds if rec.outcome != DIVERGED)


def _mean(values: Any) -> float:
    finite = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def decode_artifacts(artifacts_json: str) -> dict[str, bytes]:
    """Figures shipped back from the worker: relative path -> bytes."""
    return {name: base64.b64decode(data) for name, data in json.loads(artifacts_json).items()}


def seeds_of(result: dict[str, Any]) -> list[SeedRecord]:
    """The seed records inside a trial's final report."""
    return [SeedRecord.from_json(data) for data in json.loads(result["seeds_json"])]
