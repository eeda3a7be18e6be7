"""Gradient estimators for AIR's discrete number of objects n: one objective per kind.

AIR's ELBO depends on n through the canvas and the masked what/where KLs; n is discrete, so
its gradient needs an estimator (estimator.kind):
  reinforce  score function on log q(n) with NVIL centring/normalisation and a neural baseline
             (both kept by the model, air.py); optionally per step with the reward-to-go, and
             warmed up linearly.
  vimco      S particles per image, the importance-weighted bound, and the leave-one-out
             control variate with the geometric mean of the other log weights
             (Mnih & Rezende 2016, "Variational inference for Monte Carlo objectives").
  relaxed    z_pres relaxed to a binary Concrete (Gumbel-sigmoid) sample, the canvas and the
             object KLs scaled by the relaxed presence, and back-propagation through it. Biased
             for any temperature > 0; the bias vanishes as the temperature goes to 0 (where the
             variance grows). Only training uses the relaxation: the held-out count stays the
             deterministic rule (presence probability > 0.5) and the held-out ELBO the discrete one.

The model (air.py) picks the kind and computes what it needs; these functions only combine
the tensors they are given (airsearch.model.terms), so they never call back into the model.

Shapes: R replicas, B images (S * B with particles, particle s of image b at s * B + b),
K steps. Every reduction is over B, S or K inside one replica: replicas stay independent.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from airsearch.model.terms import ElboTerms, Inference

UNIFORM_EPS = 1e-6  # keeps the logistic noise of the relaxation finite


# ------------------------------------------------------------------------------- REINFORCE
def reinforce(inference: Inference, elbo: ElboTerms, advantage: torch.Tensor,
              scale: torch.Tensor | float, weight: float, reward_to_go: bool) -> torch.Tensor:
    """ELBO back-propagated through the continuous latents, plus `weight` x the score term.

    scale is the NVIL normaliser the advantage was divided by.
    """
    prefix = kl_before_each_step(elbo.kl_steps, elbo.present) if reward_to_go else None
    score = reinforce_score(inference.pres_logits, inference.n, advantage, prefix, scale)
    # The analytic KL of z_pres is the other half of n's objective: it is divided by the same
    # NVIL scale as the score term. Dividing only the score would weigh the z_pres prior
    # `scale` times (tens of nats) more than the evidence and switch steps off.
    return elbo.fitted_log_lik - elbo.kl_objects - elbo.kl_z_pres / scale + weight * score


def step_log_probs(logits: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """(R, B, K) log-probability of each presence decision the chain took; sums to log q(n).

    Step i decides "present" for i < n and "stop" at i = n (< K); later steps decide nothing.
    """
    steps = torch.arange(logits.shape[-1], device=logits.device)
    n = n.unsqueeze(-1)  # (R, B, 1)
    return (F.logsigmoid(logits) * (steps < n) + F.logsigmoid(-logits) * (steps == n))


def kl_before_each_step(kl_steps: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """(R, B, K) sum over j < i of the masked object KLs: the part of the learning signal
    that step i's decision cannot change (the continuous latents never see z_pres)."""
    masked = (kl_steps * present).detach()  # (R, B, K)
    return torch.cumsum(masked, dim=-1) - masked


