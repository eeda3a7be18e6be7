"""Launch a study on Ray Tune, or resume it where its results already exist.

Ray Tune owns scheduling and resume; the Optuna study (optuna.db) and Ray's experiment
(ray/) live side by side under the study's storage folder, so both come back together.
Restoring uses `resume_errored=True`: a trial that died with its worker is trained again,
from its configuration's last checkpoint (airsearch.study.trial).
After the driver is killed, Ray re-runs trials that were not yet in its last snapshot; the
MLflow callback recognises configurations it already logged, and a final pass over Ray's
results logs any finished trial the callback missed, so every configuration counts once.
A trial whose worker or node is lost is retried on the nodes left (`FailureConfig`).

The study's own record, not Ray's snapshot, says what a grid study has left: a fresh
experiment trains only the configurations MLflow does not hold as complete, and Ray state
that no longer parses (a kill mid-write) is set aside rather than trusted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler

from airsearch.study.mlflow_layout import run_name
from airsearch.study.preflight import PreflightError, join_error, unreadable_ray_state
from airsearch.study.space import (
    OBJECTIVE,
    OPTUNA_FILE,
    grid_param_space,
    optuna_searcher,
    overrides_from_params,
)
from airsearch.study.spec import StudySpec, config_id
from airsearch.study.tracking import StudyTracker
from airsearch.study.trial import TRIALS_DIR, run_trial, stopped_metrics
from airsearch.study.tune_callback import MlflowCallback
from airsearch.training.checkpoint import CHECKPOINT

RAY_DIR = "ray"
LAUNCH_LOCK = ".launch.lock"  # held by the launch running this study
# Forwarded to workers so data loads the same on a cluster as on the driver.
FORWARDED_ENV = ("AIRSEARCH_CACHE", "AIRSEARCH_MNIST_DIR")
MAX_FAILURES = 3  # retries of a trial whose worker died (a lost node), on the nodes left
LOG_EVERY_S = 300  # a launch logged to a file says where it stands this often


@dataclass(frozen=True)
class LaunchOutcome:
    """What one launch did: trials Ray holds for the study and how the run went."""

    resumed: bool
    trials: int
    finished: int
    stopped: int  # stopped early by the study's scheduler, seeds judged where they stopped
    errored: int
    newly_logged: int
    wall_s: float
    results: list[dict[str, Any]]  # each trial's last report


def ray_path(spec: StudySpec) -> Path:
    return Path(spec.storage) / RAY_DIR


def start_ray(address: str | None, num_cpus: int | None = None,
              num_gpus: int | None = None) -> tuple[bool, str]:
    """Join `address` or start a fresh local runtime.

    Returns whether this call started Ray (False if it was already initialised) and the
    dashboard's URL ('' when there is none).
    """
    if ray.is_initialized():
        return False, ""
    env = {"RAY_CHDIR_TO_TRIAL_DIR": "0"}
    env.update({k: str(Path(os.environ[k]).resolve()) for k in FORWARDED_ENV if k in os.environ})
    if address in (None, "local"):
        # "local" always starts a fresh runtime, even next to a killed head's leftovers.
        context = ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                           runtime_env={"env_vars": env}, log_to_driver=False)
    else:
        try:
            context = ray.init(address=address, runtime_env={"env_vars": env},
                               log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 -- Ray raises several types for one cause
            raise join_error(address, exc) from None
    url = context.dashboard_url or ""
    return True, (url if not url or url.startswith("http") else f"http://{url}")


def has_results(spec: StudySpec) -> bool:
    return tune.Tuner.can_restore(str(ray_path(spec)))


def check_same_tracking(spec: StudySpec, tracking_uri: str) -> None:
    """A resumed study logs where it began: Ray restores the MLflow callback, with the address
    it was given, from the study's state. Refuse a launch that names another store."""
    if not has_results(spec) or unreadable_ray_state(ray_path(spec)) is not None:
        return  # nothing to resume, or a state the launch sets aside
    state = ray.cloudpickle.loads((ray_path(spec) / "tuner.pkl").read_bytes())
    logged_to = next((callback.uri for callback in state["_run_config"].callbacks or []
                      if isinstance(callback, MlflowCallback)), None)
    if logged_to is not None and _store(logged_to) != _store(tracking_uri):
        raise PreflightError(
            f"study {spec.name} logs to {logged_to} (its Ray state in {ray_path(spec)}); this "
            f"launch names {tracking_uri}: launch with --tracking-uri {logged_to}, or with "
            f"--restart to train it anew and log to {tracking_uri}")


