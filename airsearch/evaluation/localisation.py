"""Localisation against ground truth: do the inferred boxes sit on the digits?

Each held-out image's present steps (the deterministic read-out the count uses) are matched
one-to-one to its true digits by maximising the summed IoU over every assignment (exact: K
and the digit count are small), with centre distance breaking ties between zero-IoU pairs.
  eval/iou           mean over all true digits of the matched IoU; a digit left without a
                     present step counts 0, so under-counting lowers it.
  eval/centre_error  mean distance in pixels between matched box centres (nan if none).
The true boxes are tight ink boxes and the inferred ones squares (z_where has one scale),
so a perfect localisation still has an IoU below 1 (about 0.7-0.9 for MNIST digits).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields

import torch

TIE_BREAK = 1e-3  # weight of the (canvas-normalised) centre distance in the matching score


@dataclass
class Localisation:
    """Per-replica results; N held-out images, K steps."""

    iou: torch.Tensor           # (R,)
    centre_error: torch.Tensor  # (R,) pixels
    centres: torch.Tensor       # (R, N, K, 2) inferred box centres (x, y), pixels
    present: torch.Tensor       # (R, N, K) bool, the deterministic presence

    def subset(self, keep: list[int]) -> Localisation:
        """The replicas at positions `keep` (every field is per replica)."""
        index = torch.tensor(keep)
        return Localisation(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def metrics(self, r: int) -> dict[str, float]:
        return {"eval/iou": float(self.iou[r]), "eval/centre_error": float(self.centre_error[r])}


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of (..., 4) boxes (x0, y0, x1, y1), broadcast."""
    width = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(0)
    height = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(0)
    inter = width * height
    area = lambda box: (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-9)


def centre(boxes: torch.Tensor) -> torch.Tensor:
    return torch.stack([boxes[..., 0] + boxes[..., 2], boxes[..., 1] + boxes[..., 3]], -1) / 2


def match(pred: torch.Tensor, present: torch.Tensor, true: torch.Tensor, counts: torch.Tensor,
          canvas_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pred (R, N, K, 4), present (R, N, K), true (N, M, 4), counts (N,) ->
    (iou, distance, matched), each (R, N, M): per true digit, its matched step's IoU and
    centre distance (0 where unmatched) and whether a present step was matched to it."""
    K, M = pred.shape[-2], true.shape[-2]
    true = torch.nan_to_num(true)  # slots past the count are nan; masked below
    valid = present.unsqueeze(-1) & (torch.arange(M) < counts.unsqueeze(-1))[None, :, None, :]
    iou = torch.where(valid, box_iou(pred.unsqueeze(-2), true[None, :, None]), 0.0)
    distance = torch.linalg.vector_norm(centre(pred).unsqueeze(-2) - centre(true)[None, :, None],
                                        dim=-1)
    distance = torch.where(valid, distance, 0.0)  # (R, N, K, M)
    # Every injective map of true slots to steps (K >= M: data.max_digits <= model.max_steps).
    perms = torch.tensor(list(itertools.permutations(range(K), M))).view(-1, M)  # (P, M)
    slots = torch.arange(M)
    pick = lambda t: t[:, :, perms, slots]  # noqa: E731  (R, N, P, M)
    score = (pick(iou) - TIE_BREAK * pick(distance) / canvas_size).sum(-1)  # (R, N, P)
    best = perms[score.argmax(-1)]  # (R, N, M) step matched to each true slot
    take = lambda t: torch.gather(t, 2, best.unsqueeze(2)).squeeze(2)  # noqa: E731
    return take(iou), take(distance), take(valid)


def localise(pred: torch.Tensor, present: torch.Tensor, boxes: torch.Tensor,
             counts: torch.Tensor, canvas: int) -> Localisation:
    """Inferred boxes (R, N, K, 4) and presence (R, N, K) of the held-out evaluation against
    true boxes (N, M, 4) pixels and counts (N,); reuses the evaluation's inference pass."""
    iou, distance, matched = match(pred, present, boxes.float(), counts, canvas)
    digits = int(counts.sum())
    matches = matched.sum((1, 2))  # (R,)
    return Localisation(
        iou=iou.sum((1, 2)) / digits if digits else torch.full((pred.shape[0],), torch.nan),
        centre_error=torch.where(matches > 0, distance.sum((1, 2)) / matches.clamp(min=1),
                                 torch.nan),
        centres=centre(pred), present=present)
