"""The Tune callback that hands each trial's results to the study's MLflow writer."""

from __future__ import annotations

from typing import Any

from ray import tune

from airsearch.study.space import OBJECTIVE
from airsearch.study.spec import StudySpec
from airsearch.study.tracking import StudyTracker
from airsearch.study.trial import stopped_metrics


class MlflowCallback(tune.Callback):
    """Runs on the driver: streams progress and logs each finished configuration once."""

    def __init__(self, tracking_uri: str, spec: StudySpec) -> None:
        self.uri = tracking_uri
        self.spec = spec
        self._tracker: StudyTracker | None = None

    @property
    def tracker(self) -> StudyTracker:
        if self._tracker is None:
            self._tracker = StudyTracker(self.uri, self.spec)
        return self._tracker

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks with the experiment; an MLflow client is reopened instead.
        return {**self.__dict__, "_tracker": None}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self._say_set_aside(trial.trial_id, result)
        if not result.get("finished"):
            self.tracker.log_progress(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result
        if result.get("finished"):
            self.tracker.log_final(trial.trial_id, result)
        elif "seeds_json" in result:  # the scheduler stopped it early
            final = stopped_metrics(self.spec, result)
            if self.tracker.log_final(trial.trial_id, final):
                print(f"[{self.spec.name}] stopped early at step {final['stopped_early_at']:,}: "
                      f"{final['name']} ({final['converged']}/{final['seeds_done']} converged "
                      f"so far, objective {final[OBJECTIVE]:.4f})", flush=True)

    def _say_set_aside(self, trial_id: str, result: dict) -> None:
        """What a trial set aside goes to the launch's own output, not only a worker's log."""
        note = self.tracker.record_set_aside(trial_id, result)
        if note:
            print(f"[{self.spec.name}] configuration {result['config_id']}: {note}", flush=True)
