"""Spatial transformer: reading and writing glimpses where z_where says."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.nn import functional as F

from airsearch.model.spatial import (
    box_filter,
    box_pixels,
    densest_window,
    dilate_3x3,
    inside_window,
    object_box,
    read_glimpse,
    write_glimpse,
)


def _blob(size, sigma=0.25):
    """A smooth bump that fades to ~0 at the glimpse border."""
    c = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.exp(-((xx - 0.1) ** 2 + (yy + 0.15) ** 2) / (2 * sigma ** 2))


@pytest.mark.parametrize("z_where", [(1.25, 0.0, 0.0), (1.25, 0.1, -0.15), (2.0, -0.3, 0.4)])
def test_write_then_read_recovers_glimpse(z_where):
    """Writing a smooth glimpse and reading it back at the same z_where recovers it."""
    G, H = 20, 50
    glimpse = _blob(G).unsqueeze(0)
    zw = torch.tensor([z_where])
    canvas = write_glimpse(glimpse, zw, H)
    assert canvas.shape == (1, H, H)
    back = read_glimpse(canvas, zw, G)
    assert back.shape == (1, G, G)
    err = (back - glimpse).abs()
    assert float(err.max()) < 0.08, float(err.max())
    assert float(err.mean()) < 0.01


def _ink_box(canvas, threshold=0.5):
    rows = torch.nonzero(canvas.amax(1) > threshold).flatten()
    cols = torch.nonzero(canvas.amax(0) > threshold).flatten()
    return torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1],
                        dtype=torch.float32)


@pytest.mark.parametrize("z_where", [
    (3.0, 0.0, 0.0), (3.0, 0.5, 0.0), (3.0, 0.0, -0.5), (2.0, -0.4, 0.3), (1.5, 0.2, 0.2),
    (4.0, -0.6, -0.6),
])
def test_written_box_lands_where_z_where_says(z_where):
    """A filled square glimpse is drawn inside box_pixels(z_where), within about a pixel."""
    H = 50
    zw = torch.tensor([z_where])
    canvas = write_glimpse(torch.ones(1, 20, 20), zw, H)[0]
    expected = box_pixels(zw, H)[0]
    ink = _ink_box(canvas)
    assert torch.all((ink - expected).abs() <= 1.0), (ink, expected)
    assert float(canvas.sum()) > 0
    # nothing outside the box
    x0, y0, x1, y1 = expected.tolist()
    outside = canvas.clone()
    outside[max(0, int(y0) - 1):int(y1) + 2, max(0, int(x0) - 1):int(x1) + 2] = 0
    assert float(outside.abs().max()) == 0.0


def test_box_pixels_convention():
    """s=3 centred is a third of the canvas in the middle; x is columns, y rows."""
    box = box_pixels(torch.tensor([3.0, 0.0, 0.0]), 60)
    torch.testing.assert_close(box, torch.tensor([20.0, 20.0, 40.0, 40.0]))
    box = box_pixels(torch.tensor([2.0, 0.5, -0.5]), 40)  # right and up
    torch.testing.assert_close(box, torch.tensor([20.0, 0.0, 40.0, 20.0]))


@pytest.mark.parametrize("z_where", [(3.0, 0.0, 0.0), (2.0, 0.5, -0.5), (4.0, -0.33, 0.21)])
def test_inside_window_marks_the_pixels_within_box_pixels(z_where):
    """The pixels inside_window marks are those whose centres lie in box_pixels' box."""
    H = 40
    zw = torch.tensor([z_where])
    x0, y0, x1, y1 = box_pixels(zw, H)[0].tolist()
    centres = torch.arange(H) + 0.5
    rows, cols = (centres > y0) & (centres < y1), (centres > x0) & (centres < x1)
    assert torch.equal(inside_window(zw, H)[0], rows[:, None] & cols[None, :])
    assert inside_window(zw, H).any()


