"""The Tune callback that hands each trial's results to the study's MLflow writer."""

from __future__ import annotations

from typing import Any

from ray import tune

from airsearch.study.spec import StudySpec
from airsearch.study.tracking import StudyTracker


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
        if trial.last_result.get("finished"):
            self.tracker.log_final(trial.trial_id, trial.last_result)

    def _say_set_aside(self, trial_id: str, result: dict) -> None:
        """What a trial set aside goes to the launch's own output, not only a worker's log."""
        note = self.tracker.record_set_aside(trial_id, result)
        if note:
            print(f"[{self.spec.name}] configuration {result['config_id']}: {note}", flush=True)
