"""The tensors passed between AIR's guide, its ELBO and the gradient estimators.

The model fills these in (airsearch.model.air); the estimators (airsearch.model.estimators)
only read them, so neither module needs the other's code.

Shapes: R replicas, B images, K steps, H x W canvas, G x G glimpse, D = z_what size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from airsearch.model.distributions import NumSteps


@dataclass
class Noise:
    """All randomness of one step, drawn per replica from that replica's own generator."""

    where: torch.Tensor  # (R, B, K, 3) standard normal
    what: torch.Tensor   # (R, B, K, D) standard normal
    pres: torch.Tensor   # (R, B, K) uniform, drives the z_pres chain

    @staticmethod
    def draw(generators: list[torch.Generator], batch: int, steps: int, z_what: int,
             device: torch.device) -> Noise:
        normals, uniforms = [], []
        for gen in generators:
            normals.append(torch.randn(batch, steps, 3 + z_what, generator=gen, device=device))
            uniforms.append(torch.rand(batch, steps, generator=gen, device=device))
        normal = torch.stack(normals)  # (R, B, K, 3 + D)
        return Noise(normal[..., :3], normal[..., 3:], torch.stack(uniforms))

    @staticmethod
    def zeros(replicas: int, batch: int, steps: int, z_what: int, device: torch.device) -> Noise:
        """Posterior means and a presence threshold of 0.5: the deterministic read-out."""
        return Noise(torch.zeros(replicas, batch, steps, 3, device=device),
                     torch.zeros(replicas, batch, steps, z_what, device=device),
                     torch.full((replicas, batch, steps), 0.5, device=device))


@dataclass
class Inference:
    """What the guide infers for a batch; every field has leading dims (R, B, K)."""

    pres_logits: torch.Tensor  # (R, B, K)
    where_loc: torch.Tensor    # (R, B, K, 3)
    where_sd: torch.Tensor
    z_where: torch.Tensor
    what_loc: torch.Tensor     # (R, B, K, D)
    what_sd: torch.Tensor
    z_what: torch.Tensor
    n: torch.Tensor            # (R, B) number of objects sampled from the z_pres chain
    pres_uniforms: torch.Tensor | None = None  # (R, B, K) the chain's uniforms (relaxed reuses)
    glimpses: torch.Tensor | None = None  # (R, B, K, G, G) decoded, when drawn while inferring
    written: torch.Tensor | None = None   # (R, B, K, H, W) each step's drawing, likewise

    @property
    def num_steps(self) -> NumSteps:
        return NumSteps(self.pres_logits)

    @property
    def present(self) -> torch.Tensor:
        """(R, B, K) mask: step k explains an object iff k < n."""
        steps = torch.arange(self.pres_logits.shape[-1], device=self.n.device)
        return (steps < self.n.unsqueeze(-1)).to(self.z_what.dtype)


@dataclass
class LossTerms:
    """Per-replica scalars (R,) to optimise, and per-image pieces for monitoring."""

    model_loss: torch.Tensor     # (R,) negative ELBO surrogate incl. REINFORCE
    baseline_loss: torch.Tensor  # (R,) MSE of the baseline to the learning signal
    elbo: torch.Tensor           # (R, B)
    n: torch.Tensor              # (R, B)

    @property
    def total(self) -> torch.Tensor:
        """(R,) each replica's own loss: model and baseline train disjoint parameters on it."""
        return self.model_loss + self.baseline_loss


@dataclass
class ElboTerms:
    """The ELBO's pieces for one batch, which every estimator builds its objective from."""

    log_lik: torch.Tensor     # (R, B) Gaussian log-likelihood of the canvas of n objects
    blurred_fit: torch.Tensor  # (R, B) the early blurred comparison (AIR.blurred_fit), or 0
    kl_where: torch.Tensor    # (R, B, K) KL of each step's z_where, present or not
    kl_what: torch.Tensor     # (R, B, K) KL of each step's z_what, likewise
    kl_steps: torch.Tensor    # (R, B, K) their sum, computed once
    present: torch.Tensor     # (R, B, K) 0/1 mask of the first n steps
    kl_objects: torch.Tensor  # (R, B) KLs of the present steps
    z_pres_posterior: NumSteps  # the guide's distribution of the number of objects
    z_pres_prior: NumSteps      # the z_pres prior at this step
    kl_z_pres: torch.Tensor     # (R, B) KL(posterior || prior) of the z_pres chain, analytic

    @property
    def elbo(self) -> torch.Tensor:
        return self.log_lik - self.kl_objects - self.kl_z_pres

    @property
    def fitted_log_lik(self) -> torch.Tensor:
        """The likelihood the training objective fits: the ELBO's plus the blurred comparison."""
        return self.log_lik + self.blurred_fit
