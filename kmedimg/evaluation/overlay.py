"""Heatmap overlays: the input in its stored intensities with the explanation over it.

matplotlib (a core dependency) is imported only when a figure is drawn.
"""

import io
import os

import numpy as np
import tensorflow as tf

HEATMAP_COLORMAP = "viridis"
"""Perceptually uniform (equal steps look equal, and it stays readable in grey),
unlike "jet", whose bright bands invent edges the heatmap does not have."""


def display_range(image):
    """(low, high) intensity shown: the 0.5th-99.5th percentile, inside the stored range."""
    values = np.asarray(image, dtype=np.float64)
    low, high = np.percentile(values, [0.5, 99.5])
    if high <= low:
        low, high = float(values.min()), float(values.max()) + 1.0
    return float(low), float(high)


def show_image(axis, image):
    """Draws an [H, W] or [H, W, 3] image in its display range: `(grey_image or None, low, high)`."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    low, high = display_range(image)
    if image.ndim == 2:
        return axis.imshow(image, cmap="gray", vmin=low, vmax=high), low, high
    axis.imshow(np.clip((image - low) / (high - low), 0, 1))
    return None, low, high


def show_heatmap(axis, image, heatmap, alpha=0.6):
    """Draws `image` and a [0, 1] heatmap over it (opacity grows with the value); returns
    the heatmap's AxesImage, for a colour bar."""
    show_image(axis, image)
    heatmap = np.clip(np.asarray(heatmap, dtype=np.float32), 0, 1)
    return axis.imshow(heatmap, cmap=HEATMAP_COLORMAP, alpha=alpha * heatmap, vmin=0, vmax=1)


def heatmap_scale(heat):
    """An opaque stand-in of a heatmap's AxesImage for its colour bar (the overlay's
    opacity varies per pixel; the bar shows the colours at full strength)."""
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=heat.norm, cmap=heat.cmap)


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

    heatmap = np.asarray(heatmap, dtype=np.float32)
    peak = float(np.max(np.abs(heatmap))) or 1.0
    shown = np.clip(heatmap / peak, 0, 1)
    figure = Figure(figsize=(6.4, 3.2), dpi=100, layout="constrained")
    left, right = figure.subplots(1, 2)
    grey, low, high = show_image(left, image)
    if grey is not None:
        figure.colorbar(grey, ax=left, fraction=0.046, pad=0.02, label="stored intensity")
    heat = show_heatmap(right, image, shown, alpha)
    figure.colorbar(heatmap_scale(heat), ax=right, fraction=0.046, pad=0.02, label="relative to its peak")
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
