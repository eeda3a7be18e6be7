"""The blog's picture: inputs, reconstructions with glimpse boxes coloured by step, presence."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

STEP_COLOURS = ("tab:red", "tab:green", "tab:blue", "tab:orange", "tab:purple", "tab:cyan")


def reconstruction_figure(images: np.ndarray, canvases: np.ndarray, boxes: np.ndarray,
                          presence: np.ndarray, title: str, path: Path) -> Path:
    """images, canvases (N, H, W); boxes (N, K, 4) pixels; presence (N, K) probabilities."""
    n, steps = presence.shape
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 4.4), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(images[i], cmap="gray", vmin=0, vmax=1)
        axes[1, i].imshow(np.clip(canvases[i], 0, 1), cmap="gray", vmin=0, vmax=1)
        count = 0
        for k in range(steps):
            if presence[i, k] <= 0.5 or count < k:
                continue
            count += 1
            x0, y0, x1, y1 = boxes[i, k]
            axes[1, i].add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5,
                                           edgecolor=STEP_COLOURS[k % len(STEP_COLOURS)]))
        axes[1, i].set_xlabel(" ".join(f"{p:.2f}" for p in presence[i]), fontsize=7)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("reconstruction")
    fig.suptitle(f"{title}\nboxes coloured by step (red, green, blue); "
                 "numbers: presence probability per step", fontsize=8)
    fig.tight_layout(h_pad=1.2)  # keep the input and reconstruction panels apart
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def attention_figure(centres: np.ndarray, present: np.ndarray, canvas_size: int, title: str,
                     path: Path, bins: int = 25) -> Path:
    """The blog's localisation-policy picture: per step, a 2D histogram of where its box is
    centred over held-out images where that step is present. centres (N, K, 2) pixels (x, y);
    present (N, K) bool."""
    steps = present.shape[1]
    fig, axes = plt.subplots(1, steps, figsize=(2.4 * steps, 2.8), squeeze=False)
    for k, ax in enumerate(axes[0]):
        xy = centres[present[:, k], k]
        xy = xy[np.isfinite(xy).all(-1)]
        hist, _, _ = np.histogram2d(xy[:, 1], xy[:, 0], bins=bins,
                                    range=[[0, canvas_size], [0, canvas_size]])
        shown = ax.imshow(hist, cmap="magma", extent=(0, canvas_size, canvas_size, 0))
        ax.set_title(f"step {k + 1}: {len(xy)} of {len(present)}", fontsize=8,
                     color=STEP_COLOURS[k % len(STEP_COLOURS)])
        ax.set_xlabel("x (px)", fontsize=7)
        ax.tick_params(labelsize=6)
        if k == 0:
            ax.set_ylabel("y (px)", fontsize=7)
        bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        bar.set_label("images", fontsize=6)
        bar.ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def confusion_figure(confusions: list[list[list[int]]], titles: list[str], path: Path) -> Path:
    """Count confusion matrices (rows: true count, columns: inferred), one panel each, with
    each cell's share of its row, so a collapse to zero shows as a bright first column."""
    n = len(confusions)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.5 * rows), squeeze=False)
    for ax, matrix, title in zip(axes.flat, confusions, titles, strict=False):
        counts = np.asarray(matrix, dtype=float)
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (i, j), value in np.ndenumerate(share):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if value > 0.5 else "black")
        ax.set_xticks(range(counts.shape[1]))
        ax.set_yticks(range(counts.shape[0]))
        ax.tick_params(labelsize=6)
        ax.set_xlabel("inferred count", fontsize=7)
        ax.set_ylabel("true count", fontsize=7)
        ax.set_title(title, fontsize=7)
    for ax in axes.flat[n:]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
