"""NumSteps (truncated geometric number of steps) and the z_pres prior schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from airsearch.config import ZPresPrior
from airsearch.model.distributions import NumSteps
from airsearch.schedules import z_pres_prior_logit


def _logit(p):
    return math.log(p) - math.log1p(-p)


@pytest.mark.parametrize("K", [1, 2, 3, 5])
@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_probs_sum_to_one(K, batch):
    """P(n) over n = 0..K sums to 1 for random logits, any K and batch shape."""
    gen = torch.Generator().manual_seed(K)
    logits = torch.randn(*batch, K, generator=gen, dtype=torch.float64) * 3
    probs = NumSteps(logits).probs
    assert probs.shape == (*batch, K + 1)
    assert torch.all(probs >= 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(batch, dtype=torch.float64))


def test_probs_match_the_chain_formula():
    """P(n) = prod_{i<n} p_i (1 - p_n), P(K) = prod p_i, written out by hand."""
    p = torch.tensor([0.9, 0.6, 0.3], dtype=torch.float64)
    expected = torch.tensor([0.1, 0.9 * 0.4, 0.9 * 0.6 * 0.7, 0.9 * 0.6 * 0.3],
                            dtype=torch.float64)
    torch.testing.assert_close(NumSteps(torch.logit(p)).probs, expected)
    n = torch.arange(4)
    batched = NumSteps(torch.logit(p).expand(4, 3))
    torch.testing.assert_close(batched.log_prob(n), expected.log())


def test_sampling_matches_probs():
    """Sampling the Bernoulli chain from uniforms gives frequencies matching probs (chi-square)."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([[1.5, 0.0, -1.0, 2.0], [-0.5, 3.0, 0.5, -2.0]])
    N = 40_000
    u = torch.rand(N, 2, 4, generator=gen)
    dist = NumSteps(logits.expand(N, 2, 4))
    n = dist.sample_from_uniforms(u)  # (N, 2)
    for b in range(2):
        counts = torch.bincount(n[:, b], minlength=5).double()
        expected = NumSteps(logits[b].double()).probs * N
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 25.0, (b, counts, expected)  # 4 dof: p(chi2 > 25) ~ 5e-5


def test_sampling_stops_at_first_failure():
    """Once a step fails, later successes do not count (n = leading ones)."""
    logits = torch.zeros(3)  # p = 0.5
    u = torch.tensor([[0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.1, 0.1], [0.1, 0.1, 0.1]])
    n = NumSteps(logits.expand(4, 3)).sample_from_uniforms(u)
    assert n.tolist() == [1, 2, 0, 3]


def test_kl_matches_monte_carlo():
    """KL(q||p) equals a Monte Carlo estimate of E_q[log q(n) - log p(n)]."""
    gen = torch.Generator().manual_seed(1)
    q = NumSteps(torch.tensor([2.0, 0.5, -1.0], dtype=torch.float64))
    p = NumSteps(torch.full((3,), _logit(0.2), dtype=torch.float64))
    N = 200_000
    u = torch.rand(N, 3, generator=gen, dtype=torch.float64)
    n = NumSteps(q.logits.expand(N, 3)).sample_from_uniforms(u)
    mc = (q.log_probs[n] - p.log_probs[n]).mean()
    analytic = q.kl(p)
    assert float(analytic) > 0
    assert abs(float(mc - analytic)) < 0.02 * float(analytic) + 0.01


def test_kl_zero_for_identical():
    """KL of a distribution to itself is 0, and positive to a different one."""
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    q = NumSteps(logits)
    torch.testing.assert_close(q.kl(NumSteps(logits.clone())), torch.zeros(5), atol=1e-6, rtol=0)
    assert torch.all(q.kl(NumSteps(logits + 1.0)) > 0)


def test_kl_is_not_the_independent_bernoulli_sum():
    """The KL on n differs from the sum of per-step Bernoulli KLs (the known wrong formula)."""
    q_logits = torch.tensor([2.0, 1.0, -1.0], dtype=torch.float64)
    p_logit = _logit(0.01)
    q = NumSteps(q_logits)
    p = NumSteps(torch.full((3,), p_logit, dtype=torch.float64))
    qp, pp = torch.sigmoid(q_logits), torch.sigmoid(torch.tensor(p_logit, dtype=torch.float64))
    bern = (qp * (qp.log() - pp.log()) + (1 - qp) * ((1 - qp).log() - (1 - pp).log())).sum()
    assert abs(float(q.kl(p) - bern)) > 0.1
    # With a first step that almost always stops, later steps must hardly matter.
    q_stop = NumSteps(torch.tensor([-10.0, 5.0, 5.0], dtype=torch.float64))
    p_same_first = NumSteps(torch.tensor([-10.0, -5.0, -5.0], dtype=torch.float64))
    assert float(q_stop.kl(p_same_first)) < 1e-2


