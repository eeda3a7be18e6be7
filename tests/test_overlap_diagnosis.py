"""`diagnose overlap`: two-digit images grouped by how the digits lie, and what a trained
run leaves unexplained in each group."""

from __future__ import annotations

import json
import warnings
from itertools import pairwise

import numpy as np
import pytest
from click.testing import CliRunner

from airsearch.config import AIRConfig, DataConfig
from airsearch.data import Digits, generate
from airsearch.diagnostics.overlap import (
    COVER_EDGES,
    GROUPS,
    box_cover,
    cover_rows,
    layout_groups,
    overlap_rows,
)
from airsearch.model.air import AIR
from cli import main

TINY = {"data.train_images": 256, "data.heldout_images": 64, "data.overlap": "allow",
        "model.lstm_size": 32, "model.mlp_width": 32, "model.mlp_depth": 1,
        "model.z_what_size": 8, "model.glimpse_size": 10, "estimator.baseline_width": 32,
        "train.batch_size": 16, "train.steps": 2, "train.eval_every": 1}


def _squares(ink: int, n: int = 300):
    digits = Digits(np.full((5, 28, 28), ink, np.uint8), np.arange(5), "squares", False)
    config = DataConfig(min_digits=0, max_digits=2, digit_size=10.0, canvas_size=32,
                        overlap="allow")
    return generate(digits, n, config, seed=1)


def test_groups_follow_boxes_and_clipped_ink():
    """Full-ink squares that meet always cross strokes; faint ones (120 + 120 < 255) only
    share a box; one- and zero-digit images belong to no group."""
    for ink, meeting in ((255, "strokes cross"), (120, "boxes cross")):
        data = _squares(ink)
        groups = layout_groups(data)
        assert np.all((groups == -1) == (data.counts != 2))
        b = data.boxes
        meet = np.all((b[:, 0, :2] < b[:, 1, 2:]) & (b[:, 1, :2] < b[:, 0, 2:]), -1)
        two = data.counts == 2
        assert np.all(groups[two & meet] == GROUPS.index(meeting))
        assert np.all(groups[two & ~meet] == GROUPS.index("apart"))
        assert (two & meet).sum() > 10 and (two & ~meet).sum() > 10


def test_box_cover_is_the_share_of_the_smaller_box_inside_the_other():
    """Apart boxes cover 0; meeting ones cover their intersection over the smaller area;
    images without two digits have none."""
    data = _squares(255)
    cover = box_cover(data)
    assert np.all(np.isnan(cover) == (data.counts != 2))
    b = data.boxes[:, :2].astype(float)
    meet = np.all((b[:, 0, :2] < b[:, 1, 2:]) & (b[:, 1, :2] < b[:, 0, 2:]), -1)
    two = data.counts == 2
    assert np.all(cover[two & ~meet] == 0) and np.all(cover[two & meet] > 0)
    i = np.nonzero(two & meet)[0][0]
    inter = np.prod(np.minimum(b[i, 0, 2:], b[i, 1, 2:]) - np.maximum(b[i, 0, :2], b[i, 1, :2]))
    area = np.prod(b[i, :, 2:] - b[i, :, :2], axis=-1).min()
    assert cover[i] == pytest.approx(inter / area)
    assert np.nanmax(cover) <= 1.0


def test_a_model_that_draws_nothing_misses_all_the_ink():
    config = AIRConfig.from_flat({**TINY, "data.canvas_size": 32, "data.digit_size": 10.0,
                                  "init.decoder_bias": -20.0})
    model = AIR(config, [0, 1])
    data = _squares(255, 200)
    rows = overlap_rows(model, data)
    groups = layout_groups(data)
    assert [r.group for r in rows] == ["apart", "strokes cross"]
    for row in rows:
        ink = data.images[groups == GROUPS.index(row.group)].sum((1, 2)) / 255.0
        assert row.images == len(ink)
        assert row.missed_ink == pytest.approx(ink.mean(), rel=1e-3)
        assert row.overdrawn_ink == pytest.approx(0.0, abs=0.01)
        assert sum(row.read_as.values()) == pytest.approx(1.0)
    covers = cover_rows(model, data)
    assert [(r.low, r.high) for r in covers] == list(pairwise(COVER_EDGES))
    assert sum(r.images for r in covers) == (data.counts == 2).sum()
    assert sum(r.share for r in covers) == pytest.approx(1.0)
    for row in covers:  # it draws nothing, and its count is read off the same inference
        assert len(row.read_as_two) == (2 if row.images else 0)
        assert all(0.0 <= v <= 1.0 for v in row.read_as_two)


def test_command_reads_a_training_run(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AIRSEARCH_MNIST_DIR", raising=False)
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        trained = CliRunner().invoke(main, ["train", *sets, "--seeds", "0-1", "--out", str(out)])
        assert trained.exit_code == 0, trained.output
        result = CliRunner().invoke(main, ["diagnose", "overlap", str(out)])
    assert result.exit_code == 0, result.output
    assert "data.overlap=allow, canvas saturated" in result.output
    saved = json.loads((out / "overlap.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["step"] == 2
    assert {row["group"] for row in saved["rows"]} <= set(GROUPS)
    assert sum(row["images"] for row in saved["rows"]) > 0
    assert sum(row["images"] for row in saved["by_cover"]) == \
        sum(row["images"] for row in saved["rows"])
    assert "by how much the digits cover each other" in result.output
