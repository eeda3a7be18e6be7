"""Annealing schedules for the z_pres prior's success probability, pure functions of the step.

The reference recipes anneal the probability that another object is present: high at the
start so the model explores using its steps, low at the end so each extra step must pay for
itself (Kosiorek: 1-1e-15 -> 1e-7 exponentially over 1e5 steps after a 1e3-step hold).
"""

from __future__ import annotations

import math

from airsearch.config import ZPresPrior


def progress(step: int, hold: int, duration: int) -> float:
    """0 while held, then rising linearly to 1 over `duration` steps."""
    return min(max((step - hold) / duration, 0.0), 1.0)


def z_pres_prior_logit(prior: ZPresPrior, step: int) -> float:
    """The prior's log-odds of presence at `step`, computed in float64 so p = 1-1e-15 survives."""
    t = progress(step, prior.hold, prior.duration)
    p0, p1 = prior.initial, prior.final
    if prior.schedule == "constant":
        return _logit(p0)
    if prior.schedule == "linear":
        return _logit(p0 + (p1 - p0) * t)
    if prior.schedule == "exponential":
        return _logit(math.exp(math.log(p0) + (math.log(p1) - math.log(p0)) * t))
    if prior.schedule == "logit":
        return _logit(p0) + (_logit(p1) - _logit(p0)) * t
    raise ValueError(f"prior.z_pres.schedule: unknown {prior.schedule!r}")


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)
