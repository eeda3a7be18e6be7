"""Gradient variance per estimator: how noisy is each parameter's gradient on one fixed batch?

N gradient estimates on the same images, each with fresh sampling noise; the variance over
the N estimates is taken per parameter element, then averaged over one of two classes:
  score     the presence head (`presence_head.*`): its output, the presence logits, reaches
            the loss only through log q(n) (score function) and the analytic KL of n, never
            through a sample, so under reinforce/vimco its gradient is the score function's.
  backprop  every other model parameter: each also gets some score-function gradient (the
            LSTM feeds the presence head), but its main signal is back-propagated through the
            reparameterised what/where samples.
The baseline's parameters are left out. Kosiorek's blog reports about 1e-2 (backprop), 1e3
(REINFORCE without baseline) and 1e-1 (with the neural baseline) per parameter.

Every number is per replica: variances and means never mix replicas.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from airsearch.model.air import AIR
from airsearch.model.terms import Noise
from airsearch.schedules import Schedule

SCORE_PREFIX = "presence_head."
CLASSES = ("backprop", "score")
DIAG_NOISE_OFFSET = 2_000_003  # diagnostic noise generators are seeded apart from the rest


@dataclass
class GradientVariance:
    """Mean per-element gradient variance of each parameter class, per replica."""

    backprop: torch.Tensor  # (R,)
    score: torch.Tensor     # (R,)

    def metrics(self, r: int) -> dict[str, float]:
        return {"diag/grad_var_backprop": float(self.backprop[r]),
                "diag/grad_var_score": float(self.score[r])}


def classify(model: AIR) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Model parameters split into the two classes above (the baseline's are excluded)."""
    baseline = {id(p) for p in model.parameter_groups()["baseline"]}
    out: dict[str, list[tuple[str, nn.Parameter]]] = {name: [] for name in CLASSES}
    for name, p in model.named_parameters():
        if id(p) not in baseline:
            out["score" if name.startswith(SCORE_PREFIX) else "backprop"].append((name, p))
    return out


def gradient_variance(model: AIR, x: torch.Tensor, schedule: Schedule, seeds: list[int],
                      samples: int) -> GradientVariance:
    """x (R, B, H, W): variance over `samples` gradient estimates of model_loss, per replica.

    The first estimate only sets the NVIL running statistics from this batch; every counted
    estimate starts from those same statistics, and the model's buffers are restored at the
    end, so a training run that measures this is not perturbed (nor are its noise streams).
    """
    if samples < 2:
        raise ValueError(f"need at least 2 gradient samples for a variance, got {samples}")
    was_training = model.training
    model.train()
    device = x.device
    particles = model.config.estimator.particles
    x = x.repeat(1, particles, 1, 1)  # (R, S*B, H, W) particle s of image b at s*B + b
    gens = [torch.Generator(device=device).manual_seed(DIAG_NOISE_OFFSET + s) for s in seeds]
    classes = classify(model)
    params = [p for name in CLASSES for _, p in classes[name]]
    original = {k: v.clone() for k, v in model.named_buffers()}

    def estimate() -> tuple[torch.Tensor | None, ...]:
        noise = Noise.draw(gens, x.shape[1], model.steps, model.z_what_size, device)
        loss = model.loss_terms(x, model.infer(x, noise), schedule).model_loss
        return torch.autograd.grad(loss.sum(), params, allow_unused=True)

    estimate()
    primed = {k: v.clone() for k, v in model.named_buffers()}
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    square = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for _ in range(samples):
        _load_buffers(model, primed)
        for t, s, g in zip(total, square, estimate(), strict=True):
            if g is not None:
                t += g.double()
                s += g.double().pow(2)
    _load_buffers(model, original)
    model.train(was_training)

    R = model.replicas
    variances = [((s - t.pow(2) / samples) / (samples - 1)).clamp(min=0).reshape(R, -1)
                 for t, s in zip(total, square, strict=True)]  # (R, elements) per parameter
    means, start = {}, 0
    for name in CLASSES:
        chunk = variances[start:start + len(classes[name])]
        start += len(classes[name])
        means[name] = torch.cat(chunk, dim=1).mean(1).float().cpu()  # (R,)
    return GradientVariance(backprop=means["backprop"], score=means["score"])


@torch.no_grad()
def _load_buffers(model: AIR, values: dict[str, torch.Tensor]) -> None:
    for name, buffer in model.named_buffers():
        buffer.copy_(values[name])
