"""Stratified bootstrap: replicate weights and percentile intervals of any kernel."""

import math

import numpy as np

# Bootstrap weights are built in chunks of at most this many matrix cells
# (replicates x samples) so memory stays bounded for large test sets.
_CHUNK_CELLS = 2_000_000
# In multilabel stratification, label combinations rarer than this are pooled.
_MIN_STRATUM = 5


def stratified_bootstrap_weights(strata, n_bootstrap, seed=0):
    """Yields chunks of bootstrap weights, each of shape [b, N], b summing to n_bootstrap.

    Each replicate draws, with replacement, as many samples from every stratum as the
    stratum holds, so class counts are the same in every replicate. Row `i`, column
    `j` counts how often sample `j` was drawn in replicate `i`.

    Args:
        strata: int array [N], the stratum of each sample.
        n_bootstrap: number of replicates.
        seed: seed of the numpy Generator. Defaults to `0`.
    """
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(strata == value) for value in np.unique(strata)]
    chunk = max(1, _CHUNK_CELLS // max(1, strata.shape[0]))
    done = 0
    while done < n_bootstrap:
        size = min(chunk, n_bootstrap - done)
        weights = np.zeros((size, strata.shape[0]))
        for index in members:
            weights[:, index] = rng.multinomial(index.size, np.full(index.size, 1.0 / index.size), size=size)
        done += size
        yield weights


def strata(labels, task):
    """The stratum of each sample: its class, or (multilabel) its label combination."""
    if task != "multilabel":
        return labels
    _, combination = np.unique(labels, axis=0, return_inverse=True)
    combination = combination.ravel()
    counts = np.bincount(combination)
    rare = counts[combination] < _MIN_STRATUM
    return np.where(rare, -1, combination)


def json_float(value):
    """A float for JSON: None for NaN and infinities."""
    value = float(value)
    return None if not math.isfinite(value) else value


def intervals(kernel, labels, task, n_bootstrap, confidence, seed):
    """Point estimates and percentile intervals for every metric `kernel` returns.

    Args:
        kernel: function weights [B, N] -> {metric: [B]}.
        labels: the prepared labels (for stratification).
        task: the task.
        n_bootstrap: replicates; 0 gives point estimates only.
        confidence: interval level.
        seed: bootstrap seed.

    Returns:
        metric -> {"value", "ci_low", "ci_high"}.
    """
    point = {name: float(value[0]) for name, value in kernel(np.ones((1, labels.shape[0]))).items()}
    if n_bootstrap <= 0:
        return {name: {"value": json_float(value), "ci_low": None, "ci_high": None}
                for name, value in point.items()}
    replicates = {name: [] for name in point}
    for weights in stratified_bootstrap_weights(strata(labels, task), n_bootstrap, seed):
        for name, values in kernel(weights).items():
            replicates[name].append(values)
    tail = (1 - confidence) / 2 * 100
    result = {}
    for name, value in point.items():
        values = np.concatenate(replicates[name])
        values = values[np.isfinite(values)]
        if values.size:
            low, high = np.percentile(values, [tail, 100 - tail])
        else:
            low = high = math.nan
        result[name] = {"value": json_float(value), "ci_low": json_float(low),
                        "ci_high": json_float(high)}
    return result


def describe(n_bootstrap, confidence, seed, task):
    """The `bootstrap` entry of a result: replicates, level, seed, method, strata."""
    return {
        "n_bootstrap": int(n_bootstrap),
        "confidence": float(confidence),
        "seed": int(seed),
        "method": "percentile",
        "stratified_by": "label combination (rare ones pooled)" if task == "multilabel" else "class",
    }


def check_arguments(n_bootstrap, confidence, n_bins):
    """Validates the bootstrap and calibration arguments shared by every metric function."""
    if int(n_bootstrap) < 0:
        raise ValueError(f"`n_bootstrap` must be >= 0. Received: n_bootstrap={n_bootstrap}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1). Received: confidence={confidence}")
    if int(n_bins) < 1:
        raise ValueError(f"`n_bins` must be >= 1. Received: n_bins={n_bins}")
