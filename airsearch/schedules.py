"""Every number that changes with the training step, as pure functions of (config, step).

Every change is set in fractions of train.steps (`_between`), so one setting suits a short
run and a long study alike.

A training step evaluates each once: the loss's into one `Schedule` (evaluation and
diagnostics take the schedule of the step they look at), the optimiser's learning-rate factor
on its own. Keeping them together shows at a glance what a run anneals:
  z_pres prior   the success probability of the count prior: high at the start so the model
                 explores using its steps, low at the end so each extra step must pay for
                 itself (Kosiorek: 1-1e-15 -> 1e-7 exponentially over 1e5 steps after 1e3,
                 i.e. between the fractions 0.01 and 1 of the run).
  learning rate  a multiplier on both groups' rates, decaying late in the run.
  REINFORCE      the score term's weight, warmed up from 0 (estimator.reinforce_warmup_end).
  temperature    the Concrete temperature of the relaxed estimator.
  blur           the weight of the blurred image comparison (model.blur_px), 1 -> 0 early on.
  likelihood sd  the pixel likelihood's sd, when it moves to model.likelihood_sd_final.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from airsearch.config import AIRConfig, EstimatorConfig, TrainConfig, ZPresPrior


@dataclass(frozen=True)
class Schedule:
    """The step-dependent numbers the loss of one training step uses."""

    z_pres_prior_logit: float  # log-odds of the z_pres prior's success probability
    temperature: float  # relaxed estimator's Concrete temperature
    likelihood_sd: float  # sd of the Gaussian pixel likelihood
    reinforce_weight: float = 1.0  # weight of the score-function term
    blur_weight: float = 0.0  # weight of the blurred image comparison in the objective


def schedule_at(config: AIRConfig, step: int) -> Schedule:
    """The loss's schedules of `config` at training step `step` (0-based)."""
    steps = config.train.steps
    return Schedule(z_pres_prior_logit=z_pres_prior_logit(config.prior.z_pres, steps, step),
                    temperature=temperature(config.estimator, steps, step),
                    reinforce_weight=warmup_weight(config.estimator, steps, step),
                    blur_weight=blur_weight(config, step),
                    likelihood_sd=likelihood_sd(config, step))


def progress(step: int, hold: int, duration: int) -> float:
    """0 while held, then rising linearly to 1 over `duration` steps."""
    return min(max((step - hold) / duration, 0.0), 1.0)


def z_pres_prior_logit(prior: ZPresPrior, steps: int, step: int) -> float:
    """The prior's log-odds of presence at `step` of a run of `steps`, computed in float64 so
    p = 1-1e-15 survives."""
    t = progress(step, *_between(prior.decay_start, prior.decay_end, steps))
    p0, p1 = prior.initial, prior.final
    if prior.schedule == "constant":
        return _logit(p0)
    if prior.schedule == "linear":
        return _logit(p0 + (p1 - p0) * t)
    if prior.schedule == "exponential":
        return _logit(geometric(p0, p1, t))
    if prior.schedule == "logit":
        return _logit(p0) + (_logit(p1) - _logit(p0)) * t
    raise ValueError(f"prior.z_pres.schedule: unknown {prior.schedule!r}")


def learning_rate_factor(train: TrainConfig, step: int) -> float:
    """Multiplier on both learning rates at `step`: 1 while held, then down to train.lr_final.

    The decay is set in fractions of train.steps, so one default suits a short run and a long
    study alike (docs/recipe.md).
    """
    if train.lr_schedule == "constant":
        return 1.0
    t = progress(step, *_between(train.lr_decay_start, train.lr_decay_end, train.steps))
    if train.lr_schedule == "linear":
        shape = 1.0 - t
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * t))
    return train.lr_final + (1.0 - train.lr_final) * shape


def _between(start: float, end: float, steps: int) -> tuple[int, int]:
    """(steps held, steps the change takes) for a change between the fractions start and end
    of a run of `steps`, rounded: a schedule set in fractions suits a short run and a long
    study alike."""
    hold = round(start * steps)
    return hold, max(1, round(end * steps) - hold)


def geometric(start: float, end: float, t: float) -> float:
    """start -> end as t goes 0 -> 1, evenly in log space."""
    return math.exp(math.log(start) + (math.log(end) - math.log(start)) * t)


def warmup_weight(estimator: EstimatorConfig, steps: int, step: int) -> float:
    """Weight of the REINFORCE term: 0 -> 1 linearly over the first
    estimator.reinforce_warmup_end of the run."""
    if estimator.reinforce_warmup_end == 0:
        return 1.0
    return progress(step, *_between(0.0, estimator.reinforce_warmup_end, steps))


def blur_weight(config: AIRConfig, step: int) -> float:
    """Weight of the blurred comparison: 1 -> 0 linearly over model.blur_until of train.steps
    (0 throughout without a blur)."""
    if config.model.blur_px == 0:
        return 0.0
    return 1.0 - progress(step, *_between(0.0, config.model.blur_until, config.train.steps))


def likelihood_sd(config: AIRConfig, step: int) -> float:
    """The likelihood's sd: model.likelihood_sd (after its auto rule), moving geometrically to
    model.likelihood_sd_final between the fractions model.likelihood_sd_start and _end of
    train.steps."""
    m, start = config.model, config.likelihood_sd()
    if m.likelihood_sd_final == 0:
        return start
    t = progress(step, *_between(m.likelihood_sd_start, m.likelihood_sd_end, config.train.steps))
    return geometric(start, m.likelihood_sd_final, t)


def temperature(estimator: EstimatorConfig, steps: int, step: int) -> float:
    """Concrete temperature: geometric from temperature_initial to temperature_final, reached
    at the fraction estimator.temperature_end of the run."""
    done = progress(step, *_between(0.0, estimator.temperature_end, steps))
    return geometric(estimator.temperature_initial, estimator.temperature_final, done)


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)