def _store(uri: str) -> str:
    """A tracking URI compared by the store it names (a sqlite path resolved)."""
    prefix = "sqlite:///"
    return (prefix + str(Path(uri[len(prefix):]).resolve()) if uri.startswith(prefix)
            else uri.rstrip("/"))


def set_aside_unreadable_state(spec: StudySpec) -> str | None:
    """Check Ray's state before resuming; set it aside (grid) or refuse (Optuna) if garbled.

    Returns what was done, for the launch to say, or None when the state is sound.
    """
    folder = ray_path(spec)
    if not has_results(spec):
        return None
    problem = unreadable_ray_state(folder)
    if problem is None:
        return None
    if spec.mode == "optuna":
        raise PreflightError(
            f"{problem}: the Optuna search cannot resume without it; move {folder} aside and "
            "launch with --restart to start the study over")
    aside = folder.with_name(f"{RAY_DIR}.unreadable-{datetime.now():%Y%m%d-%H%M%S}")
    folder.rename(aside)
    return (f"{problem}; set aside as {aside}: the configurations this study has not "
            "recorded as complete train again, from their own checkpoints where they have one")


def set_aside_ended_state(spec: StudySpec, tracking_uri: str) -> str | None:
    """Grid mode: when Ray's state holds as ended a trial whose configuration the study has
    not recorded as complete (it failed: a full disk, a bug), restoring would never train it
    again; set the state aside so that every configuration not complete trains afresh (from
    its own checkpoint where it has one). Returns what was done, or None."""
    if spec.mode != "grid" or not has_results(spec):
        return None
    complete = StudyTracker(tracking_uri, spec).complete_ids()
    left = {config_id(c) for c in spec.configurations()} - complete
    ended = {config_id(overrides_from_params(trial.config))
             for trial in tune.ExperimentAnalysis(str(ray_path(spec))).trials
             if trial.status == "TERMINATED"}
    failed = sorted(left & ended)
    if not failed:
        return None
    folder = ray_path(spec)
    aside = folder.with_name(f"{RAY_DIR}.ended-{datetime.now():%Y%m%d-%H%M%S}")
    folder.rename(aside)
    return (f"{len(failed)} configuration(s) ended without a result ({', '.join(failed)}); "
            f"Ray's state set aside as {aside}: they train again")


def restart(spec: StudySpec, tracking_uri: str) -> int:
    """Delete the study's Ray and Optuna results and its MLflow runs; returns runs deleted.
    The launch lock stays: this launch holds it."""
    for entry in Path(spec.storage).glob("*"):
        if entry.name == LAUNCH_LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return StudyTracker(tracking_uri, spec).delete_all()


@contextlib.contextmanager
def launch_lock(spec: StudySpec) -> Iterator[None]:
    """Held for a whole launch, so that two launches of one study never train it twice or
    race to create its stores. A killed launch leaves nothing held: the kernel drops the lock
    with the process."""
    Path(spec.storage).mkdir(parents=True, exist_ok=True)
    path = Path(spec.storage) / LAUNCH_LOCK
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise PreflightError(
                f"study {spec.name} is being launched already (process {holder} holds "
                f"{path}): wait for that launch, or stop it, then launch again") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        yield


