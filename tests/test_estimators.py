"""Gradient estimators for n: unbiased ones match the exact gradient (enumerating n), the
relaxed one's bias shrinks with the temperature, and each one trains the real model."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch

from airsearch import schedules
from airsearch.config import AIRConfig, ConfigError
from airsearch.evaluation.gradient_variance import classify, gradient_variance
from airsearch.model import estimators
from airsearch.model.air import AIR
from airsearch.model.distributions import NumSteps
from airsearch.schedules import Schedule
from airsearch.training.step import ReplicaStep

SAMPLES, CHUNKS = 200_000, 50
THETA = torch.tensor([0.4, -0.3, 0.8])  # presence logits of the toy chain, K = 3
PHI = 1.3                               # a continuous parameter the reward depends on
COSTS = torch.tensor([0.5, 1.5, 2.5])   # per-step "object KL" of the toy
TINY = {"model.lstm_size": 16, "model.mlp_width": 16, "model.mlp_depth": 1,
        "model.z_what_size": 4, "model.glimpse_size": 8, "estimator.baseline_width": 16,
        "data.canvas_size": 24, "data.digit_size": 10.0, "train.batch_size": 8}


def _reward(n: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """A differentiable toy learning signal: log-likelihood-like term minus masked step costs."""
    present = (torch.arange(3) < n.unsqueeze(-1)).float()
    return -(n.float() - phi).pow(2) - (COSTS * present).sum(-1)


def _exact_gradient() -> torch.Tensor:
    """d/d(theta, phi) of E_q[reward(n)], enumerating n = 0..3."""
    theta, phi = THETA.clone().requires_grad_(), torch.tensor(PHI, requires_grad=True)
    n = torch.arange(4)
    value = (NumSteps(theta).probs * _reward(n, phi)).sum()
    return torch.cat([g.flatten() for g in torch.autograd.grad(value, (theta, phi))])


def _sampled_gradient(surrogate_fn, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the estimator over SAMPLES draws, and its Monte Carlo standard error."""
    gen = torch.Generator().manual_seed(seed)
    means = []
    for _ in range(CHUNKS):
        theta, phi = THETA.clone().requires_grad_(), torch.tensor(PHI, requires_grad=True)
        u = torch.rand(1, SAMPLES // CHUNKS, 3, generator=gen)  # (R=1, B, K)
        logits = theta.expand_as(u)
        surrogate = surrogate_fn(logits, u, phi)  # (1, B)
        grads = torch.autograd.grad(surrogate.mean(), (theta, phi))
        means.append(torch.cat([g.flatten() for g in grads]))
    stacked = torch.stack(means)
    return stacked.mean(0), stacked.std(0) / math.sqrt(CHUNKS)


def _reinforce(reward_to_go: bool, baseline: float = 2.0, scale: float = 1.0,
               biased: bool = False):
    def surrogate(logits, u, phi):
        n = NumSteps(logits).sample_from_uniforms(u)
        signal = _reward(n, phi)
        b = signal.detach() / 2 if biased else baseline  # a baseline that sees n is biased
        present = (torch.arange(3) < n.unsqueeze(-1)).float()
        prefix = (estimators.kl_before_each_step(COSTS.expand_as(present), present)
                  if reward_to_go else None)
        advantage = (signal.detach() - b) / scale
        return signal + scale * estimators.reinforce_score(logits, n, advantage, prefix, scale)
    return surrogate


@pytest.mark.parametrize("reward_to_go", [False, True])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_reinforce_is_unbiased(reward_to_go, scale):
    """Mean REINFORCE gradient (plain and reward-to-go, any NVIL scale) = exact gradient."""
    mean, se = _sampled_gradient(_reinforce(reward_to_go, scale=scale))
    exact = _exact_gradient()
    assert torch.all((mean - exact).abs() < 4 * se + 1e-4), (mean, exact, se)


def test_gradient_check_detects_bias():
    """The check has power: a baseline that depends on the sampled n is caught."""
    mean, se = _sampled_gradient(_reinforce(False, biased=True))
    assert torch.any((mean - _exact_gradient()).abs() > 10 * se)


def test_reward_to_go_reduces_variance():
    """The per-step signal drops the earlier steps' costs from later decisions."""
    _, se_plain = _sampled_gradient(_reinforce(False))
    _, se_rtg = _sampled_gradient(_reinforce(True))
    assert float(se_rtg[:3].sum()) < float(se_plain[:3].sum())


def test_step_log_probs_sum_to_log_q():
    logits = torch.randn(2, 50, 3)
    n = torch.randint(0, 4, (2, 50))
    torch.testing.assert_close(estimators.step_log_probs(logits, n).sum(-1),
                               NumSteps(logits).log_prob(n))


# ------------------------------------------------------------------- VIMCO
def _log_joint(n: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Unnormalised log p(x, n) of the toy (a differentiable function of phi)."""
    return -0.5 * (n.float() - phi).pow(2) - 0.3 * n.float()


def _exact_vimco_gradient(particles: int) -> torch.Tensor:
    """d/d(theta, phi) of E[log mean_s w_s], enumerating every tuple of S counts."""
    theta, phi = THETA.clone().requires_grad_(), torch.tensor(PHI, requires_grad=True)
    q = NumSteps(theta)
    value = torch.zeros(())
    for ns in itertools.product(range(4), repeat=particles):
        n = torch.tensor(ns)
        log_q = q.log_probs[n]
        log_w = _log_joint(n, phi) - log_q
        value = value + log_q.sum().exp() * (torch.logsumexp(log_w, 0) - math.log(particles))
    return torch.cat([g.flatten() for g in torch.autograd.grad(value, (theta, phi))])


@pytest.mark.parametrize("particles", [2, 3])
def test_vimco_is_unbiased(particles):
    """VIMCO's mean gradient = the exact gradient of the S-particle bound."""
    def surrogate(logits, u, phi):
        B = u.shape[1] // particles * particles
        q = NumSteps(logits[:, :B])
        n = q.sample_from_uniforms(u[:, :B])  # (1, S*B') particles side by side
        log_q = q.log_prob(n)
        log_w = estimators.log_weights(_log_joint(n, phi), torch.zeros(1, B, 3),
                                       torch.zeros(1, B, 3), torch.zeros(1, B), log_q)
        return estimators.vimco_surrogate(log_w, log_q, particles)

    mean, se = _sampled_gradient(surrogate)
    exact = _exact_vimco_gradient(particles)
    assert torch.all((mean - exact).abs() < 4 * se + 1e-4), (mean, exact, se)


def test_vimco_keeps_replicas_apart():
    """Replica 1's log weights never change replica 0's surrogate."""
    log_w = torch.randn(2, 12)
    log_q = torch.randn(2, 12)
    a = estimators.vimco_surrogate(log_w, log_q, 3)
    log_w[1] += torch.randn(12)
    b = estimators.vimco_surrogate(log_w, log_q, 3)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])


