"""Spatial transformer: read glimpses out of the canvas and write them back.

z_where = (s, x, y) in the "inverse scale" convention of the references: the object's box is
centred at (x, y) in normalised canvas coordinates ([-1, 1], x to the right, y down) and
spans 2/s of the canvas side (s = 3: a third of the canvas). Reading and writing use exactly
inverse affine maps, so writing a glimpse and reading it back at the same z_where recovers it.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _theta(z_where: torch.Tensor, inverse: bool) -> torch.Tensor:
    s, x, y = z_where.unbind(-1)  # (N,) each
    zero = torch.zeros_like(s)
    if inverse:  # canvas -> glimpse coordinates: g = s * (p - c)
        rows = [s, zero, -s * x, zero, s, -s * y]
    else:  # glimpse -> canvas coordinates: p = g / s + c
        inv = 1.0 / s
        rows = [inv, zero, x, zero, inv, y]
    return torch.stack(rows, dim=-1).view(-1, 2, 3)


def read_glimpse(images: torch.Tensor, z_where: torch.Tensor, size: int) -> torch.Tensor:
    """images (N, H, W), z_where (N, 3) -> glimpses (N, size, size)."""
    grid = F.affine_grid(_theta(z_where, inverse=False), [images.shape[0], 1, size, size],
                         align_corners=False)
    return F.grid_sample(images.unsqueeze(1), grid, align_corners=False).squeeze(1)


def write_glimpse(glimpses: torch.Tensor, z_where: torch.Tensor, canvas_size: int
                  ) -> torch.Tensor:
    """glimpses (N, g, g), z_where (N, 3) -> canvases (N, H, H), zero outside the box."""
    n = glimpses.shape[0]
    grid = F.affine_grid(_theta(z_where, inverse=True), [n, 1, canvas_size, canvas_size],
                         align_corners=False)
    return F.grid_sample(glimpses.unsqueeze(1), grid, align_corners=False).squeeze(1)


def box_pixels(z_where: torch.Tensor, canvas_size: int) -> torch.Tensor:
    """(..., 3) z_where -> (..., 4) box (x0, y0, x1, y1) in canvas pixels, for figures and IoU."""
    s, x, y = z_where.unbind(-1)
    half = 1.0 / s
    to_px = lambda v: (v + 1.0) * canvas_size / 2.0  # noqa: E731
    return torch.stack([to_px(x - half), to_px(y - half), to_px(x + half), to_px(y + half)], -1)
