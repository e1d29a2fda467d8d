"""ROC and precision-recall curves, with pointwise bootstrap bands for plotting."""

import numpy as np

from kmedimg.evaluation import kernels
from kmedimg.evaluation.bootstrap import stratified_bootstrap_weights


def roc_curve(labels, scores):
    """ROC points (ascending FPR) with the threshold of each: `(fpr, tpr, thresholds)`."""
    labels = np.asarray(labels).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    thresholds, sensitivity, specificity, _ = kernels.operating_points(labels, scores)
    return 1 - specificity, sensitivity, np.r_[np.inf, thresholds[1:]]


def curve_band(labels, scores, kind="roc", *, n_bootstrap=200, confidence=0.95, seed=0, grid_size=101):
    """A curve on a fixed grid with a pointwise bootstrap band, for plotting.

    Args:
        labels: 0/1 labels [N] (one-vs-rest for one class).
        scores: scores [N].
        kind: "roc" (TPR on an FPR grid) or "pr" (interpolated precision on a recall
            grid). Defaults to `"roc"`.
        n_bootstrap: replicates. Defaults to `200`.
        confidence: band coverage. Defaults to `0.95`.
        seed: bootstrap seed. Defaults to `0`.
        grid_size: grid points on [0, 1]. Defaults to `101`.

    Returns:
        dict with `grid`, `value`, `low`, `high` (lists of floats).
    """
    if kind not in ("roc", "pr"):
        raise ValueError(f"`kind` must be one of ('roc', 'pr'). Received: kind={kind!r}")
    labels = np.asarray(labels).astype(np.int64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    grid = np.linspace(0.0, 1.0, grid_size)

    def curves(weights):
        _, pos, neg = kernels.grouped_by_score(scores, labels, weights)
        tp = np.cumsum(pos[:, ::-1], axis=1)
        fp = np.cumsum(neg[:, ::-1], axis=1)
        tpr = tp / np.maximum(tp[:, -1:], 1e-12)
        rows = []
        if kind == "roc":
            fpr = fp / np.maximum(fp[:, -1:], 1e-12)
            for row in range(weights.shape[0]):
                rows.append(np.interp(grid, np.r_[0.0, fpr[row]], np.r_[0.0, tpr[row]]))
        else:
            precision = tp / np.maximum(tp + fp, 1e-12)
            # Interpolated precision: the best precision at any recall >= r.
            best = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
            for row in range(weights.shape[0]):
                index = np.searchsorted(tpr[row], grid, side="left")
                index = np.minimum(index, tpr.shape[1] - 1)
                rows.append(best[row, index])
        return np.stack(rows)

    value = curves(np.ones((1, labels.shape[0])))[0]
    replicates = np.concatenate(
        [curves(weights) for weights in stratified_bootstrap_weights(labels, n_bootstrap, seed)]
    ) if n_bootstrap > 0 else value[np.newaxis]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail], axis=0)
    return {"grid": grid.tolist(), "value": value.tolist(), "low": low.tolist(), "high": high.tolist()}