@pytest.mark.parametrize("prior_p", [1 - 1e-15, 1e-7])
def test_kl_stable_for_extreme_priors(prior_p):
    """Priors 1-1e-15 and 1e-7 (the annealing endpoints) give finite KL, log_prob and grads."""
    logit = _logit(prior_p)
    p = NumSteps(torch.full((4, 3), logit))
    q_logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(3),
                           requires_grad=True)
    q = NumSteps(q_logits)
    kl = q.kl(p)
    assert torch.all(torch.isfinite(kl)) and torch.all(kl >= -1e-5)
    assert torch.all(torch.isfinite(p.log_probs))
    kl.sum().backward()
    assert torch.all(torch.isfinite(q_logits.grad))


def test_log_probs_use_stable_logsigmoid():
    """log_probs agree with logsigmoid sums even where sigmoid rounds to 0 or 1."""
    logits = torch.tensor([40.0, -40.0])
    lp = NumSteps(logits).log_probs
    expected = torch.stack([F.logsigmoid(-logits[0]), F.logsigmoid(logits[0]) +
                            F.logsigmoid(-logits[1]), F.logsigmoid(logits).sum()])
    torch.testing.assert_close(lp, expected)


# ------------------------------------------------------------------------------ schedules

RUN = 1000  # steps of the run the fractions below are taken of


def _prior(schedule, initial=0.9, final=0.01, start=0.01, end=0.11):
    """Held for steps 0-10 of RUN, then decaying over the next 100 steps."""
    return ZPresPrior(schedule=schedule, initial=initial, final=final, decay_start=start,
                      decay_end=end)


def _p(prior, step):
    return 1.0 / (1.0 + math.exp(-z_pres_prior_logit(prior, RUN, step)))


@pytest.mark.parametrize("schedule", ["constant", "linear", "exponential", "logit"])
def test_schedule_starts_at_initial_and_holds(schedule):
    """Every schedule starts at `initial` and stays there through the hold."""
    prior = _prior(schedule)
    for step in (0, 5, 10):
        assert _p(prior, step) == pytest.approx(0.9, rel=1e-9)


@pytest.mark.parametrize("schedule", ["linear", "exponential", "logit"])
def test_schedule_ends_at_final(schedule):
    """Decaying schedules reach `final` at the fraction decay_end of the run and stay there."""
    prior = _prior(schedule)
    assert _p(prior, 11) < 0.9
    for step in (110, 111, 10_000):
        assert _p(prior, step) == pytest.approx(0.01, rel=1e-9)
    assert 0.01 < _p(prior, 60) < 0.9


def test_constant_ignores_final():
    """The constant schedule never moves off `initial`."""
    assert _p(_prior("constant"), 10_000) == pytest.approx(0.9)


def test_midpoints():
    """Halfway: linear is the arithmetic mean, exponential the geometric mean, logit the mean
    log-odds."""
    half = 60  # held 10 steps + half of the 100-step decay
    assert _p(_prior("linear"), half) == pytest.approx((0.9 + 0.01) / 2, rel=1e-9)
    assert _p(_prior("exponential"), half) == pytest.approx(math.sqrt(0.9 * 0.01), rel=1e-9)
    assert z_pres_prior_logit(_prior("logit"), RUN, half) == pytest.approx(
        (_logit(0.9) + _logit(0.01)) / 2, rel=1e-9)


def test_schedules_are_monotone():
    """A decay from a high to a low probability never goes back up."""
    for schedule in ("linear", "exponential", "logit"):
        prior = _prior(schedule)
        values = [z_pres_prior_logit(prior, RUN, s) for s in range(0, 130)]
        assert all(a >= b for a, b in zip(values, values[1:], strict=False)), schedule


def test_kosiorek_extreme_prior_is_finite():
    """p = 1-1e-15 stays below 1 in the logit (finite, > 30); 1e-7 gives a finite negative one."""
    steps = 101_000  # held 1,000 steps, then decaying over 100,000
    prior = ZPresPrior(schedule="exponential", initial=1 - 1e-15, final=1e-7,
                       decay_start=1000 / steps, decay_end=1.0)
    start = z_pres_prior_logit(prior, steps, 0)
    assert math.isfinite(start) and start > 30
    end = z_pres_prior_logit(prior, steps, steps)
    assert math.isfinite(end) and end == pytest.approx(_logit(1e-7), rel=1e-9)
    for step in (1000, 1001, 50_000):
        assert math.isfinite(z_pres_prior_logit(prior, steps, step))
