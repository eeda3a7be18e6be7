"""Held-out evaluation: how well each replica counts, measured without sampling noise.

Count rule (deterministic): every latent takes its posterior mean and step k is present iff
its presence probability exceeds 0.5 and all earlier steps are present; the count is the
number of leading present steps. The ELBO is a one-sample estimate with noise from a fixed
per-seed generator, so two evaluations of the same weights give the same number.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from airsearch.evaluation.outcomes import ACCURACY, SHARE_MAX, SHARE_ZERO
from airsearch.model.air import AIR
from airsearch.model.spatial import box_pixels
from airsearch.model.terms import Inference, Noise
from airsearch.schedules import Schedule

EVAL_NOISE_OFFSET = 1_000_003  # eval noise generators are seeded apart from training ones


@dataclass
class Evaluation:
    """Per-replica results; the leading dimension of every tensor is R."""

    accuracy: torch.Tensor    # (R,) share of images whose count is right
    confusion: torch.Tensor   # (R, max_true + 1, K + 1) true count x inferred count
    mean_count: torch.Tensor  # (R,)
    elbo: torch.Tensor        # (R,) mean per image
    presence: torch.Tensor    # (R, K) share of images with step k present
    boxes: torch.Tensor       # (R, N, K, 4) inferred boxes in pixels, for localisation
    present: torch.Tensor     # (R, N, K) bool, the deterministic presence per image

    def subset(self, keep: list[int]) -> Evaluation:
        """The replicas at positions `keep` (every field is per replica)."""
        index = torch.tensor(keep)
        return Evaluation(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def share_inferred(self, count: int) -> torch.Tensor:
        c = self.confusion.to(torch.float64)
        return c[:, :, count].sum(1) / c.sum((1, 2))

    def metrics(self, r: int) -> dict[str, float]:
        """Replica r's numbers under the project-wide metric names."""
        out = {ACCURACY: float(self.accuracy[r]),
               "eval/elbo": float(self.elbo[r]),
               "eval/mean_count": float(self.mean_count[r]),
               SHARE_ZERO: float(self.share_inferred(0)[r]),
               SHARE_MAX: float(self.share_inferred(self.confusion.shape[2] - 1)[r])}
        for k, share in enumerate(self.presence[r].tolist(), start=1):
            out[f"eval/presence_step_{k}"] = share
        out.update(self.per_count(r))
        return out

    def per_count(self, r: int) -> dict[str, float]:
        """Replica r's accuracy on the images of each true count (eval/accuracy_count_<c>)."""
        rows = self.confusion[r]
        return {f"eval/accuracy_count_{c}": float(rows[c, c]) / float(rows[c].sum())
                for c in range(rows.shape[0]) if rows[c].sum() > 0}


def deterministic_inference(model: AIR, x: torch.Tensor) -> Inference:
    """x (R, B, H, W) -> posterior means and the thresholded count."""
    R, B = x.shape[:2]
    return model.infer(x, Noise.zeros(R, B, model.steps, model.z_what_size, x.device))


@torch.no_grad()
def evaluate(model: AIR, images: torch.Tensor, counts: torch.Tensor, seeds: list[int],
             schedule: Schedule, batch_size: int = 500) -> Evaluation:
    """images (N, H, W) uint8 and true counts (N,), shared by all replicas; the ELBO is
    taken under `schedule`'s count prior."""
    was_training = model.training
    model.eval()
    R, K = model.replicas, model.steps
    device = next(model.parameters()).device
    gens = [torch.Generator(device=device).manual_seed(EVAL_NOISE_OFFSET + s) for s in seeds]
    max_true = int(counts.max())
    confusion = torch.zeros(R, max_true + 1, K + 1, dtype=torch.long, device=device)
    elbo_sum = torch.zeros(R, dtype=torch.float64, device=device)
    presence = torch.zeros(R, K, dtype=torch.float64, device=device)
    boxes: list[torch.Tensor] = []
    present: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device, torch.float32).div_(255.0)
        true = counts[start:start + batch_size].to(device)
        x = x.unsqueeze(0).expand(R, *x.shape)  # (R, B, H, W), no copy
        inference = deterministic_inference(model, x)
        inferred = inference.n  # (R, B)
        boxes.append(box_pixels(inference.z_where, model.canvas).cpu())  # (R, B, K, 4)
        present.append(inference.present.bool().cpu())
        index = true.unsqueeze(0) * (K + 1) + inferred  # (R, B) flat confusion cell
        confusion.view(R, -1).scatter_add_(1, index, torch.ones_like(index))
        steps = torch.arange(K, device=device)
        presence += (steps < inferred.unsqueeze(-1)).sum(1).to(torch.float64)
        noise = Noise.draw(gens, x.shape[1], K, model.z_what_size, device)
        terms = model.loss_terms(x, model.infer(x, noise), schedule)
        elbo_sum += terms.elbo.to(torch.float64).sum(1)
    model.train(was_training)
    n = len(images)
    correct = confusion.diagonal(dim1=1, dim2=2).sum(1)
    inferred_values = torch.arange(K + 1, device=device, dtype=torch.float64)
    mean_count = (confusion.sum(1).to(torch.float64) * inferred_values).sum(1) / n
    return Evaluation(accuracy=(correct.to(torch.float64) / n).cpu(), confusion=confusion.cpu(),
                      mean_count=mean_count.cpu(), elbo=(elbo_sum / n).cpu(),
                      presence=(presence / n).cpu(), boxes=torch.cat(boxes, 1),
                      present=torch.cat(present, 1))
