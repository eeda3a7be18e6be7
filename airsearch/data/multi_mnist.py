"""The multi-MNIST generator: digits resized and scattered on a canvas, plus a disk cache.

All randomness is drawn up front from one numpy Generator, so a (digits, config, seed) triple
always yields byte-identical arrays; the cache relies on that.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import zipfile
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from airsearch.atomic import atomic_write
from airsearch.config import ConfigError, DataConfig, check_digit_sizes, check_value
from airsearch.data.mnist import Digits, cache_dir, load_digits

logger = logging.getLogger("airsearch.data")

FORMAT_VERSION = 1
PLACEMENT_TRIES = 1000
RESIZE_CHUNK = 8192
ARRAYS = ("images", "counts", "boxes", "labels", "crossed")


@dataclass(frozen=True)
class MultiMNIST:
    """Generated images with their ground truth, one row per image.

    Boxes are tight around each digit's non-zero pixels, in canvas pixel edges: ink covers
    columns x0..x1-1 and rows y0..y1-1, so x1 - x0 is the ink width.
    """

    images: np.ndarray  # (N, H, W) uint8, digits composed by clipped sum
    counts: np.ndarray  # (N,) int64 number of digits
    boxes: np.ndarray  # (N, max_digits, 4) float32 (x0, y0, x1, y1); nan past counts
    labels: np.ndarray  # (N, max_digits) int64 digit classes; -1 past counts
    crossed: np.ndarray  # (N,) int64 pixels where digits' summed ink passed full ink (clipped)

    def __len__(self) -> int:
        return len(self.counts)


@dataclass(frozen=True)
class DataInfo:
    """Where a pair of data sets came from, for run metadata and reports."""

    source: str
    offline_subset: bool
    train_digits: int
    heldout_digits: int
    cache_key: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def generate(digits: Digits, n: int, config: DataConfig, seed: int) -> MultiMNIST:
    """`n` canvases of `config.min_digits..max_digits` digits drawn from `digits`."""
    _validate(config)
    rng = np.random.default_rng(seed)
    slots = config.max_digits
    counts = rng.integers(config.min_digits, config.max_digits + 1, size=n)
    present = np.arange(slots) < counts[:, None]  # (n, slots)
    which = np.where(present, rng.integers(0, len(digits), size=(n, slots)), -1)
    sizes, corners = _layout(rng, present, config)
    ink, boxes = _render(digits, which, present, sizes, corners, config.canvas_size)
    if config.overlap == "boxes":  # redraw the layouts of images whose strokes add past full
        crossing = ink.max(axis=(1, 2)) > 255
        for _ in range(PLACEMENT_TRIES):
            if not crossing.any():
                break
            rows = np.nonzero(crossing)[0]
            sizes[rows], corners[rows] = _draw(rng, (len(rows), slots), config)
            ink[rows], boxes[rows] = _render(digits, which[rows], present[rows], sizes[rows],
                                             corners[rows], config.canvas_size)
            crossing[rows] = ink[rows].max(axis=(1, 2)) > 255
        if crossing.any():
            raise ConfigError(f"could not place {config.max_digits} digits of side "
                              f"~{config.digit_size:g} px without crossing strokes after "
                              f"{PLACEMENT_TRIES} tries; use data.overlap=allow")
    images = np.minimum(ink, 255).astype(np.uint8)  # crossing ink saturates, never wraps
    labels = np.where(present, digits.labels[np.maximum(which, 0)], -1).astype(np.int64)
    crossed = (ink > 255).sum(axis=(1, 2)).astype(np.int64)
    return MultiMNIST(images, counts.astype(np.int64), boxes, labels, crossed)


def load_datasets(config: DataConfig, mnist_dir: str | None = None
                  ) -> tuple[MultiMNIST, MultiMNIST, DataInfo]:
    """(train, heldout, info) for `config`, generated once and then read from the disk cache."""
    _validate(config)
    train_digits = load_digits("train", mnist_dir)
    heldout_digits = load_digits("heldout", mnist_dir)
    key = cache_key(config, train_digits, heldout_digits)
    info = DataInfo(train_digits.source, train_digits.offline_subset, len(train_digits),
                    len(heldout_digits), key)
    path = cache_dir() / "multi_mnist" / f"{key}.npz"
    if path.exists():
        try:
            start = time.perf_counter()
            train, heldout = _read(path)
            logger.info("loaded multi-MNIST %s from cache %s in %.2f s", key, path,
                        time.perf_counter() - start)
            return train, heldout, info
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            logger.warning("unreadable cache file %s (%s): regenerating", path, err)
    start = time.perf_counter()
    train = generate(train_digits, config.train_images, config, _derived_seed(config.seed, 0))
    heldout = generate(heldout_digits, config.heldout_images, config,
                       _derived_seed(config.seed, 1))
    logger.info("generated multi-MNIST %s (%d train, %d heldout) from %s in %.2f s", key,
                len(train), len(heldout), info.source, time.perf_counter() - start)
    _write(path, train, heldout)
    return train, heldout, info


def load_heldout_of(config: DataConfig, digits: int, mnist_dir: str | None = None
                    ) -> MultiMNIST:
    """Held-out images with exactly `digits` digits (from the held-out digits), as many as
    data.heldout_images, laid out like the data set of `config`: for counting past the
    training range (eval.beyond_digits)."""
    exact = dataclasses.replace(config, min_digits=digits, max_digits=digits, train_images=64)
    _, heldout, _ = load_datasets(exact, mnist_dir)
    return heldout


ADDED_LATER = {"digit_size_max": 0.0}  # data knob -> its default


def cache_key(config: DataConfig, train: Digits, heldout: Digits) -> str:
    """Short hash of the config, the digits' content and the format: what decides the arrays."""
    digest = hashlib.sha256()
    for part in (train.images, train.labels, heldout.images, heldout.labels):
        digest.update(np.ascontiguousarray(part).tobytes())
    fields = dataclasses.asdict(config)
    # Knobs added later are left out at their default, so existing caches keep their keys.
    for name, default in ADDED_LATER.items():
        if fields[name] == default:
            del fields[name]
    canonical = json.dumps({"format": FORMAT_VERSION, "config": fields,
                            "digits": digest.hexdigest()}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _validate(config: DataConfig) -> None:
    for f in dataclasses.fields(config):
        check_value(f"data.{f.name}", getattr(config, f.name))
    if config.min_digits > config.max_digits:
        raise ConfigError(f"data.min_digits ({config.min_digits}) must be <= "
                          f"data.max_digits ({config.max_digits})")
    check_digit_sizes(config)


def _derived_seed(seed: int, stream: int) -> int:
    """Independent seeds for the train and heldout sets from the one data seed."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def _layout(rng: np.random.Generator, present: np.ndarray, config: DataConfig
            ) -> tuple[np.ndarray, np.ndarray]:
    """Side and top-left (x, y) of every patch: uniform, with the patch fully inside the canvas.

    With overlap="avoid", whole images (sizes and positions) are redrawn until no two patch
    boxes intersect, which samples uniformly among the non-overlapping layouts ("boxes" redraws
    later, once the ink is known).
    """
    sizes, corners = _draw(rng, present.shape, config)
    if config.overlap != "avoid":
        return sizes, corners
    bad = _intersecting(corners, sizes, present)
    for _ in range(PLACEMENT_TRIES):
        if not bad.any():
            return sizes, corners
        sizes[bad], corners[bad] = _draw(rng, (int(bad.sum()), present.shape[1]), config)
        bad[bad] = _intersecting(corners[bad], sizes[bad], present[bad])
    canvas = config.canvas_size
    raise ConfigError(f"could not place {config.max_digits} digits of side ~{config.digit_size:g} "
                      f"px without overlap on a {canvas}x{canvas} canvas after {PLACEMENT_TRIES} "
                      "tries; use data.overlap=allow, fewer or smaller digits, or a larger canvas")


def _draw(rng: np.random.Generator, shape: tuple[int, int], config: DataConfig
          ) -> tuple[np.ndarray, np.ndarray]:
    jitter, canvas = config.digit_size_jitter, config.canvas_size
    if config.digit_size_max:  # a range: log-uniform, so halving and doubling are as likely
        low, high = np.log(config.digit_size), np.log(config.digit_size_max)
        sides = np.exp(rng.uniform(low, high, shape))
    else:
        sides = config.digit_size * rng.uniform(1 - jitter, 1 + jitter, shape)
    sizes = np.clip(np.rint(sides), 4, canvas).astype(np.int64)
    high = (canvas - sizes + 1)[..., None]  # same bound for x and y
    corners = np.floor(rng.random((*shape, 2)) * high).astype(np.int64)
    return sizes, corners


def _intersecting(corners: np.ndarray, sizes: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Per image: do any two present patches' boxes share interior pixels?"""
    lo = corners  # (n, slots, 2)
    hi = corners + sizes[..., None]
    overlap = np.all((lo[:, :, None] < hi[:, None, :]) & (lo[:, None, :] < hi[:, :, None]), -1)
    both = present[:, :, None] & present[:, None, :]
    pairs = np.triu(np.ones(sizes.shape[1:] * 2, bool), k=1)
    return np.any(overlap & both & pairs, axis=(1, 2))


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """(m, 28, 28) uint8 -> (m, size, size) uint8, antialiased so small digits do not alias."""
    out = np.empty((len(images), size, size), np.uint8)
    for start in range(0, len(images), RESIZE_CHUNK):
        batch = torch.from_numpy(np.array(images[start:start + RESIZE_CHUNK], np.float32))
        resized = F.interpolate(batch[:, None], size=(size, size), mode="bilinear",
                                antialias=True, align_corners=False)[:, 0]
        out[start:start + RESIZE_CHUNK] = resized.round().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def _ink_boxes(patches: np.ndarray) -> np.ndarray:
    """Tight (x0, y0, x1, y1) around non-zero pixels in patch coordinates; whole patch if blank."""
    size = patches.shape[-1]
    cols, rows = patches.any(axis=1), patches.any(axis=2)  # (m, size) each

    def span(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inked = mask.any(axis=1)
        first = np.where(inked, mask.argmax(axis=1), 0)
        last = np.where(inked, size - mask[:, ::-1].argmax(axis=1), size)
        return first, last

    x0, x1 = span(cols)
    y0, y1 = span(rows)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)


def _render(digits: Digits, which: np.ndarray, present: np.ndarray, sizes: np.ndarray,
            corners: np.ndarray, canvas: int) -> tuple[np.ndarray, np.ndarray]:
    """(summed ink (n, H, W) uint16, not yet clipped; ink boxes (n, slots, 4)) of n layouts."""
    n, slots = present.shape
    ink = np.zeros((n, canvas, canvas), np.uint16)
    boxes = np.full((n, slots, 4), np.nan, np.float32)
    for size in np.unique(sizes[present]):
        rows, cols = np.nonzero(present & (sizes == size))
        used, inverse = np.unique(which[rows, cols], return_inverse=True)
        patches = _resize(digits.images[used], int(size))[inverse]
        boxes[rows, cols] = _ink_boxes(patches) + np.tile(corners[rows, cols], 2)
        for slot in range(slots):  # one patch per image and slot: no index collides
            pick = cols == slot
            _add(ink, patches[pick], rows[pick], corners[rows[pick], slot])
    return ink, boxes


def _add(ink: np.ndarray, patches: np.ndarray, rows: np.ndarray, corners: np.ndarray) -> None:
    """ink[row, y:y+s, x:x+s] += patch, for distinct rows."""
    if len(rows) == 0:
        return
    canvas, size = ink.shape[-1], patches.shape[-1]
    offsets = np.arange(size)
    ys = corners[:, 1, None] + offsets  # (m, size)
    xs = corners[:, 0, None] + offsets
    flat = (rows[:, None, None] * canvas + ys[:, :, None]) * canvas + xs[:, None, :]
    view = ink.reshape(-1)
    view[flat] += patches


def _read(path: os.PathLike) -> tuple[MultiMNIST, MultiMNIST]:
    with np.load(path) as data:
        if "train_crossed" not in data.files:
            raise KeyError("written before the 'crossed' array was kept")
        return tuple(MultiMNIST(*(data[f"{split}_{name}"] for name in ARRAYS))
                     for split in ("train", "heldout"))


def _write(path: os.PathLike, train: MultiMNIST, heldout: MultiMNIST) -> None:
    """Atomic write: concurrent workers generating the same set never see a partial file."""
    arrays = {f"{split}_{name}": getattr(data, name)
              for split, data in (("train", train), ("heldout", heldout)) for name in ARRAYS}
    with atomic_write(path) as f:
        np.savez(f, **arrays)