# ------------------------------------------------------------------- relaxed
def _relaxed(temperature: float):
    def surrogate(logits, u, phi):
        presence = estimators.relaxed_presence(logits, u, temperature)  # (1, B, K)
        soft_n = presence.sum(-1)
        return -(soft_n - phi).pow(2) - (COSTS * presence).sum(-1)
    return surrogate


def test_relaxed_bias_shrinks_with_temperature():
    """The Concrete relaxation is biased (clearly at t = 1), less so as t falls."""
    exact = _exact_gradient()
    bias = {}
    for t in (1.0, 0.3, 0.05):
        mean, se = _sampled_gradient(_relaxed(t))
        bias[t] = float((mean - exact).norm())
        if t == 1.0:
            assert torch.any((mean - exact).abs() > 10 * se)
    assert bias[0.05] < bias[0.3] < bias[1.0]
    assert bias[0.05] < 0.1 * bias[1.0]


def test_relaxed_rounds_to_the_sampled_count():
    """At a low temperature the relaxed presence equals the discrete chain's mask."""
    logits, u = torch.randn(2, 100, 3), torch.rand(2, 100, 3)
    n = NumSteps(logits).sample_from_uniforms(u)
    mask = (torch.arange(3) < n.unsqueeze(-1)).float()
    relaxed = estimators.relaxed_presence(logits, u, 1e-4)
    assert float((relaxed - mask).abs().max()) < 0.5 and torch.equal(relaxed.round(), mask)


def test_schedules_in_fractions_of_the_run():
    """Warm-up over the first tenth of a 1,000-step run, temperature over the first 1%."""
    config = AIRConfig.from_flat({"estimator.reinforce_warmup_end": 0.1,
                                  "estimator.temperature_initial": 2.0,
                                  "estimator.temperature_final": 0.5,
                                  "estimator.temperature_end": 0.01}).estimator
    assert schedules.warmup_weight(config, 1000, 0) == 0.0
    assert schedules.warmup_weight(config, 1000, 50) == 0.5
    assert schedules.warmup_weight(config, 1000, 999) == 1.0
    assert schedules.warmup_weight(config, 2000, 50) == 0.25  # the same fraction of a longer run
    assert schedules.temperature(config, 1000, 0) == pytest.approx(2.0)
    assert schedules.temperature(config, 1000, 5) == pytest.approx(1.0)
    assert schedules.temperature(config, 1000, 1000) == pytest.approx(0.5)