def test_reading_follows_an_object():
    """Reading at the object's z_where gives the same glimpse wherever the object sits."""
    G, H = 20, 50
    glimpse = _blob(G).unsqueeze(0)
    glimpses = []
    for shift in [(0.0, 0.0), (0.4, -0.3), (-0.5, 0.35)]:
        zw = torch.tensor([[2.0, *shift]])
        canvas = write_glimpse(glimpse, zw, H)
        glimpses.append(read_glimpse(canvas, zw, G))
        # reading at the wrong place misses the object
        away = shift[0] - 1.0 if shift[0] >= 0 else shift[0] + 1.0
        other = torch.tensor([[2.0, away, shift[1]]])
        assert float(read_glimpse(canvas, other, G).sum()) < 0.2 * float(glimpses[-1].sum())
    for other in glimpses[1:]:
        assert float((other - glimpses[0]).abs().max()) < 0.05


def test_batch_of_glimpses_is_independent():
    """Each glimpse of a batch is written with its own z_where."""
    H = 40
    zw = torch.tensor([[3.0, -0.5, 0.0], [3.0, 0.5, 0.0]])
    canvases = write_glimpse(torch.ones(2, 10, 10), zw, H)
    left, right = _ink_box(canvases[0]), _ink_box(canvases[1])
    assert float(left[2]) <= H / 2 and float(right[0]) >= H / 2


def _grid_sample(source, z_where, size, inverse):
    """The textbook spatial transformer: affine_grid + grid_sample."""
    s, x, y = z_where.unbind(-1)
    zero = torch.zeros_like(s)
    if inverse:  # canvas -> glimpse coordinates (writing)
        rows = [s, zero, -s * x, zero, s, -s * y]
    else:  # glimpse -> canvas coordinates (reading)
        rows = [1 / s, zero, x, zero, 1 / s, y]
    theta = torch.stack(rows, -1).view(-1, 2, 3)
    grid = F.affine_grid(theta, [len(source), 1, size, size], align_corners=False)
    return F.grid_sample(source.unsqueeze(1), grid, align_corners=False).squeeze(1)


@pytest.mark.parametrize("direction", ["read", "write"])
def test_matches_affine_grid_and_grid_sample(direction):
    """The separable form is grid_sample's bilinear sampling: same values, same gradients,
    including boxes that reach past the canvas edge (zero padding)."""
    gen = torch.Generator().manual_seed(0)
    N, G, H = 64, 20, 50
    z_where = torch.stack([1 + 3 * torch.rand(N, generator=gen),
                           2.4 * torch.rand(N, generator=gen) - 1.2,
                           2.4 * torch.rand(N, generator=gen) - 1.2], -1)
    writing = direction == "write"
    source = torch.rand(N, *(G, G) if writing else (H, H), generator=gen)
    ours, size = (write_glimpse, H) if writing else (read_glimpse, G)
    reference = functools.partial(_grid_sample, inverse=writing)
    weights = torch.randn(N, size, size, generator=gen)
    grads = []
    for fn in (ours, reference):
        zw, src = z_where.clone().requires_grad_(), source.clone().requires_grad_()
        out = fn(src, zw, size)
        (out * weights).sum().backward()
        grads.append((out.detach(), zw.grad, src.grad))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


@pytest.mark.parametrize("centre_xy", [(10, 12), (40, 7), (25, 25), (3, 46)])
def test_densest_window_is_centred_on_the_brightest_object(centre_xy):
    """Of a bright and a dim square, the window lands on the bright one's centre pixel."""
    H, half = 50, 3
    images = torch.zeros(1, H, H)
    col, row = centre_xy

    def square(row: int, col: int, value: float) -> None:
        images[0, max(0, row - half):row + half + 1, max(0, col - half):col + half + 1] = value

    square(row, col, 1.0)
    square(49 - row, 49 - col, 0.5)  # mirrored: never where the bright one is
    found = densest_window(images, box_filter(H, 2 * half + 1))[0]
    pixel = lambda v: (v + 1) * H / 2 - 0.5  # noqa: E731  normalised -> pixel index
    if 3 <= col <= 46 and 3 <= row <= 46:  # fully inside: its centre is the unique maximum
        assert (pixel(found[0]), pixel(found[1])) == pytest.approx((col, row), abs=1e-4)
    else:  # clipped by the border: still on the bright square
        assert abs(pixel(found[0]) - col) <= half and abs(pixel(found[1]) - row) <= half


