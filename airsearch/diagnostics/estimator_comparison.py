"""Gradient variance of every estimator on one batch, from the same weights: which estimator
gives the presence head the least noisy gradient (`python cli.py diagnose gradients`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 -- the backend must be chosen first
import numpy as np  # noqa: E402
import torch  # noqa: E402

from airsearch.config import AIRConfig  # noqa: E402
from airsearch.evaluation.gradient_variance import gradient_variance  # noqa: E402
from airsearch.model.air import AIR  # noqa: E402
from airsearch.schedules import schedule_at  # noqa: E402
from airsearch.training.step import ReplicaStep  # noqa: E402


def trained_state(config: AIRConfig, seeds: list[int], images: torch.Tensor, steps: int
                  ) -> dict[str, torch.Tensor]:
    """The model's weights after `steps` training steps as configured (0: at initialisation)."""
    trainer = ReplicaStep(config, seeds, images)
    for s in range(steps):
        trainer(s)
    return trainer.model.state_dict()


def compare_estimators(config: AIRConfig, seeds: list[int], state: dict[str, torch.Tensor],
                       step: int, x: torch.Tensor, kinds: list[str], samples: int
                       ) -> list[dict[str, object]]:
    """One row per variant of `kinds`: mean variance of the back-propagated parameters and of
    the presence head (score), `samples` estimates on x (R, B, H, W) at training step `step`."""
    rows: list[dict[str, object]] = []
    for label, overrides, no_baseline in variants(kinds, config):
        variant = AIRConfig.from_flat(overrides, base=config)
        model = AIR(variant, seeds)
        model.load_state_dict(state)
        if no_baseline:
            with torch.no_grad():
                model.baseline.out.weight.zero_()
                model.baseline.out.bias.zero_()
        result = gradient_variance(model, x, schedule_at(variant, step), seeds, samples)
        rows.append({"estimator": label, "backprop": result.backprop.mean().item(),
                     "score": result.score.mean().item()})
    return rows


def variants(kinds: list[str], config: AIRConfig) -> list[tuple[str, dict[str, object], bool]]:
    """(row label, config overrides, zero the baseline?) per table row."""
    rows: list[tuple[str, dict[str, object], bool]] = []
    if "reinforce" in kinds:
        rows.append(("reinforce, no baseline", {"estimator.kind": "reinforce",
                                                "estimator.centre_signal": False,
                                                "estimator.normalise_signal": False}, True))
        rows.append(("reinforce, NVIL + neural baseline", {"estimator.kind": "reinforce"}, False))
    if "vimco" in kinds:
        particles = max(2, config.estimator.particles)
        rows.append((f"vimco, {particles} particles", {"estimator.kind": "vimco",
                                                       "estimator.particles": particles}, False))
    if "relaxed" in kinds:
        rows.append(("relaxed (Concrete)", {"estimator.kind": "relaxed"}, False))
    return rows


def plot_comparison(rows: list[dict[str, object]], path: Path) -> None:
    """Both classes' variance per estimator, log scale."""
    labels = [str(r["estimator"]) for r in rows]
    at = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.8 * len(rows) + 2, 3.6))
    ax.bar(at - 0.2, [r["backprop"] for r in rows], 0.4, label="back-propagated parameters")
    ax.bar(at + 0.2, [r["score"] for r in rows], 0.4, label="presence head (score function)")
    ax.set_yscale("log")
    ax.set_xticks(at, labels, fontsize=7)
    ax.set_ylabel("gradient variance per parameter")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
