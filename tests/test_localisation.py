"""Localisation metrics: matching inferred boxes to true digits, IoU and centre error."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from airsearch.evaluation.figures import attention_figure
from airsearch.evaluation.localisation import box_iou, match

NAN = float("nan")


def test_box_iou():
    a = torch.tensor([0.0, 0.0, 10.0, 10.0])
    assert float(box_iou(a, a)) == 1.0
    assert math.isclose(float(box_iou(a, torch.tensor([5.0, 0.0, 15.0, 10.0]))), 50 / 150,
                        rel_tol=1e-6)
    assert float(box_iou(a, torch.tensor([20.0, 20.0, 30.0, 30.0]))) == 0.0


def test_match_is_order_free_and_counts_misses():
    """Step order does not matter; a digit without a present step scores IoU 0."""
    true = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]],
                         [[0.0, 0.0, 10.0, 10.0], [NAN, NAN, NAN, NAN]]])  # (N=2, M=2, 4)
    counts = torch.tensor([2, 1])
    pred = torch.tensor([[[[22.0, 20.0, 32.0, 30.0], [0.0, 0.0, 10.0, 10.0], [0, 0, 1, 1.0]],
                          [[0.0, 0.0, 10.0, 10.0], [0, 0, 1, 1.0], [0, 0, 1, 1.0]]]])
    present = torch.tensor([[[True, True, False], [False, False, False]]])  # image 2 missed
    iou, distance, matched = match(pred, present, true, counts, 50)
    assert matched.tolist() == [[[True, True], [False, False]]]
    torch.testing.assert_close(iou[0, 0], torch.tensor([1.0, 80 / 120]))
    torch.testing.assert_close(distance[0, 0], torch.tensor([0.0, 2.0]))
    assert float(iou[0, 1].sum()) == 0.0
    assert math.isclose(float(iou.sum()) / int(counts.sum()), (1 + 80 / 120) / 3, rel_tol=1e-6)


def test_attention_figure(tmp_path):
    centres = np.random.default_rng(0).uniform(0, 50, size=(40, 3, 2))
    present = np.arange(3)[None] < np.random.default_rng(1).integers(0, 4, size=(40, 1))
    centres[0, 0] = np.nan  # a diverged replica's centres must not break the plot
    path = attention_figure(centres, present, 50, "test", tmp_path / "s" / "attention.png")
    image = plt.imread(path)  # a real PNG, with something drawn on it
    assert image.ndim == 3 and image.shape[0] > 100 and float(image[..., :3].std()) > 0.01