@pytest.mark.parametrize("window_px", [1, 4, 9, 17])
def test_box_filter_is_the_window_mean(window_px):
    """B @ x @ B.T equals avg_pool2d over the (odd) window, zero padding counted."""
    images = torch.rand(3, 50, 50, generator=torch.Generator().manual_seed(0))
    size = window_px | 1
    pooled = F.avg_pool2d(images.unsqueeze(1), size, stride=1, padding=size // 2).squeeze(1)
    box = box_filter(50, window_px)
    torch.testing.assert_close(box @ images @ box.T, pooled)


def test_dilate_3x3_is_a_3x3_max_pool():
    """The shifted-OR dilation grows masks exactly as a 3x3 max-pool, borders included."""
    masks = torch.rand(6, 1, 17, 23, generator=torch.Generator().manual_seed(0)) > 0.8
    masks[0] = False
    masks[1, 0, 0, 0] = masks[1, 0, -1, -1] = True  # corners
    pooled = F.max_pool2d(masks.float(), 3, stride=1, padding=1) > 0
    assert torch.equal(dilate_3x3(masks), pooled)


def test_object_box_frames_the_ink_connected_to_the_peak():
    """A tall bar with a one-pixel gap (a broken stroke) is one object framed whole, not the
    dimmer square beside it; faint pixels are not ink; an image without ink falls back to
    the densest window with side 0."""
    images = torch.zeros(2, 40, 40)
    images[0, 5:12, 8:13] = 1.0
    images[0, 13:25, 8:13] = 1.0      # the bar: rows 5..24, cols 8..12, one gap row (12)
    images[0, 30:36, 25:31] = 0.6     # a dimmer 6 px square, apart
    images[1, 10:15, 10:15] = 0.2     # below the ink threshold
    box = box_filter(40, 7)
    centre, side = object_box(images, box, ink=0.3, grow_steps=80)
    pixel = lambda v: (v + 1) * 40 / 2 - 0.5  # noqa: E731  normalised -> pixel index
    assert side.tolist() == [20.0, 0.0]
    assert (pixel(centre[0, 0]), pixel(centre[0, 1])) == pytest.approx((10.0, 14.5), abs=1e-4)
    torch.testing.assert_close(centre[1], densest_window(images[1:], box)[0])
    # Once the bar is gone, the square is the object.
    images[0, :26] = 0.0
    centre, side = object_box(images[:1], box, ink=0.3, grow_steps=80)
    assert side.item() == 6.0
    assert (pixel(centre[0, 0]), pixel(centre[0, 1])) == pytest.approx((27.5, 32.5), abs=1e-4)


def test_object_box_cuts_ink_wider_than_the_largest_digit_to_one_end():
    """Two 12 px squares that touch side by side are one inked region 24 px wide: with
    largest=13 the window is framed flush on the heavier square, not on the seam between
    them; ink that fits `largest` is framed as before."""
    images = torch.zeros(2, 40, 40)
    images[:, 10:22, 5:17] = 0.6
    images[:, 10:22, 17:29] = 1.0     # the heavier square, touching on column 16/17
    images[1, :, 5:17] = 0.0          # the second image: the heavier square alone
    box = box_filter(40, 13)
    pixel = lambda v: (v + 1) * 40 / 2 - 0.5  # noqa: E731  normalised -> pixel index
    centre, side = object_box(images, box, ink=0.3, grow_steps=80)
    assert pixel(centre[0, 0]) == pytest.approx(16.5, abs=1e-4)  # the seam, without a cut
    centre, side = object_box(images, box, ink=0.3, grow_steps=80, largest=13.0)
    assert side.tolist() == [24.0, 12.0]
    assert pixel(centre[0, 0]) == pytest.approx(29 - 6.5 - 0.5, abs=1e-4)  # flush right
    assert pixel(centre[0, 1]) == pytest.approx(15.5, abs=1e-4)  # rows fit: centred
    assert pixel(centre[1, 0]) == pytest.approx(22.5, abs=1e-4)  # one square: its centre
    images[0, 10:22, 5:17] = 1.0
    images[0, 10:22, 17:29] = 0.6     # now the left square is heavier
    centre, _ = object_box(images, box, ink=0.3, grow_steps=80, largest=13.0)
    assert pixel(centre[0, 0]) == pytest.approx(5 + 6.5 - 0.5, abs=1e-4)  # flush left
