"""Figures of the reproduction scripts (matplotlib, PNG files under ``docs/``).

* :func:`plot_consistency_heatmaps`: agreement with the unshifted prediction for every
  circular shift ``(dy, dx)`` of 32x32 CIFAR-10 test images, one panel per model.
* :func:`plot_accuracy_vs_consistency`: the CIFAR-10 Table-2 rows as points.
* :func:`plot_segmentation_shifts`: one CamVid image, predictions of each model at two
  circular shifts (shifted back), and where they disagree.

Every function takes plain arrays and dicts (what the results JSON holds), writes the
figure to ``path`` and returns ``path``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = [
    "CAMVID_PALETTE",
    "colorize",
    "plot_accuracy_vs_consistency",
    "plot_consistency_heatmaps",
    "plot_segmentation_shifts",
]

CAMVID_PALETTE = np.array(
    [
        (128, 128, 128),  # Sky
        (128, 0, 0),  # Building
        (192, 192, 128),  # Pole
        (128, 64, 128),  # Road
        (60, 40, 222),  # Pavement
        (128, 128, 0),  # Tree
        (192, 128, 128),  # SignSymbol
        (64, 64, 128),  # Fence
        (64, 0, 128),  # Car
        (64, 64, 0),  # Pedestrian
        (0, 128, 192),  # Bicyclist
    ],
    dtype=np.uint8,
)
"""The usual SegNet colours of the 11 CamVid classes; ignored pixels are drawn black."""


def _save(fig: plt.Figure, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_consistency_heatmaps(
    grids: Mapping[str, Any], path: Path | str, *, num_images: int | None = None
) -> Path:
    """Heat maps of per-shift agreement, one panel per model.

    Args:
        grids: ``label -> (H, W)`` array; entry ``[dy, dx]`` is the fraction of images whose
            prediction under the circular shift ``(dy, dx)`` equals the unshifted one
            (see ``benchmarks._common.shift_agreement_grid``).
        path: Output PNG.
        num_images: Number of test images behind each map, shown in the title.

    Returns:
        ``path``.
    """
    if not grids:
        raise ValueError("plot_consistency_heatmaps: no maps to plot; train at least one row first.")
    arrays = {label: np.asarray(grid, dtype=float) for label, grid in grids.items()}
    low = min(0.9, min(float(a.min()) for a in arrays.values()))
    fig, axes = plt.subplots(1, len(arrays), figsize=(4.2 * len(arrays), 4.0), squeeze=False)
    image = None
    for index, (ax, (label, grid)) in enumerate(zip(axes[0], arrays.items())):
        image = ax.imshow(grid, vmin=low, vmax=1.0, cmap="viridis", origin="upper")
        ax.set_title(f"{label}\nmean {100 * grid.mean():.2f}%, min {100 * grid.min():.2f}%", fontsize=10)
        ax.set_xlabel("dx (pixels)")
        if index == 0:
            ax.set_ylabel("dy (pixels)")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.85, label="same class as unshifted")
    subtitle = f" ({num_images} CIFAR-10 test images)" if num_images else ""
    fig.suptitle(f"Prediction agreement under every circular shift{subtitle}", fontsize=11)
    return _save(fig, path)


def plot_accuracy_vs_consistency(rows: Sequence[Mapping[str, Any]], path: Path | str,
                                 title: str = "CIFAR-10, ResNet-20") -> Path:
    """Scatter of test accuracy against circular consistency.

    Args:
        rows: Dicts with ``label``, ``acc`` and ``consistency`` (fractions in [0, 1]);
            an optional ``method`` (``baseline``/``aps``/``mass``/``aps_official``) sets the
            colour and an optional ``antialias`` (``lpf3``, ``ddac3``, ...) the marker.
        path: Output PNG.
        title: Plot title; the marker legend is appended.

    Returns:
        ``path``.
    """
    points = [r for r in rows if r.get("acc") is not None and r.get("consistency") is not None]
    if not points:
        raise ValueError("plot_accuracy_vs_consistency: no row has both acc and consistency.")
    colours = {"baseline": "tab:gray", "aps": "tab:blue", "mass": "tab:red", "aps_official": "tab:purple"}
    markers = {"lpf": "s", "ddac": "^"}
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    # Colour = method, marker = filter: every row is one distinct symbol, named in the legend
    # (labels next to points collide where rows sit at the same consistency).
    for row in sorted(points, key=lambda r: (float(r["consistency"]), float(r["acc"]))):
        acc, cons = 100 * float(row["acc"]), 100 * float(row["consistency"])
        kind = str(row.get("antialias") or "").rstrip("0123456789")
        ax.scatter(acc, cons, s=60, color=colours.get(str(row.get("method")), "tab:green"),
                   marker=markers.get(kind, "o"), zorder=3, label=str(row["label"]))
    ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
    ax.set_xlabel("test accuracy (%)")
    ax.set_ylabel("circular consistency (%)")
    ax.grid(alpha=0.3)
    ax.set_title(f"{title} (circles: no filter, squares: LPF, triangles: DDAC)", fontsize=9)
    ax.margins(x=0.25, y=0.3)
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, min(top, 101.0))  # consistency cannot exceed 100%
    return _save(fig, path)


def colorize(labels: np.ndarray, palette: np.ndarray = CAMVID_PALETTE) -> np.ndarray:
    """``(H, W)`` class ids -> ``(H, W, 3)`` uint8 colours; ids outside the palette are black."""
    labels = np.asarray(labels)
    out = np.zeros((*labels.shape, 3), dtype=np.uint8)
    valid = (labels >= 0) & (labels < len(palette))
    out[valid] = palette[labels[valid]]
    return out


def plot_segmentation_shifts(
    image: np.ndarray,
    target: np.ndarray,
    predictions: Mapping[str, Sequence[np.ndarray]],
    shifts: Sequence[Sequence[int]],
    path: Path | str,
    *,
    palette: np.ndarray = CAMVID_PALETTE,
) -> Path:
    """One image, each model's label maps at two circular shifts, and their disagreement.

    Args:
        image: ``(H, W, 3)`` image, uint8 or float in [0, 1].
        target: ``(H, W)`` ground-truth class ids (ignored pixels outside the palette).
        predictions: ``label -> (pred_a, pred_b)``: ``(H, W)`` label maps predicted for the
            image shifted by ``shifts[0]`` and by ``shifts[1]``, both already shifted back.
        shifts: The two ``(dy, dx)`` shifts.
        path: Output PNG.
        palette: ``(K, 3)`` class colours.

    Returns:
        ``path``.
    """
    if len(shifts) != 2:
        raise ValueError(f"plot_segmentation_shifts: need exactly two shifts, got {len(shifts)}.")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    gray = image.mean(axis=2, keepdims=True).repeat(3, axis=2).astype(np.uint8) // 2 + 64
    rows = len(predictions)
    fig, axes = plt.subplots(rows + 1, 3, figsize=(12, 3.0 * (rows + 1)), squeeze=False)
    axes[0, 0].imshow(image)
    axes[0, 0].set_title("input")
    axes[0, 1].imshow(colorize(target, palette))
    axes[0, 1].set_title("ground truth")
    axes[0, 2].axis("off")
    (ay, ax_), (by, bx) = (tuple(int(v) for v in s) for s in shifts)
    axes[0, 2].text(0.0, 0.5, f"shift A = (dy={ay}, dx={ax_})\nshift B = (dy={by}, dx={bx})\n\n"
                    "each prediction is shifted back;\nred = the two predictions differ",
                    fontsize=11, va="center")
    for row, (label, (pred_a, pred_b)) in enumerate(predictions.items(), start=1):
        pred_a, pred_b = np.asarray(pred_a), np.asarray(pred_b)
        differ = pred_a != pred_b
        overlay = gray.copy()
        overlay[differ] = (230, 20, 20)
        axes[row, 0].imshow(colorize(pred_a, palette))
        axes[row, 0].set_title(f"{label}: shift A")
        axes[row, 1].imshow(colorize(pred_b, palette))
        axes[row, 1].set_title(f"{label}: shift B")
        axes[row, 2].imshow(overlay)
        axes[row, 2].set_title(f"{label}: {100 * differ.mean():.2f}% of pixels differ")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)
