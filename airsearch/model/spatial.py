"""Spatial transformer: read glimpses out of the canvas and write them back.

z_where = (s, x, y) in the "inverse scale" convention of the references: the object's box is
centred at (x, y) in normalised canvas coordinates ([-1, 1], x to the right, y down) and
spans 2/s of the canvas side (s = 3: a third of the canvas). Reading and writing use exactly
inverse affine maps, so writing a glimpse and reading it back at the same z_where recovers it.

The sampling is affine_grid + grid_sample's (bilinear, zero padding, align_corners=False),
computed as two matrices: z_where scales and shifts without rotating, so a bilinear read is
separable, out = rows @ image @ cols^T, with one bilinear "hat" weight matrix per axis.
Batched matmuls then do the work, forward and backward, instead of a gather whose backward is
a scatter; tests check the two agree, values and gradients.
"""

from __future__ import annotations

import math

import torch


def _pixel_centres(size: int, like: torch.Tensor) -> torch.Tensor:
    """Normalised coordinates of the `size` pixel centres along one axis."""
    return (2 * torch.arange(size, dtype=like.dtype, device=like.device) + 1) / size - 1


def _bilinear_weights(coords: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised sample positions (N, n) -> (N, n, size) bilinear weights on `size` pixels.

    A position between pixels j and j + 1 weighs them 1 - d and d; pixels outside the input
    get no weight, which is grid_sample's zero padding.
    """
    at = ((coords + 1) * size - 1) / 2  # in pixels, as grid_sample unnormalises
    pixels = torch.arange(size, dtype=coords.dtype, device=coords.device)
    return torch.relu(1.0 - (at.unsqueeze(-1) - pixels).abs())


def _resample(source: torch.Tensor, row_coords: torch.Tensor, col_coords: torch.Tensor
              ) -> torch.Tensor:
    """Bilinearly sample source (N, h, w) at the grid row_coords x col_coords ((N, m) each)."""
    rows = _bilinear_weights(row_coords, source.shape[-2])  # (N, m, h)
    cols = _bilinear_weights(col_coords, source.shape[-1])  # (N, m, w)
    return rows @ source @ cols.transpose(1, 2)


def read_glimpse(images: torch.Tensor, z_where: torch.Tensor, size: int) -> torch.Tensor:
    """images (N, H, W), z_where (N, 3) -> glimpses (N, size, size)."""
    s, x, y = (v.unsqueeze(-1) for v in z_where.unbind(-1))  # (N, 1) each
    g = _pixel_centres(size, images)  # glimpse -> canvas coordinates: p = g / s + c
    # g / s once per axis, not shared: sharing it rounds the gradient of s differently, which
    # changes every training trajectory.
    return _resample(images, g / s + y, g / s + x)


def write_glimpse(glimpses: torch.Tensor, z_where: torch.Tensor, canvas_size: int
                  ) -> torch.Tensor:
    """glimpses (N, g, g), z_where (N, 3) -> canvases (N, H, H), zero outside the box."""
    s, x, y = (v.unsqueeze(-1) for v in z_where.unbind(-1))
    p = _pixel_centres(canvas_size, glimpses)  # canvas -> glimpse coordinates: g = s * (p - c)
    return _resample(glimpses, s * (p - y), s * (p - x))


def box_pixels(z_where: torch.Tensor, canvas_size: int) -> torch.Tensor:
    """(..., 3) z_where -> (..., 4) box (x0, y0, x1, y1) in canvas pixels, for figures and IoU."""
    s, x, y = z_where.unbind(-1)
    half = 1.0 / s
    to_px = lambda v: (v + 1.0) * canvas_size / 2.0  # noqa: E731
    return torch.stack([to_px(x - half), to_px(y - half), to_px(x + half), to_px(y + half)], -1)


def inside_window(z_where: torch.Tensor, canvas_size: int) -> torch.Tensor:
    """(N, 3) z_where -> (N, H, H) bool: the canvas pixels whose centres lie inside the box."""
    s, x, y = (v.unsqueeze(-1) for v in z_where.unbind(-1))
    p = _pixel_centres(canvas_size, z_where)
    half = 1.0 / s.abs()
    rows, cols = (p - y).abs() < half, (p - x).abs() < half  # (N, H), (N, W)
    return rows.unsqueeze(-1) & cols.unsqueeze(-2)


def box_filter(size: int, window_px: int) -> torch.Tensor:
    """(size, size) matrix B such that B @ image @ B.T is the mean over the window_px-wide
    square (window_px made odd) centred on each pixel, zeros beyond the border: the same as
    avg_pool2d with count_include_pad, but as two small matmuls, about 40x faster on a CPU."""
    half = window_px // 2
    index = torch.arange(size)
    return ((index[:, None] - index[None, :]).abs() <= half).float() / (2 * half + 1)


def densest_window(images: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """images (N, H, W), box = box_filter(H, window) -> (N, 2) normalised centre (x, y) of the
    window that holds the most intensity (ties: the first in row-major order). No gradient: it
    only says where a window starts looking."""
    with torch.no_grad():
        return _heaviest_centre(box @ images @ box.T)


def _heaviest_centre(mass: torch.Tensor) -> torch.Tensor:
    """(N, H, W) window sums -> (N, 2) normalised centre (x, y) of the largest (ties: the
    first in row-major order)."""
    N, H, W = mass.shape
    flat = mass.reshape(N, H * W).argmax(dim=-1)
    return torch.stack([_pixel_centres(W, mass)[flat % W], _pixel_centres(H, mass)[flat // W]],
                       dim=-1)


def dilate_3x3(mask: torch.Tensor) -> torch.Tensor:
    """(..., H, W) bool -> the mask grown by one pixel in all 8 directions. Shifted ORs, one
    axis at a time: the same as a 3x3 max-pool, about 100x faster on a CPU."""
    rows = mask.clone()
    rows[..., 1:, :] |= mask[..., :-1, :]
    rows[..., :-1, :] |= mask[..., 1:, :]
    grown = rows.clone()
    grown[..., :, 1:] |= rows[..., :, :-1]
    grown[..., :, :-1] |= rows[..., :, 1:]
    return grown


def object_box(images: torch.Tensor, box: torch.Tensor, ink: float, grow_steps: int,
               largest: float = math.inf) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N, H, W) -> (N, 2) normalised centre (x, y) and (N,) side in pixels of the
    bounding box of one object: the ink (pixels above `ink`, gaps of one pixel bridged)
    connected to the inked pixel whose `box` window holds the most intensity. An image without
    ink gets densest_window's centre and side 0. No gradient: it only says where, and how
    large, a window starts looking.

    Ink wider or taller than `largest` pixels (plus one for resampling) is more than one
    object, e.g. two digits that touch or cross: on that axis the box is cut to `largest`,
    flush with one end of the ink (the end whose `box` window holds more), so the window
    frames one digit whole instead of the middle of two."""
    with torch.no_grad():
        N, H, W = images.shape
        inked = images > ink  # (N, H, W)
        mass = box @ images @ box.T
        peak = torch.where(inked, mass, mass.new_tensor(-torch.inf)).reshape(N, H * W).argmax(-1)
        region = torch.zeros(N, H * W, dtype=torch.bool, device=images.device)
        region[torch.arange(N, device=images.device), peak] = True
        region = region.view(N, 1, H, W) & inked[:, None]
        bridged = dilate_3x3(inked[:, None])
        for _ in range(grow_steps):
            grown = dilate_3x3(region) & bridged
            if torch.equal(grown, region):
                break
            region = grown
        region = region[:, 0] & inked
        rows, cols = region.any(dim=2), region.any(dim=1)  # (N, H), (N, W)

        def span(occupied: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            first = occupied.float().argmax(dim=-1)
            last = occupied.shape[-1] - 1 - occupied.flip(-1).float().argmax(dim=-1)
            return first, last

        (top, bottom), (left, right) = span(rows), span(cols)
        xs, ys = _flush_centres(left, right, largest), _flush_centres(top, bottom, largest)
        # The four (x, y) candidates (equal where an axis is not cut); keep the one whose
        # window holds the most intensity.
        candidates = torch.stack([torch.stack([x, y], dim=-1) for y in ys for x in xs], 1)
        pixel = (candidates - 0.5).round().long()  # (N, 4, 2)
        held = mass[torch.arange(N)[:, None], pixel[..., 1].clamp(0, H - 1),
                    pixel[..., 0].clamp(0, W - 1)]  # (N, 4)
        x, y = candidates[torch.arange(N), held.argmax(dim=-1)].unbind(-1)
        centre = torch.stack([2 * x / W - 1, 2 * y / H - 1], dim=-1)
        side = torch.maximum(bottom - top + 1, right - left + 1).to(images.dtype)
        found = inked.reshape(N, -1).any(dim=-1)
        centre = torch.where(found[:, None], centre, _heaviest_centre(mass))
        return centre, torch.where(found, side, torch.zeros_like(side))


def _flush_centres(first: torch.Tensor, last: torch.Tensor, largest: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates of a window's centre on one axis for ink spanning pixels
    first..last: twice the span's centre where it fits `largest` (+1), else the centres of
    a `largest`-wide window flush with either end."""
    middle = (first + last + 1).float() / 2
    cut = (last - first + 1).float() > largest + 1
    return (torch.where(cut, first.float() + largest / 2, middle),
            torch.where(cut, (last + 1).float() - largest / 2, middle))