def launch(spec: StudySpec, tracking_uri: str, *, max_concurrent: int | None = None,
           show_progress: bool = True) -> LaunchOutcome:
    """Run (or resume) the study to completion on the current Ray runtime."""
    started = time.time()
    # Default loggers include TensorBoard's, which warns on every NaN of a diverged seed;
    # keep Ray's JSON and CSV results only.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    tracker = StudyTracker(tracking_uri, spec)  # DB and experiment exist before any trial
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec),
                                    {"cpu": spec.cpus, "gpu": spec.gpus})
    resumed = has_results(spec)
    if resumed:
        tuner = tune.Tuner.restore(str(ray_path(spec)), trainable=trainable,
                                   resume_errored=True)
    else:
        Path(spec.storage).mkdir(parents=True, exist_ok=True)
        optuna = spec.mode == "optuna"
        if not optuna:
            complete = tracker.complete_ids()
            left = [c for c in spec.configurations() if config_id(c) not in complete]
            if not left:
                return LaunchOutcome(resumed=False, trials=0, finished=0, stopped=0, errored=0,
                                     newly_logged=0, wall_s=time.time() - started, results=[])
        tuner = tune.Tuner(
            trainable,
            param_space={} if optuna else grid_param_space(left),
            tune_config=tune.TuneConfig(
                metric=OBJECTIVE, mode="max",
                search_alg=optuna_searcher(spec, tracking_uri) if optuna else None,
                scheduler=early_stopper(spec),
                num_samples=spec.budget if optuna else 1,
                max_concurrent_trials=max_concurrent or spec.max_concurrent,
                reuse_actors=True, trial_name_creator=trial_name),
            run_config=tune.RunConfig(
                name=RAY_DIR, storage_path=spec.storage, verbose=0,
                failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                callbacks=[JsonLoggerCallback(), CSVLoggerCallback(),
                           MlflowCallback(tracking_uri, spec),
                           ProgressCallback(spec.name, spec.trial_count, spec.steps,
                                            show_progress)]))
    grid = tuner.fit()
    results = [result.metrics or {} for result in grid]
    finished = [m for m in results if m.get("finished")]
    stopped = [stopped_metrics(spec, m) for m in results
               if not m.get("finished") and "seeds_json" in m]
    newly = sum(tracker.log_final(m["trial_id"], m) for m in finished + stopped)
    for cid in tracker.complete_ids():  # a stopped configuration's weights are not kept
        (Path(spec.storage) / TRIALS_DIR / cid / CHECKPOINT).unlink(missing_ok=True)
    return LaunchOutcome(resumed=resumed, trials=len(results), finished=len(finished),
                         stopped=len(stopped), errored=len(results) - len(finished + stopped),
                         newly_logged=newly, wall_s=time.time() - started, results=results)


def trial_name(trial: Any) -> str:
    """A Ray trial's name: its configuration's MLflow run name (the keys it changes)."""
    return run_name(overrides_from_params(trial.config))


def early_stopper(spec: StudySpec) -> ASHAScheduler | None:
    """Ray Tune's ASHA on the objective so far (study file `scheduler`), or None (FIFO)."""
    stop = spec.early_stopping
    if stop.kind == "none":
        return None
    # stop_last_trials=False: a configuration that reaches the last step reports its result.
    return ASHAScheduler(time_attr="step", max_t=spec.steps,
                         grace_period=stop.grace_steps(spec.steps, spec.eval_every),
                         reduction_factor=stop.reduction_factor, stop_last_trials=False)