def reinforce_score(logits: torch.Tensor, n: torch.Tensor, advantage: torch.Tensor,
                    prefix_kl: torch.Tensor | None = None,
                    scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """(R, B) term whose gradient is the score-function estimate for n.

    advantage (R, B) is the (centred, baselined, normalised) learning signal. With prefix_kl
    (reward-to-go) step i's decision gets advantage + prefix_kl_i / scale: its own signal with
    the KLs of earlier steps removed. That extra term is zero in expectation (prefix_kl_i is
    fixed once the chain reaches step i), so it changes the variance, never the mean.
    """
    decisions = step_log_probs(logits, n)  # (R, B, K)
    score = advantage.detach() * decisions.sum(-1)
    if prefix_kl is not None:
        score = score + (decisions * prefix_kl).sum(-1) / scale
    return score


# ------------------------------------------------------------------------------- VIMCO
def vimco(inference: Inference, elbo: ElboTerms, where_prior_loc: torch.Tensor,
          where_prior_sd: torch.Tensor, particles: int) -> torch.Tensor:
    """VIMCO's surrogate from the S particles of each image laid along the batch."""
    ratio = (normal_log_ratio(inference.z_where, inference.where_loc, inference.where_sd,
                              where_prior_loc, where_prior_sd)
             + normal_log_ratio(inference.z_what, inference.what_loc, inference.what_sd,
                                0.0, 1.0))  # (R, B, K)
    log_q_n = elbo.z_pres_posterior.log_prob(inference.n)
    log_w = log_weights(elbo.fitted_log_lik, ratio, elbo.present,
                        elbo.z_pres_prior.log_prob(inference.n), log_q_n)
    return vimco_surrogate(log_w, log_q_n, particles)


def normal_log_ratio(z: torch.Tensor, loc: torch.Tensor, sd: torch.Tensor,
                     prior_loc: torch.Tensor | float, prior_sd: torch.Tensor | float
                     ) -> torch.Tensor:
    """log N(z; prior) - log N(z; loc, sd), summed over the last dim: (R, B, K)."""
    prior_sd = torch.as_tensor(prior_sd, dtype=z.dtype, device=z.device)
    log_prior = -0.5 * ((z - prior_loc) / prior_sd).pow(2) - prior_sd.log()
    log_q = -0.5 * ((z - loc) / sd).pow(2) - sd.log()
    return (log_prior - log_q).sum(-1)


def log_weights(log_lik: torch.Tensor, object_log_ratio: torch.Tensor, present: torch.Tensor,
                log_prior_n: torch.Tensor, log_q_n: torch.Tensor) -> torch.Tensor:
    """(R, S*B) log p(x, z) - log q(z | x) of each sample: the importance weight's log.

    object_log_ratio (R, S*B, K) is what + where log prior - log posterior per step; steps
    past n are not part of the sample and are masked out.
    """
    return log_lik + (object_log_ratio * present).sum(-1) + log_prior_n - log_q_n


def vimco_surrogate(log_w: torch.Tensor, log_q_n: torch.Tensor, particles: int
                    ) -> torch.Tensor:
    """(R, B) surrogate whose gradient is VIMCO's estimate of the S-sample bound's gradient.

    log_w, log_q_n: (R, S*B). Returns the bound log mean_s w_s (back-propagated through the
    continuous latents and log q(n)) plus sum_s (L - L_{-s}) log q(n_s), where L_{-s} replaces
    log w_s by the mean of the other particles' log weights.
    """
    R, SB = log_w.shape
    S = particles
    if SB % S:
        raise ValueError(f"vimco: batch of {SB} samples is not a multiple of {S} particles")
    log_w = log_w.view(R, S, SB // S)  # (R, S, B)
    log_q_n = log_q_n.view(R, S, SB // S)
    bound = torch.logsumexp(log_w, dim=1) - math.log(S)  # (R, B)
    w = log_w.detach()
    others_mean = (w.sum(1, keepdim=True) - w) / (S - 1)  # (R, S, B) geometric mean of w_{-s}
    eye = torch.eye(S, dtype=torch.bool, device=w.device).view(1, S, S, 1)
    # (R, S, S, B): row s is the particle set with w_s replaced by its leave-one-out estimate
    swapped = torch.where(eye, others_mean.unsqueeze(2), w.unsqueeze(1))
    leave_one_out = torch.logsumexp(swapped, dim=2) - math.log(S)  # (R, S, B)
    signal = bound.detach().unsqueeze(1) - leave_one_out  # (R, S, B)
    return bound + (signal * log_q_n).sum(1)


# ------------------------------------------------------------------------------- relaxed
def relaxed(relaxed_fit: torch.Tensor, elbo: ElboTerms, presence: torch.Tensor
            ) -> torch.Tensor:
    """The ELBO with the canvas and object KLs weighted by the relaxed presence (R, B, K).

    relaxed_fit (R, B) is the likelihood the objective fits (blurred comparison included) of the
    canvas drawn with that presence.
    """
    return relaxed_fit - (elbo.kl_steps * presence).sum(-1) - elbo.kl_z_pres


def relaxed_presence(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float
                     ) -> torch.Tensor:
    """(R, B, K) relaxed presence: cumulative product of binary Concrete z_pres samples.

    Uses the same uniforms as the discrete chain (z_i = [u_i < p_i]): logit(u) is logistic
    noise and sigmoid((logit_i - logit(u_i)) / t) -> z_i as t -> 0, so the relaxed sample
    rounds to the sampled n. The cumulative product keeps "once 0, always 0".
    """
    u = uniforms.clamp(UNIFORM_EPS, 1 - UNIFORM_EPS)
    z = torch.sigmoid((logits - (u.log() - (-u).log1p())) / temperature)  # (R, B, K)
    return torch.cumprod(z, dim=-1)
