"""Heatmap overlays: the input in its stored intensities with the explanation over it.

matplotlib (the `[report]` extra) is imported only when a figure is drawn.
"""

import io
import os

import numpy as np
import tensorflow as tf


def display_range(image):
    """(low, high) intensity shown: the 0.5th-99.5th percentile, inside the stored range."""
    values = np.asarray(image, dtype=np.float64)
    low, high = np.percentile(values, [0.5, 99.5])
    if high <= low:
        low, high = float(values.min()), float(values.max()) + 1.0
    return float(low), float(high)


def overlay_figure(image, heatmap, title=None, heatmap_label="Grad-CAM", alpha=0.6):
    """A matplotlib Figure: the input in its stored intensities, and the heatmap over it.

    Args:
        image: [H, W, C] (or [H, W]) in the stored range (e.g. 0..65535 for uint16).
        heatmap: [H, W] (normalised to its max for display).
        title: figure title. Defaults to `None`.
        heatmap_label: colourbar label of the heatmap. Defaults to `"Grad-CAM"`.
        alpha: heatmap opacity at the heatmap's peak (fades to transparent at 0).
            Defaults to `0.6`.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    heatmap = np.asarray(heatmap, dtype=np.float32)
    peak = float(np.max(np.abs(heatmap))) or 1.0
    shown = np.clip(heatmap / peak, 0, 1)
    low, high = display_range(image)
    figure = Figure(figsize=(6.4, 3.2), dpi=100, layout="constrained")
    left, right = figure.subplots(1, 2)
    if image.ndim == 2:
        grey = left.imshow(image, cmap="gray", vmin=low, vmax=high)
        right.imshow(image, cmap="gray", vmin=low, vmax=high)
        figure.colorbar(grey, ax=left, fraction=0.046, pad=0.02, label="stored intensity")
    else:
        rgb = np.clip((image - low) / (high - low), 0, 1)
        left.imshow(rgb)
        right.imshow(rgb)
    heat = right.imshow(shown, cmap="jet", alpha=alpha * shown, vmin=0, vmax=1)
    figure.colorbar(heat, ax=right, fraction=0.046, pad=0.02, label=heatmap_label)
    left.set_title(f"input [{low:.0f}, {high:.0f}]", fontsize=9)
    right.set_title(heatmap_label, fontsize=9)
    for axis in (left, right):
        axis.set_xticks([])
        axis.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def save_overlay(path, image, heatmap, title=None, heatmap_label="Grad-CAM"):
    """Writes `overlay_figure(...)` as a PNG file (local, gs:// or ram://) and returns the path."""
    figure = overlay_figure(image, heatmap, title=title, heatmap_label=heatmap_label)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    with tf.io.gfile.GFile(os.fspath(path), "wb") as handle:
        handle.write(buffer.getvalue())
    return path
