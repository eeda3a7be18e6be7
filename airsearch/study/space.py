"""A study's search space in the forms Ray Tune and Optuna take.

Grid mode hands Tune one `grid_search` over whole configurations (not one per key): a
per-key grid next to sampled keys would resample them per cell, and conditional keys would
multiply configurations that are in fact the same.

Optuna mode uses a define-by-run space so that conditional keys (a decay's final value only
when the schedule decays) are suggested only when active. OptunaSearch pickles the space with
its state, so it is a module-level class here: a closure or a `__main__` function hangs
Tune's restore.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from airsearch.study.mlflow_layout import CONFIG_ID, KIND
from airsearch.study.spec import TIE_BREAK_WEIGHT, Dimension, StudySpec

OBJECTIVE = "objective"
# copied from a trial's final result onto its Optuna trial
TRIAL_ATTRIBUTES = ("config_id", "name", "converged", "seeds_done", "convergence_rate",
                    "wilson_low", "wilson_high")
OPTUNA_FILE = "optuna.db"


@dataclass(frozen=True)
class DefineByRun:
    """Optuna define-by-run space: suggests each active key of the study, in file order."""

    space: tuple[Dimension, ...]

    def __call__(self, trial: optuna.Trial) -> None:
        chosen: dict[str, Any] = {}
        for dim in self.space:
            if not dim.active(chosen):
                continue
            if dim.values is not None:
                chosen[dim.key] = trial.suggest_categorical(dim.key, list(dim.values))
            elif isinstance(dim.low, int) and isinstance(dim.high, int):
                chosen[dim.key] = trial.suggest_int(dim.key, dim.low, dim.high,
                                                    step=int(dim.step or 1), log=dim.log)
            else:
                chosen[dim.key] = trial.suggest_float(dim.key, float(dim.low), float(dim.high),
                                                      step=dim.step, log=dim.log)


def grid_param_space(configurations: list[dict[str, Any]]) -> dict[str, Any]:
    """Tune param_space for grid mode: one trial per distinct configuration."""
    return {"overrides": tune.grid_search(configurations)}


def optuna_storage_url(spec: StudySpec) -> str:
    """The Optuna study lives next to Ray's results, so both resume together."""
    return f"sqlite:///{Path(spec.storage) / OPTUNA_FILE}"


class StudySearch(OptunaSearch):
    """OptunaSearch whose Optuna study reads like the airsearch study: the objective named,
    intermediate values keyed by training step, and each trial's result (config id, k of n
    seeds converged, Wilson bounds) as user attributes. Module level: Tune pickles it."""

    def __init__(self, objective_name: str, tracking_uri: str, experiment: str,
                 **kwargs: Any) -> None:
        self.objective_name = objective_name  # read by _setup_study, which __init__ calls
        self.tracking_uri, self.experiment = tracking_uri, experiment  # to find run ids
        super().__init__(**kwargs)

    def _setup_study(self, mode: str | list) -> None:
        super()._setup_study(mode)
        self._ot_study.set_metric_names([self.objective_name])

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or "step" not in result:
            return
        self._ot_trials[trial_id].report(result[self.metric], int(result["step"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if result and trial_id not in self._completed_trials:
            trial = self._ot_trials[trial_id]
            for key in TRIAL_ATTRIBUTES:
                if key in result:
                    trial.set_user_attr(key, result[key])
            run_id = self._mlflow_run_id(result.get("config_id"))
            if run_id:
                trial.set_user_attr("mlflow_run_id", run_id)
        super().on_trial_complete(trial_id, result, error)

    def _mlflow_run_id(self, cid: str | None) -> str | None:
        """The configuration's MLflow parent run (made by the tracker at its first result);
        None for a searcher pickled before it knew the store."""
        if cid is None or not hasattr(self, "tracking_uri"):
            return None
        client = MlflowClient(self.tracking_uri)
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            return None
        runs = client.search_runs([experiment.experiment_id],
                                  f"tags.`{KIND}` = 'configuration' and "
                                  f"tags.`{CONFIG_ID}` = '{cid}'", max_results=1)
        return runs[0].info.run_id if runs else None


def optuna_searcher(spec: StudySpec, tracking_uri: str) -> OptunaSearch:
    """OptunaSearch with the study's seeded sampler, warm-start points and sqlite storage."""
    if spec.sampler == "tpe":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(seed=spec.sampler_seed)
    else:
        sampler = optuna.samplers.RandomSampler(seed=spec.sampler_seed)
    Path(spec.storage).mkdir(parents=True, exist_ok=True)
    tie_break = ("" if spec.tie_break == "none"
                 else f" + {TIE_BREAK_WEIGHT:g} x mean {spec.tie_break} (tie-break)")
    return StudySearch(
        objective_name=f"convergence rate{tie_break}",
        tracking_uri=tracking_uri,
        experiment=spec.name,
        space=DefineByRun(spec.space),
        metric=OBJECTIVE,
        mode="max",
        sampler=sampler,
        points_to_evaluate=[dict(p) for p in spec.points_to_evaluate] or None,
        study_name=spec.name,
        storage=optuna.storages.RDBStorage(optuna_storage_url(spec)),
    )


def overrides_from_params(params: dict[str, Any]) -> dict[str, Any]:
    """The searched values of one trial, whichever mode produced them."""
    return dict(params["overrides"]) if "overrides" in params else dict(params)
