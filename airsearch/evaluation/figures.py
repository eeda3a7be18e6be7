"""The blog's picture: inputs, reconstructions with glimpse boxes coloured by step, presence."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

STEP_COLOURS = ("tab:red", "tab:green", "tab:blue", "tab:orange", "tab:purple", "tab:cyan")


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """A PNG at print resolution and a PDF beside it, cropped to what is drawn (no label cut)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=200, bbox_inches="tight")
    fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    plt.close(fig)
    return path


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
    return save_figure(fig, path)


def attention_figure(centres: np.ndarray, present: np.ndarray, canvas_size: int, title: str,
                     path: Path, bins: int = 25) -> Path:
    """The blog's localisation-policy picture: per step, a 2D histogram of where its box is
    centred over held-out images where that step is present. centres (N, K, 2) pixels (x, y);
    present (N, K) bool."""
    steps = present.shape[1]
    hists, shown_counts = [], []
    for k in range(steps):
        xy = centres[present[:, k], k]
        xy = xy[np.isfinite(xy).all(-1)]
        hist, _, _ = np.histogram2d(xy[:, 1], xy[:, 0], bins=bins,
                                    range=[[0, canvas_size], [0, canvas_size]])
        hists.append(hist)
        shown_counts.append(len(xy))
    top = max(1.0, max(float(h.max()) for h in hists))  # one colour scale for every step
    fig, axes = plt.subplots(1, steps, figsize=(2.4 * steps + 0.6, 2.8), squeeze=False)
    for k, ax in enumerate(axes[0]):
        shown = ax.imshow(hists[k], cmap="magma", vmin=0, vmax=top,
                          extent=(0, canvas_size, canvas_size, 0))
        ax.set_title(f"step {k + 1}: {shown_counts[k]} of {len(present)}", fontsize=8,
                     color=STEP_COLOURS[k % len(STEP_COLOURS)])
        ax.set_xlabel("x (px)", fontsize=7)
        ax.tick_params(labelsize=6)
        if k == 0:
            ax.set_ylabel("y (px)", fontsize=7)
    bar = fig.colorbar(shown, ax=list(axes[0]), fraction=0.02, pad=0.02)
    bar.set_label("images per bin", fontsize=6)
    bar.ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=8)
    return save_figure(fig, path)


def confusion_figure(confusions: list[list[list[int]]], titles: list[str], path: Path) -> Path:
    """Count confusion matrices (rows: true count, columns: inferred), one panel each, with
    each cell's share of its row, so a collapse to zero shows as a bright first column."""
    n = len(confusions)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols + 0.6, 2.5 * rows), squeeze=False)
    for ax, matrix, title in zip(axes.flat, confusions, titles, strict=False):
        counts = np.asarray(matrix, dtype=float)
        per_row = counts.sum(1)
        share = counts / np.maximum(per_row[:, None], 1)
        shown = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (i, j), value in np.ndenumerate(share):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if value > 0.5 else "black")
        ax.set_xticks(range(counts.shape[1]))
        ax.set_yticks(range(counts.shape[0]),
                      [f"{c} (n={int(total)})" for c, total in enumerate(per_row)])
        ax.tick_params(labelsize=6)
        ax.set_xlabel("inferred count", fontsize=7)
        ax.set_ylabel("true count (images)", fontsize=7)
        ax.set_title(title, fontsize=7)
    for ax in axes.flat[n:]:
        ax.axis("off")
    fig.tight_layout()
    bar = fig.colorbar(shown, ax=list(axes.flat), fraction=0.025, pad=0.03)
    bar.set_label("share of the row's images", fontsize=6)
    bar.ax.tick_params(labelsize=6)
    return save_figure(fig, path)
