"""`lr_find_run`: the learning-rate finder on a recipe's stage, plotted to a PNG."""

import json
import os

import tensorflow as tf

from kmedimg.training.lr_finder import (
    DEFAULT_MAX_LR, DEFAULT_MIN_LR, DEFAULT_STEPS, find_for_config, plot_sweep,
)

DEFAULT_PLOT = "lr_find.png"


def lr_find_run(config, out=None, stage_index=0, steps=DEFAULT_STEPS, min_lr=DEFAULT_MIN_LR,
                max_lr=DEFAULT_MAX_LR):
    """Sweeps the learning rate of one stage of `config`'s recipe and plots the loss.

    Runs on a fresh model (no run directory is touched); writes the plot and the sweep
    as JSON beside it (`lr_find.json`).

    Args:
        config: a `RecipeConfig`.
        out: the PNG's path. Defaults to `lr_find.png` in the current directory.
        stage_index: which stage of the recipe. Defaults to `0` (the first).
        steps: steps of the sweep. Defaults to `200`.
        min_lr: the first learning rate. Defaults to `1e-7`.
        max_lr: the last learning rate. Defaults to `1.0`.

    Returns:
        `(LRFindResult, plot path)`.
    """
    _require_matplotlib()
    out = out or DEFAULT_PLOT
    result = find_for_config(config, stage_index, min_lr=min_lr, max_lr=max_lr, steps=steps)
    parent = os.path.dirname(out)
    if parent:
        tf.io.gfile.makedirs(parent)
    plot_sweep(result, out)
    with tf.io.gfile.GFile(os.path.splitext(out)[0] + ".json", "w") as handle:
        handle.write(json.dumps(result.to_dict(), indent=1, allow_nan=True) + "\n")
    return result, out


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ValueError(
            "the learning-rate plot needs matplotlib, a core dependency of kmedimg: reinstall it (pip install kmedimg). "
            f"Received: {error}"
        ) from error
