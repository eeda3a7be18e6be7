"""Why a trained AIR miscounts two-digit images: split by how the two digits lie.

Groups of held-out two-digit images: `apart` (their ink boxes do not meet), `boxes cross`
(the boxes intersect, no stroke crosses another) and `strokes cross` (some pixel's summed ink
passed full ink and was clipped; only under data.overlap=allow). Per group: how the images
are counted, what is left unexplained after the first two steps (ink the canvas misses and ink
it over-draws), and where each step's window is centred: inside both digits' boxes (between
two digits that overlap), inside one, or on neither. Then the same images binned by how much
the digits cover each other (the share of the smaller ink box inside the other): where two
digits lie nearly on top of each other, what is left to count by?
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

from airsearch.data.multi_mnist import MultiMNIST
from airsearch.evaluation.heldout import deterministic_inference
from airsearch.model.air import AIR
from airsearch.model.spatial import box_pixels
from airsearch.model.terms import Inference

GROUPS = ("apart", "boxes cross", "strokes cross")
WHERE = ("both boxes", "one box", "neither")  # where a window's centre lies
COVER_EDGES = (0.0, 0.25, 0.5, 0.75, 1.0)  # bins of box_cover for the second table


@dataclass
class GroupRow:
    """One layout group, over every replica (rates are means over replicas)."""

    group: str
    images: int
    read_as: dict[int, float]      # count -> share of the group's images read as it
    missed_ink: float              # ink pixels the first two steps' canvas leaves unexplained
    overdrawn_ink: float           # ink pixels the canvas draws where the image has none
    window: list[dict[str, float]]  # per step: share of present windows centred per WHERE

    def to_dict(self) -> dict[str, object]:
        return {"group": self.group, "images": self.images,
                "read_as": {str(k): v for k, v in self.read_as.items()},
                "missed_ink": self.missed_ink, "overdrawn_ink": self.overdrawn_ink,
                "window": self.window}


def layout_groups(data: MultiMNIST) -> np.ndarray:
    """(N,) index into GROUPS for two-digit images, -1 for the others."""
    boxes = data.boxes[:, :2]  # (N, 2, 4)
    lo, hi = boxes[:, :, :2], boxes[:, :, 2:]
    meet = np.all((lo[:, 0] < hi[:, 1]) & (lo[:, 1] < hi[:, 0]), axis=-1)
    group = np.where(data.crossed > 0, 2, np.where(meet, 1, 0))
    return np.where(data.counts == 2, group, -1)


@dataclass
class CoverRow:
    """Two-digit images whose box_cover lies in [low, high) ([low, high] for the last bin)."""

    low: float
    high: float
    images: int
    share: float            # of the held-out two-digit images
    read_as_two: list[float]  # per replica: share of the bin's images counted right

    def to_dict(self) -> dict[str, object]:
        return {"low": self.low, "high": self.high, "images": self.images, "share": self.share,
                "read_as_two": self.read_as_two}


def box_cover(data: MultiMNIST) -> np.ndarray:
    """(N,) for two-digit images, the share of the smaller digit's ink box that lies inside the
    other's (0: apart, 1: one box inside the other); NaN for the others."""
    boxes = data.boxes[:, :2].astype(np.float64)  # (N, 2, 4) x0, y0, x1, y1
    sides = np.clip(np.minimum(boxes[:, 0, 2:], boxes[:, 1, 2:])
                    - np.maximum(boxes[:, 0, :2], boxes[:, 1, :2]), 0, None)  # (N, 2)
    areas = np.prod(boxes[:, :, 2:] - boxes[:, :, :2], axis=-1)  # (N, 2)
    cover = np.prod(sides, axis=-1) / np.maximum(areas.min(axis=-1), 1.0)
    return np.where(data.counts == 2, cover, np.nan)


@dataclass
class TwoDigitReading:
    """One deterministic pass of a model over the held-out two-digit images, which both tables
    read."""

    index: np.ndarray     # (B,) the images' indices in the data
    x: torch.Tensor       # (R, B, H, W) the images, in [0, 1]
    inference: Inference  # the model's posterior means on them


@torch.no_grad()
def read_two_digit_images(model: AIR, data: MultiMNIST) -> TwoDigitReading:
    model.eval()
    index = np.nonzero(data.counts == 2)[0]
    x = torch.from_numpy(data.images[index]).to(torch.float32).div_(255.0)
    x = x.unsqueeze(0).expand(model.replicas, *x.shape)
    return TwoDigitReading(index, x, deterministic_inference(model, x))


def cover_rows(model: AIR, data: MultiMNIST, reading: TwoDigitReading | None = None
               ) -> list[CoverRow]:
    """Count accuracy on two-digit images per bin of COVER_EDGES, for each replica."""
    reading = reading or read_two_digit_images(model, data)
    two = reading.index
    cover = box_cover(data)
    right = reading.inference.n == 2
    rows = []
    for low, high in pairwise(COVER_EDGES):
        last = high == COVER_EDGES[-1]
        inside = (cover[two] >= low) & ((cover[two] <= high) if last else (cover[two] < high))
        pick = torch.from_numpy(np.nonzero(inside)[0])
        rows.append(CoverRow(low, high, len(pick), len(pick) / max(len(two), 1),
                             [float(r) for r in right[:, pick].double().mean(dim=1)]
                             if len(pick) else []))
    return rows


@torch.no_grad()
def overlap_rows(model: AIR, data: MultiMNIST, reading: TwoDigitReading | None = None
                 ) -> list[GroupRow]:
    """The table of the module docstring for `model` (DAIR: it reads what each step drew)."""
    reading = reading or read_two_digit_images(model, data)
    groups = layout_groups(data)[reading.index]
    rows = []
    for index, name in enumerate(GROUPS):
        members = torch.from_numpy(np.nonzero(groups == index)[0])
        if len(members) == 0:
            continue
        pick = reading.index[members.numpy()]
        x, inference = reading.x[:, members], reading.inference
        counts = inference.n[:, members]  # (R, B)
        read_as = {k: float((counts == k).double().mean()) for k in range(model.steps + 1)}
        drawn = model.compose(inference.written[:, members, :2].sum(dim=2))  # (R, B, H, W)
        missed = (x - drawn).clamp(min=0).sum((-1, -2)).mean()
        overdrawn = (drawn - x).clamp(min=0).sum((-1, -2)).mean()
        window = _window_places(inference.z_where[:, members],
                                inference.present[:, members].bool(),
                                torch.from_numpy(data.boxes[pick, :2]), model.canvas)
        rows.append(GroupRow(name, len(pick), read_as, float(missed), float(overdrawn), window))
    return rows


def _window_places(z_where: torch.Tensor, present: torch.Tensor, digit_boxes: torch.Tensor,
                   canvas: int) -> list[dict[str, float]]:
    """Per step, the share of its present windows centred in both digits' ink boxes, in one,
    or in neither."""
    windows = box_pixels(z_where, canvas)  # (R, B, K, 4)
    centre = (windows[..., :2] + windows[..., 2:]) / 2  # (R, B, K, 2)
    boxes = digit_boxes[None, :, None]  # (1, B, 1, 2, 4)
    c = centre.unsqueeze(-2)  # (R, B, K, 1, 2)
    inside = ((c >= boxes[..., :2]) & (c < boxes[..., 2:])).all(-1).sum(-1)  # (R, B, K)
    places = []
    for k in range(z_where.shape[2]):
        on = present[:, :, k]
        total = int(on.sum())
        places.append({where: (float(((inside[:, :, k] == 2 - i) & on).sum()) / total
                               if total else float("nan"))
                       for i, where in enumerate(WHERE)})
    return places