@pytest.mark.parametrize("old, new", [("prior.z_pres.hold", "prior.z_pres.decay_start"),
                                      ("estimator.reinforce_warmup",
                                       "estimator.reinforce_warmup_end"),
                                      ("estimator.temperature_duration",
                                       "estimator.temperature_end")])
def test_keys_that_counted_steps_name_their_fractions(old, new):
    with pytest.raises(ConfigError, match=f"use {new}, a fraction of train.steps"):
        AIRConfig.from_flat({old: 100})


def test_vimco_needs_two_particles():
    with pytest.raises(ConfigError, match="estimator.particles"):
        AIRConfig.from_flat({"estimator.kind": "vimco"})
    AIRConfig.from_flat({"estimator.kind": "vimco", "estimator.particles": 2})


# ------------------------------------------------------------------- the real model
def _images(n: int = 64, size: int = 24) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(n, size, size, generator=gen) ** 6 * 255).to(torch.uint8)


@pytest.mark.parametrize("overrides", [
    {"estimator.kind": "reinforce"},
    {"estimator.kind": "reinforce", "estimator.reward_to_go": True,
     "estimator.reinforce_warmup_end": 0.5},
    {"estimator.kind": "vimco", "estimator.particles": 3},
    {"estimator.kind": "relaxed", "estimator.temperature_end": 0.5},
    {"model.residual_input": False, "estimator.baseline_input": "image_and_z"},
])
def test_training_steps_are_finite(overrides):
    """A few real optimisation steps of two replicas with each estimator.

    Every parameter gets a gradient at every step: the step drops gradients instead of
    zeroing them, which trains the same only because none is ever left out of a backward.
    """
    config = AIRConfig.from_flat({**TINY, **overrides})
    trainer = ReplicaStep(config, [0, 1], _images())
    before = [p.detach().clone() for p in trainer.model.presence_head.parameters()]
    for step in range(3):
        elbo, diverged = trainer(step)
        assert torch.all(torch.isfinite(elbo)) and not diverged.any()
        assert all(p.grad is not None for p in trainer.model.parameters())
    after = list(trainer.model.presence_head.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_gradient_variance_orders_baselines():
    """Without any baseline the presence head's gradient is far noisier than with NVIL, the
    classes are as documented, and the measurement leaves the model's buffers alone."""
    config = AIRConfig.from_flat(TINY)
    classes = classify(AIR(config, [0]))
    assert {n.split(".")[0] for n, _ in classes["score"]} == {"presence_head"}
    assert not any(n.startswith("baseline") for c in classes.values() for n, _ in c)
    x = _images(8).float().div(255).unsqueeze(0).expand(2, 8, 24, 24)
    results = {}
    for label, extra in (("none", {"estimator.centre_signal": False,
                                   "estimator.normalise_signal": False}), ("nvil", {})):
        model = AIR(AIRConfig.from_flat({**TINY, **extra}), [0, 1])
        if label == "none":
            with torch.no_grad():
                model.baseline.out.weight.zero_()
                model.baseline.out.bias.zero_()
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        schedule = Schedule(z_pres_prior_logit=-4.6, temperature=0.1, likelihood_sd=0.3)
        results[label] = gradient_variance(model, x, schedule, [0, 1], 6)
        assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
        assert all(p.grad is None for p in model.parameters())
    assert torch.all(results["none"].score > 10 * results["nvil"].score)
    assert torch.all(results["none"].backprop > 0)


def test_trainer_logs_diagnostics_and_localisation(tmp_path, monkeypatch):
    """Per-seed metrics carry diag/grad_var_* and eval/iou, and attention.png is written."""
    monkeypatch.setenv("AIRSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AIRSEARCH_MNIST_DIR", raising=False)
    from airsearch.training.loop import train_seeds

    config = AIRConfig.from_flat({**TINY, "data.train_images": 256, "data.heldout_images": 32,
                                  "estimator.kind": "vimco", "estimator.particles": 2,
                                  "train.steps": 4, "train.eval_every": 2,
                                  "eval.gradient_variance_every": 4})
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the offline MNIST subset
        train_seeds(config, [0, 1], out_dir=tmp_path / "run", progress=False,
                    on_eval=seen.append)
    first, last = seen[0].per_seed[0], seen[-1].per_seed[0]
    assert "diag/grad_var_score" not in first  # step 2: not a multiple of 4
    assert last["diag/grad_var_score"] > 0 and last["diag/grad_var_backprop"] > 0
    assert 0 <= last["eval/iou"] <= 1 and "eval/centre_error" in last
    for seed in (0, 1):
        assert (tmp_path / "run" / f"seed_{seed}" / "attention.png").exists()