class ProgressCallback(tune.Callback):
    """One live line on the driver (trials, training steps done of all, ETA, best rate so
    far), and each failed configuration's error, as it happens."""

    def __init__(self, name: str, expected: int, steps: int, enabled: bool) -> None:
        self.name = name
        self.expected = expected
        self.steps = steps
        self.enabled = enabled
        self.best: tuple[float, str] = (-1.0, "")
        self.reached: dict[str, int] = {}  # trial id -> training steps done
        self.first: tuple[float, int] | None = None  # (time, steps) when this launch first heard
        self.logged = (0, time.time())  # (trials done, time) at the last line written to a log
        self.ended: set[str] = set()  # ids of the trials that finished or died
        self.last_line = ""

    def _show(self, trials: list, final: bool) -> None:
        if not self.enabled:
            return
        # Ray calls on_trial_complete before it marks the trial TERMINATED: count it ended.
        self.ended |= {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        done = len(self.ended)
        running = sum(t.status == "RUNNING" and t.trial_id not in self.ended for t in trials)
        best = (f"best {self.best[1]}" if self.best[0] >= 0 else "best -")
        line = (f"[{self.name}] trials {done}/{self.expected} done, {running} running, "
                f"{self._steps_and_eta(len(trials))}, {best}")
        tty = sys.stderr.isatty()
        # Redirected to a log (a launch under nohup), a line whenever a trial ends and at
        # least every LOG_EVERY_S, instead of rewriting one line in place.
        due = done != self.logged[0] or time.time() - self.logged[1] >= LOG_EVERY_S
        if tty or ((final or due) and line != self.last_line):
            sys.stderr.write(("\r" if tty else "") + line + ("\n" if not tty else ""))
            sys.stderr.flush()
            self.logged, self.last_line = (done, time.time()), line

    def _steps_and_eta(self, trials: int) -> str:
        """Steps of all configurations (the ones Ray holds, at least the study's count)."""
        total = self.steps * max(self.expected, trials)
        reached = sum(self.reached.values())
        text = f"steps {reached:,}/{total:,}"
        if self.first is not None and reached > self.first[1]:
            rate = (reached - self.first[1]) / (time.time() - self.first[0])
            text += f", ETA {(total - reached) / rate / 60:.0f} min"
        return text

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self.reached[trial.trial_id] = self.steps if result.get("finished") else int(
            result.get("step", 0))
        if self.first is None:
            self.first = (time.time(), sum(self.reached.values()))
        if result.get("finished") and result[OBJECTIVE] > self.best[0]:
            rate = (f"{result['converged']}/{result['seeds_done']} converged "
                    f"(config {result['config_id']})")
            self.best = (result[OBJECTIVE], rate)
        if result.get("finished") and result.get("error"):
            sys.stderr.write(f"\n[{self.name}] configuration {result['config_id']} failed: "
                             f"{result['error'].splitlines()[0]}\n")
        self._show(trials, final=False)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)
        self.reached[trial.trial_id] = self.steps  # done, also when stopped early
        self._show(trials, final=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        sys.stderr.write(f"\n[{self.name}] trial {trial.trial_id} died (Ray: {trial.error_file}"
                         ")\n")
        self.ended.add(trial.trial_id)
        self._show(trials, final=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.enabled and sys.stderr.isatty():
            sys.stderr.write("\n")


def plan_text(spec: StudySpec, tracking_uri: str, max_concurrent: int | None) -> str:
    """The resolved plan of a study, as --dry-run prints it."""
    lines = [f"study {spec.name}  ({spec.path})"]
    if spec.question:
        lines += ["  " + line for line in spec.question.splitlines()]
    lines += [f"mode: {spec.mode}", f"seeds per configuration: {len(spec.seeds)} "
              f"{list(spec.seeds)}",
              f"training: {spec.steps} steps, evaluation every {spec.eval_every}",
              f"converged: held-out count accuracy >= {spec.threshold} in the last "
              f"{spec.hold} evaluation(s)",
              f"objective: convergence rate (max), tie-break {spec.tie_break}",
              "fixed config: " + (json.dumps(spec.fixed) if spec.fixed else "(defaults)")]
    if spec.mode == "grid":
        configs = spec.configurations()
        lines.append(f"configurations ({len(configs)}):")
        lines += [f"  {i + 1:3d}. {json.dumps(c)}" for i, c in enumerate(configs)]
    else:
        lines.append(f"search space (optuna, {spec.sampler} sampler, seed {spec.sampler_seed}, "
                     f"budget {spec.budget}):")
        lines += [f"  {dim.key}: {dim.describe()}" for dim in spec.space]
        lines += [f"  first point: {json.dumps(p)}" for p in spec.points_to_evaluate]
    stop = spec.early_stopping
    if stop.kind == "asha":
        first = stop.grace_steps(spec.steps, spec.eval_every)
        lines.append(f"early stopping: ASHA at step {first:,} and every x{stop.reduction_factor} "
                     f"after; below the top 1/{stop.reduction_factor} of the objective so far "
                     "stops, its seeds judged at their last evaluation")
    concurrent = max_concurrent or spec.max_concurrent
    lines += [f"trials: {spec.trial_count} (one per configuration; {spec.trial_count} x "
              f"{len(spec.seeds)} = {spec.trial_count * len(spec.seeds)} seed runs)",
              f"resources per trial: {spec.cpus:g} cpu, {spec.gpus:g} gpu; at most "
              f"{concurrent} at once",
              f"results: {spec.storage}", f"tracking: {tracking_uri}"]
    if spec.mode == "optuna":
        db = f"sqlite:///{Path(spec.storage) / OPTUNA_FILE}"
        lines.append(f"optuna storage: {db} (browse it: optuna-dashboard {db})")
    return "\n".join(lines)
