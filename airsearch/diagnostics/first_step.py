"""What switching the first step on is worth to the ELBO, before any training.

AIR keeps a step only if its likelihood gain pays for its KL terms and for the count prior.
At initialisation a step draws the decoder's bias-coloured square wherever the location head
points (the canvas centre), so whether that square lands on ink decides if the first
REINFORCE updates keep the step or switch it off. This measures, per image and then averaged:
the log-likelihood gain of n = 1 over n = 0, the KL of the step's z_where and z_what, the
count prior's log-ratio log p(n=1) - log p(n=0) at training step 0, and the share of the
image's ink inside the first window (where the location head can get a gradient at all).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from airsearch.model.air import AIR
from airsearch.model.spatial import box_pixels
from airsearch.model.terms import Noise
from airsearch.schedules import schedule_at


@dataclass(frozen=True)
class FirstStepValue:
    """Mean nats per image of the first step at initialisation (positive: worth keeping)."""

    log_lik_gain: float
    kl_where: float
    kl_what: float
    prior_log_ratio: float
    ink_in_window: float  # share of the image's ink inside the first step's window


    @property
    def net(self) -> float:
        return self.log_lik_gain - self.kl_where - self.kl_what + self.prior_log_ratio


@torch.no_grad()
def first_step_value(model: AIR, x: torch.Tensor, seed: int) -> FirstStepValue:
    """x (B, H, W) in [0, 1]; the first replica of `model` is measured."""
    config = model.config
    x = x.unsqueeze(0)
    B, K = x.shape[1], config.model.max_steps
    draw = Noise.draw([torch.Generator().manual_seed(seed)], B, K, config.model.z_what_size,
                      x.device)
    schedule = schedule_at(config, 0)
    terms = []
    for steps_on in (0, 1):  # uniforms of 0 switch a step on, 1 off, whatever the guide says
        pres = torch.ones_like(draw.pres)
        pres[..., :steps_on] = 0.0
        inference = model.infer(x, Noise(draw.where, draw.what, pres))
        terms.append(model.elbo_terms(x, inference, schedule))
    off, on = terms
    prior = on.z_pres_prior.log_probs[0, 0]  # (K + 1,) the same for every image
    H = x.shape[-1]
    box = box_pixels(inference.where_loc[0, :, 0], H)  # (B, 4)
    centres = torch.arange(H, dtype=x.dtype) + 0.5
    inside_x = (centres >= box[:, None, 0]) & (centres <= box[:, None, 2])  # (B, W)
    inside_y = (centres >= box[:, None, 1]) & (centres <= box[:, None, 3])  # (B, H)
    window = (inside_y[:, :, None] & inside_x[:, None, :]).to(x.dtype)
    ink = x[0].sum(dim=(-1, -2))
    covered = (x[0] * window).sum(dim=(-1, -2))[ink > 0] / ink[ink > 0]
    return FirstStepValue(log_lik_gain=(on.log_lik - off.log_lik).mean().item(),
                          kl_where=on.kl_where[..., 0].mean().item(),
                          kl_what=on.kl_what[..., 0].mean().item(),
                          prior_log_ratio=(prior[1] - prior[0]).item(),
                          ink_in_window=covered.mean().item() if len(covered) else float("nan"))
