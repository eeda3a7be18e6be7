"""AIR's distributions: the number of objects implied by the z_pres chain, and the Normal
and Gaussian densities of the ELBO.

z_pres_1, z_pres_2, ... are Bernoulli and once one is 0 all later ones are 0, so only the
number of steps n in {0..K} matters: P(n) = prod_{i<n} p_i * (1 - p_n) for n < K and
P(K) = prod_i p_i, a truncated geometric distribution (a plain geometric one when all p_i
are equal). Its KL is computed on n itself, never as K independent Bernoullis, which
would also charge for steps after the chain has already stopped.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


class NumSteps:
    """Distribution over n = 0..K from per-step continue (success) logits of shape (..., K)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        log_continue = F.logsigmoid(logits)      # (..., K) log p_i
        log_stop = F.logsigmoid(-logits)         # (..., K) log (1 - p_i)
        reached = torch.cumsum(log_continue, dim=-1)  # log P(n >= i+1)
        before = F.pad(reached[..., :-1], (1, 0))     # log P(n >= i), i = 0..K-1
        # (..., K + 1): n < K stops at step n; n = K never stops.
        self.log_probs = torch.cat([before + log_stop, reached[..., -1:]], dim=-1)

    @property
    def max_steps(self) -> int:
        return self.logits.shape[-1]

    @property
    def probs(self) -> torch.Tensor:
        return self.log_probs.exp()

    def log_prob(self, n: torch.Tensor) -> torch.Tensor:
        return self.log_probs.gather(-1, n.unsqueeze(-1)).squeeze(-1)

    def sample_from_uniforms(self, u: torch.Tensor) -> torch.Tensor:
        """Run the chain with given U(0,1) draws (..., K): z_i = [u_i < p_i], n = leading ones.

        Taking the uniforms from outside lets every replica use its own generator.
        """
        z = (u < torch.sigmoid(self.logits)).to(torch.long)
        return torch.cumprod(z, dim=-1).sum(-1)

    def kl(self, other: NumSteps) -> torch.Tensor:
        return (self.probs * (self.log_probs - other.log_probs)).sum(-1)


def gaussian_log_lik(x: torch.Tensor, canvas: torch.Tensor, sd: float) -> torch.Tensor:
    """(R, B) Gaussian log-density of images x (R, B, H, W) around the canvas."""
    return (-0.5 * ((x - canvas) / sd).pow(2)).sum(dim=(-1, -2)) - x[0, 0].numel() * (
        math.log(sd) + 0.5 * math.log(2 * math.pi))


def blur_matrix(size: int, sd_px: float) -> torch.Tensor:
    """(size, size) Gaussian kernel over pixel offsets, each row summing to 1: M @ image @ M.T
    blurs an image (the kernel is separable), with nothing from beyond the border."""
    offsets = torch.arange(size, dtype=torch.float32)
    kernel = torch.exp(-0.5 * ((offsets[:, None] - offsets[None, :]) / sd_px).pow(2))
    return kernel / kernel.sum(dim=1, keepdim=True)


def normal_kl(loc: torch.Tensor, sd: torch.Tensor, prior_loc: torch.Tensor | float,
              prior_sd: torch.Tensor | float) -> torch.Tensor:
    """KL(N(loc, sd) || N(prior_loc, prior_sd)) elementwise."""
    prior_sd = torch.as_tensor(prior_sd, dtype=loc.dtype, device=loc.device)
    var_ratio = (sd / prior_sd).pow(2)
    return 0.5 * (var_ratio + ((loc - prior_loc) / prior_sd).pow(2) - 1 - var_ratio.log())
