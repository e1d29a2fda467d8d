"""Weighted metric kernels: one code path for point estimates and bootstrap replicates.

Each kernel takes per-sample weights of shape [B, N]: the point estimate uses one row
of ones, a bootstrap replicate the number of times each sample was drawn. All
replicates are computed at once as matrix operations.
"""

import numpy as np


def safe_divide(numerator, denominator):
    """`numerator / denominator`, NaN where the denominator is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def grouped_by_score(scores, labels, weights):
    """Per distinct score (ascending): the scores and weighted positives and negatives [B, U]."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    sorted_weights = weights[:, order]
    positive = labels[order].astype(np.float64)
    pos = np.add.reduceat(sorted_weights * positive, starts, axis=1)
    neg = np.add.reduceat(sorted_weights * (1.0 - positive), starts, axis=1)
    return sorted_scores[starts], pos, neg


def weighted_roc_auc(scores, labels, weights):
    """ROC AUC per weight row [B] (ties count one half)."""
    _, pos, neg = grouped_by_score(scores, labels, weights)
    negatives_below = np.cumsum(neg, axis=1) - neg
    concordant = np.sum(pos * (negatives_below + 0.5 * neg), axis=1)
    return safe_divide(concordant, pos.sum(axis=1) * neg.sum(axis=1))


def weighted_average_precision(scores, labels, weights):
    """Average precision per weight row [B] (as sklearn's `average_precision_score`)."""
    _, pos, neg = grouped_by_score(scores, labels, weights)
    true_pos = np.cumsum(pos[:, ::-1], axis=1)
    false_pos = np.cumsum(neg[:, ::-1], axis=1)
    total_pos = true_pos[:, -1:]
    predicted = true_pos + false_pos
    precision = np.where(predicted > 0, true_pos / np.where(predicted > 0, predicted, 1), 1.0)
    recall = true_pos / np.where(total_pos > 0, total_pos, 1)
    recall_step = np.diff(recall, axis=1, prepend=0.0)
    ap = np.sum(recall_step * precision, axis=1)
    return np.where(total_pos[:, 0] > 0, ap, np.nan)


def bin_ids(confidence, n_bins):
    """Equal-width bin of each confidence (as sklearn's calibration_curve "uniform")."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], confidence)


def weighted_ece(confidence, outcome, weights, n_bins):
    """Expected calibration error per weight row [B]."""
    bins = bin_ids(confidence, n_bins)
    membership = np.zeros((confidence.shape[0], n_bins))
    membership[np.arange(confidence.shape[0]), bins] = 1.0
    count = weights @ membership
    mean_confidence = (weights * confidence) @ membership
    mean_outcome = (weights * outcome) @ membership
    gap = np.abs(mean_confidence - mean_outcome)
    return safe_divide(gap.sum(axis=1), count.sum(axis=1))


def binary_kernel(labels, scores, decisions, weights, n_bins):
    """All binary metrics for each weight row; returns name -> array [B]."""
    labels_f = labels.astype(np.float64)
    decisions_f = decisions.astype(np.float64)
    tp = weights @ (labels_f * decisions_f)
    fp = weights @ ((1 - labels_f) * decisions_f)
    fn = weights @ (labels_f * (1 - decisions_f))
    tn = weights @ ((1 - labels_f) * (1 - decisions_f))
    sensitivity = safe_divide(tp, tp + fn)
    specificity = safe_divide(tn, tn + fp)
    return {
        "accuracy": safe_divide(tp + tn, tp + tn + fp + fn),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "roc_auc": weighted_roc_auc(scores, labels, weights),
        "pr_auc": weighted_average_precision(scores, labels, weights),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": safe_divide(tp, tp + fp),
        "npv": safe_divide(tn, tn + fn),
        "f1": safe_divide(2 * tp, 2 * tp + fp + fn),
        "brier": safe_divide(weights @ (scores - labels_f) ** 2, weights.sum(axis=1)),
        "ece": weighted_ece(scores, labels_f, weights, n_bins),
    }


def operating_points(labels, scores):
    """Sensitivity/specificity/F1 at every distinct score used as threshold (descending).

    Returns:
        `(thresholds, sensitivity, specificity, f1)`, preceded by a threshold above every
        score (nothing called positive).
    """
    thresholds, pos, neg = grouped_by_score(scores, labels, np.ones((1, scores.shape[0])))
    thresholds = np.r_[np.nextafter(thresholds[-1], np.inf), thresholds[::-1]]
    tp, fp = np.cumsum(np.r_[0.0, pos[0, ::-1]]), np.cumsum(np.r_[0.0, neg[0, ::-1]])
    total_pos, total_neg = tp[-1], fp[-1]
    sensitivity = tp / total_pos
    specificity = 1 - fp / total_neg
    f1 = 2 * tp / (2 * tp + fp + (total_pos - tp))
    return thresholds, sensitivity, specificity, f1
