"""A study: what it varies, how it searches, and how a configuration is scored.

A study asks one question ("does prior annealing make AIR count more reliably?") and answers
it with convergence rates: every configuration is trained on the same seeds and scored by
the share that converge. `StudySpec` is the validated form of a study file
(airsearch.study.spec_file reads and checks one).

Objective: the convergence rate k/n, maximised. Ties are broken by the mean held-out count
accuracy over all seeds, added with weight TIE_BREAK_WEIGHT: less than one seed's worth of
rate for up to MAX_SEEDS seeds, so it never overturns a difference in k.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

from airsearch.config import AIRConfig
from airsearch.evaluation.outcomes import ACCURACY

MODES = ("grid", "optuna")
SAMPLERS = ("tpe", "random")
TIE_BREAKS = (ACCURACY, "none")
TIE_BREAK_WEIGHT = 1e-3
MAX_SEEDS = 999
# Set by the study's own sections (training, convergence), never by `config` or `space`.
OWNED_KEYS = {"train.steps": "training.steps", "train.eval_every": "training.eval_every",
              "eval.threshold": "convergence.threshold", "eval.hold": "convergence.hold"}


SCHEDULERS = ("none", "asha")


@dataclass(frozen=True)
class EarlyStopping:
    """Ray Tune's ASHA over configurations: at `grace` of the run, and at grace x
    reduction_factor^k after it, a configuration whose objective so far is below the top
    1/reduction_factor of those that reached that step stops; its seeds are judged at their
    last evaluation, like seeds a verdict stopped."""

    kind: str = "none"
    grace: float = 0.25  # fraction of training.steps before the first rung
    reduction_factor: int = 2

    def grace_steps(self, steps: int, eval_every: int) -> int:
        """The first rung, in steps: the evaluation nearest grace x steps (never before the
        first), so each rung compares configurations at an evaluation."""
        return max(eval_every, round(self.grace * steps / eval_every) * eval_every)


class SpecError(ValueError):
    """A study file is invalid; the message names the file, the field and what is allowed."""


@dataclass(frozen=True)
class Dimension:
    """One searched key: listed `values` (grid values or categorical choices) or a range."""

    key: str
    values: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    when: tuple[tuple[str, tuple], ...] = ()

    def active(self, assigned: dict[str, Any]) -> bool:
        """Whether this key matters given the values already chosen for the keys it depends on."""
        return all(assigned.get(key) in allowed for key, allowed in self.when)

    def describe(self) -> str:
        if self.values is not None:
            text = "{" + ", ".join(map(str, self.values)) + "}"
        else:
            text = f"[{self.low}, {self.high}]" + (" log" if self.log else "")
            text += f" step {self.step}" if self.step else ""
        for key, allowed in self.when:
            text += f"  when {key} in {{{', '.join(map(str, allowed))}}}"
        return text


@dataclass(frozen=True)
class StudySpec:
    """A validated study file."""

    name: str
    path: str
    fixed: dict[str, Any]
    seeds: tuple[int, ...]
    steps: int
    eval_every: int
    threshold: float
    hold: int
    tie_break: str
    mode: str
    space: tuple[Dimension, ...]
    sampler: str = "tpe"
    sampler_seed: int = 0
    budget: int = 0
    points_to_evaluate: tuple[dict[str, Any], ...] = ()
    listed: tuple[dict[str, Any], ...] = ()  # grid mode's explicit `configurations`
    cpus: float = 1.0
    gpus: float = 0.0
    max_concurrent: int = 1
    storage: str = ""
    reference: dict[str, Any] | None = None
    early_stopping: EarlyStopping = EarlyStopping()
    question: str = field(default="", compare=False)

    def base_flat(self) -> dict[str, Any]:
        """The fixed part of every configuration: `config` plus training and convergence."""
        return {**self.fixed, "train.steps": self.steps, "train.eval_every": self.eval_every,
                "eval.threshold": self.threshold, "eval.hold": self.hold}

    def config_for(self, overrides: dict[str, Any]) -> AIRConfig:
        """The full AIR config of one configuration (raises ConfigError if inconsistent)."""
        return AIRConfig.from_flat({**self.base_flat(), **overrides})

    def configurations(self) -> list[dict[str, Any]]:
        """Grid mode: the listed configurations, or else every distinct combination of the
        space's values with inactive keys dropped."""
        found: dict[str, dict[str, Any]] = {}
        for listed in self.listed:
            found.setdefault(config_id(listed), dict(listed))
        if self.listed:
            return list(found.values())
        for combo in itertools.product(*(dim.values for dim in self.space)):
            chosen: dict[str, Any] = {}
            for dim, value in zip(self.space, combo, strict=True):
                if dim.active(chosen):
                    chosen[dim.key] = value
            found.setdefault(config_id(chosen), chosen)
        return list(found.values())

    @property
    def reference_id(self) -> str:
        """Config id of the configuration every other one is compared with ('' if none)."""
        return config_id(self.reference) if self.reference is not None else ""

    @property
    def varied(self) -> tuple[str, ...]:
        return tuple(dim.key for dim in self.space)

    @property
    def trial_count(self) -> int:
        return len(self.configurations()) if self.mode == "grid" else self.budget

    def objective(self, rate: float, mean_accuracy: float) -> float:
        """Rate first; the tie-break can never outweigh one more converged seed."""
        if self.tie_break == "none" or not math.isfinite(mean_accuracy):
            return rate
        return rate + TIE_BREAK_WEIGHT * mean_accuracy


def config_id(overrides: dict[str, Any]) -> str:
    """A short stable id of one configuration of a study (its searched values)."""
    text = json.dumps(overrides, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]
