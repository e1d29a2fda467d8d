"""kmedimg.evaluation metrics against scikit-learn, plus bootstrap coverage and threshold rules."""

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from kmedimg import evaluation
from kmedimg.evaluation import kernels


def _binary_arrays(n=300, seed=1, ties=False):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.35).astype(int)
    scores = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.3 * labels - 0.5)))
    if ties:
        scores = np.round(scores, 1)  # many tied scores
    return labels, scores


def _value(result, name):
    return result["metrics"][name]["value"]


@pytest.mark.parametrize("ties", [False, True])
def test_binary_point_estimates_match_sklearn(ties):
    labels, scores = _binary_arrays(ties=ties)
    threshold = evaluation.Threshold.fixed(0.42)
    result = evaluation.binary_metrics(labels, scores, threshold, split="test", n_bootstrap=0)
    pred = (scores >= 0.42).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(labels, pred).ravel()
    assert _value(result, "roc_auc") == pytest.approx(skm.roc_auc_score(labels, scores))
    assert _value(result, "pr_auc") == pytest.approx(skm.average_precision_score(labels, scores))
    assert _value(result, "accuracy") == pytest.approx(skm.accuracy_score(labels, pred))
    assert _value(result, "balanced_accuracy") == pytest.approx(
        skm.balanced_accuracy_score(labels, pred))
    assert _value(result, "sensitivity") == pytest.approx(skm.recall_score(labels, pred))
    assert _value(result, "specificity") == pytest.approx(tn / (tn + fp))
    assert _value(result, "ppv") == pytest.approx(skm.precision_score(labels, pred))
    assert _value(result, "npv") == pytest.approx(tn / (tn + fn))
    assert _value(result, "f1") == pytest.approx(skm.f1_score(labels, pred))
    assert _value(result, "brier") == pytest.approx(skm.brier_score_loss(labels, scores))
    assert result["confusion_matrix"]["matrix"] == skm.confusion_matrix(labels, pred).tolist()
    prob_true, prob_pred = calibration_curve(labels, scores, n_bins=10)
    bins = [b for b in result["calibration"]["bins"] if b["count"]]
    np.testing.assert_allclose([b["fraction_positive"] for b in bins], prob_true)
    np.testing.assert_allclose([b["mean_predicted"] for b in bins], prob_pred)
    counts = np.array([b["count"] for b in bins])
    ece = np.sum(counts / counts.sum() * np.abs(prob_true - prob_pred))
    assert _value(result, "ece") == pytest.approx(ece)
    assert result["num_samples"] == 300 and result["split"] == "test"
    assert sum(result["class_counts"].values()) == 300
    json.dumps(result, allow_nan=False)


def test_weighted_kernels_match_sklearn_sample_weight():
    # A bootstrap replicate is the same metric with integer sample weights.
    labels, scores = _binary_arrays(n=120, seed=3, ties=True)
    weights = next(evaluation.stratified_bootstrap_weights(labels, 4, seed=5))
    auc = kernels.weighted_roc_auc(scores, labels, weights)
    ap = kernels.weighted_average_precision(scores, labels, weights)
    for row in range(4):
        keep = weights[row] > 0
        w = weights[row][keep]
        assert auc[row] == pytest.approx(
            skm.roc_auc_score(labels[keep], scores[keep], sample_weight=w))
        assert ap[row] == pytest.approx(
            skm.average_precision_score(labels[keep], scores[keep], sample_weight=w))
        # Stratified: class counts are the same in every replicate.
        assert weights[row][labels == 1].sum() == labels.sum()


def test_multiclass_matches_sklearn():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, size=240)
    logits = rng.normal(size=(240, 3)) + 1.5 * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    result = evaluation.evaluate(labels, probs, task="multiclass", split="test", n_bootstrap=0,
                                 class_names=["a", "b", "c"])
    pred = probs.argmax(axis=1)
    one_hot = np.eye(3)[labels]
    assert _value(result, "accuracy") == pytest.approx(skm.accuracy_score(labels, pred))
    assert _value(result, "balanced_accuracy") == pytest.approx(
        skm.balanced_accuracy_score(labels, pred))
    assert _value(result, "macro_roc_auc") == pytest.approx(
        skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert _value(result, "macro_pr_auc") == pytest.approx(
        skm.average_precision_score(one_hot, probs, average="macro"))
    assert _value(result, "macro_f1") == pytest.approx(skm.f1_score(labels, pred, average="macro"))
    per_auc = skm.roc_auc_score(one_hot, probs, average=None)
    per_ppv = skm.precision_score(labels, pred, average=None)
    for k, name in enumerate(["a", "b", "c"]):
        assert result["per_class"][name]["roc_auc"]["value"] == pytest.approx(per_auc[k])
        assert result["per_class"][name]["ppv"]["value"] == pytest.approx(per_ppv[k])
    assert result["confusion_matrix"]["matrix"] == skm.confusion_matrix(labels, pred).tolist()
    correct = (pred == labels).astype(int)
    prob_true, prob_pred = calibration_curve(correct, probs.max(axis=1), n_bins=10)
    bins = [b for b in result["calibration"]["bins"] if b["count"]]
    np.testing.assert_allclose([b["fraction_positive"] for b in bins], prob_true)
    # One-hot labels give the same result.
    again = evaluation.evaluate(one_hot, probs, task="multiclass", split="test", n_bootstrap=0,
                                class_names=["a", "b", "c"])
    assert again["metrics"] == result["metrics"]


def test_multilabel_matches_sklearn():
    rng = np.random.default_rng(11)
    labels = (rng.random((200, 4)) < [0.2, 0.4, 0.5, 0.1]).astype(int)
    probs = 1 / (1 + np.exp(-(rng.normal(size=(200, 4)) + 2 * labels - 1)))
    threshold = evaluation.Threshold(rule="youden", values=(0.3, 0.5, 0.6, 0.4), chosen_on="val")
    result = evaluation.evaluate(labels, probs, task="multilabel", threshold=threshold,
                                 split="test", n_bootstrap=0)
    pred = (probs >= np.array([0.3, 0.5, 0.6, 0.4])).astype(int)
    assert _value(result, "subset_accuracy") == pytest.approx(skm.accuracy_score(labels, pred))
    assert _value(result, "accuracy") == pytest.approx(1 - skm.hamming_loss(labels, pred))
    assert _value(result, "macro_roc_auc") == pytest.approx(
        skm.roc_auc_score(labels, probs, average="macro"))
    assert _value(result, "macro_pr_auc") == pytest.approx(
        skm.average_precision_score(labels, probs, average="macro"))
    assert _value(result, "macro_f1") == pytest.approx(skm.f1_score(labels, pred, average="macro"))
    matrices = skm.multilabel_confusion_matrix(labels, pred)
    for k in range(4):
        assert result["confusion_matrix"][f"class_{k}"]["matrix"] == matrices[k].tolist()
    assert result["threshold"]["values"] == [0.3, 0.5, 0.6, 0.4]


def test_bootstrap_interval_covers_true_auc_and_sensitivity_at_nominal_rate():
    # Scores: negatives N(0,1), positives N(d,1) -> true AUC = Phi(d / sqrt 2);
    # at threshold t the true sensitivity is 1 - Phi(t - d).
    d, t = 1.0, 0.5
    true_auc = 0.5 * (1 + math.erf(d / 2))
    true_sensitivity = 1 - 0.5 * (1 + math.erf((t - d) / math.sqrt(2)))
    rng = np.random.default_rng(2024)
    simulations, covered_auc, covered_sens = 200, 0, 0
    for simulation in range(simulations):
        labels = np.r_[np.zeros(150, int), np.ones(100, int)]
        raw = rng.normal(size=250) + d * labels
        probs = 1 / (1 + np.exp(-raw))  # monotone: AUC unchanged
        threshold = evaluation.Threshold.fixed(1 / (1 + math.exp(-t)))
        result = evaluation.binary_metrics(labels, probs, threshold, split="test",
                                           n_bootstrap=300, seed=simulation)
        auc, sens = result["metrics"]["roc_auc"], result["metrics"]["sensitivity"]
        covered_auc += auc["ci_low"] <= true_auc <= auc["ci_high"]
        covered_sens += sens["ci_low"] <= true_sensitivity <= sens["ci_high"]
    # Binomial sd at 200 draws is 1.5 points; percentile intervals run slightly narrow.
    assert 0.89 <= covered_auc / simulations <= 0.99
    assert 0.89 <= covered_sens / simulations <= 0.99


def test_bootstrap_is_seeded_and_interval_contains_point():
    labels, scores = _binary_arrays()
    fixed = evaluation.Threshold.fixed(0.5)
    a = evaluation.binary_metrics(labels, scores, fixed, split="test", seed=3)
    b = evaluation.binary_metrics(labels, scores, fixed, split="test", seed=3)
    c = evaluation.binary_metrics(labels, scores, fixed, split="test", seed=4)
    assert a == b and a != c
    for interval in a["metrics"].values():
        assert interval["ci_low"] <= interval["value"] <= interval["ci_high"]


def test_choose_threshold_rules():
    labels, scores = _binary_arrays(n=400, seed=9)
    fpr, tpr, thresholds = skm.roc_curve(labels, scores)
    youden = evaluation.choose_threshold(labels, scores, rule="youden")
    assert youden.values[0] == pytest.approx(thresholds[np.argmax(tpr - fpr)])
    assert youden.chosen_on == "val" and youden.num_samples == 400
    sens = evaluation.choose_threshold(labels, scores, rule="sensitivity", target=0.95)
    pred = scores >= sens.values[0]
    assert skm.recall_score(labels, pred) >= 0.95
    # The highest such threshold: one step higher misses the target.
    higher = np.unique(scores)[np.unique(scores) > sens.values[0]].min()
    assert skm.recall_score(labels, scores >= higher) < 0.95
    assert sens.achieved[0]["sensitivity"] == pytest.approx(skm.recall_score(labels, pred))
    spec = evaluation.choose_threshold(labels, scores, rule="specificity", target=0.9)
    assert 1 - np.mean(scores[labels == 0] >= spec.values[0]) >= 0.9
    f1 = evaluation.choose_threshold(labels, scores, rule="f1")
    best = max(skm.f1_score(labels, scores >= value) for value in np.unique(scores))
    assert skm.f1_score(labels, scores >= f1.values[0]) == pytest.approx(best)
    assert evaluation.Threshold.from_dict(json.loads(json.dumps(sens.to_dict()))) == sens


def test_threshold_cannot_be_chosen_on_test_by_accident():
    labels, scores = _binary_arrays()
    with pytest.raises(ValueError, match="Received: split='test'"):
        evaluation.choose_threshold(labels, scores, split="test")
    threshold = evaluation.choose_threshold(labels, scores, split="val")
    with pytest.raises(ValueError, match="chosen on the 'val' split"):
        evaluation.evaluate(labels, scores, task="binary", threshold=threshold, split="val")
    # Same arrays passed off as validation: caught by the fingerprint.
    with pytest.raises(ValueError, match="same\\s+fingerprint"):
        evaluation.evaluate(labels, scores, task="binary", threshold=threshold, split="test")
    with pytest.raises(ValueError, match="threshold=None"):
        evaluation.evaluate(labels, scores, task="binary", split="test")
    other_labels, other_scores = _binary_arrays(seed=2)
    result = evaluation.evaluate(other_labels, other_scores, task="binary", threshold=threshold,
                                 split="test", n_bootstrap=50)
    assert result["threshold"]["chosen_on"] == "val"
    assert result["threshold"]["values"] == [threshold.values[0]]


def test_multilabel_thresholds_per_label_and_errors():
    rng = np.random.default_rng(0)
    labels = (rng.random((150, 3)) < 0.4).astype(int)
    probs = np.clip(labels * 0.4 + rng.random((150, 3)) * 0.6, 0, 1)
    threshold = evaluation.choose_threshold(labels, probs, task="multilabel", rule="youden")
    assert len(threshold.values) == 3 and len(threshold.achieved) == 3
    with pytest.raises(ValueError, match="task"):
        evaluation.evaluate(labels, probs, task="multi", threshold=threshold)
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
        evaluation.evaluate(labels, probs * 3, task="multilabel", threshold=threshold)
    with pytest.raises(ValueError, match="labels.shape"):
        evaluation.evaluate(labels[:, :2], probs, task="multilabel", threshold=threshold)
    with pytest.raises(ValueError, match="target"):
        evaluation.choose_threshold(labels[:, 0], probs[:, 0], rule="sensitivity")
    result = evaluation.evaluate(labels, probs, task="multilabel",
                                 threshold=evaluation.Threshold.fixed(0.5),
                                 split="test", n_bootstrap=20)
    assert result["threshold"]["values"] == [0.5, 0.5, 0.5]
    json.dumps(result, allow_nan=False)


def test_curve_band_brackets_point_curve():
    labels, scores = _binary_arrays(n=200)
    fpr, tpr, _ = skm.roc_curve(labels, scores)
    band = evaluation.curve_band(labels, scores, "roc", n_bootstrap=100)
    np.testing.assert_allclose(band["value"], np.interp(band["grid"], fpr, tpr), atol=1e-9)
    assert np.all(np.array(band["low"]) <= np.array(band["value"]) + 1e-9)
    assert np.all(np.array(band["high"]) >= np.array(band["value"]) - 1e-9)
    ours_fpr, ours_tpr, _ = evaluation.roc_curve(labels, scores)
    assert np.trapezoid(ours_tpr, ours_fpr) == pytest.approx(skm.roc_auc_score(labels, scores))
    pr = evaluation.curve_band(labels, scores, "pr", n_bootstrap=50)
    assert len(pr["value"]) == 101 and pr["value"][-1] == pytest.approx(labels.mean(), abs=0.05)


def test_paired_difference():
    labels, scores = _binary_arrays(n=200, seed=4)
    noisy = np.clip(scores + np.random.default_rng(0).normal(0, 0.2, scores.shape), 0, 1)
    threshold = evaluation.Threshold.fixed(0.5)
    same = evaluation.paired_difference(labels, scores, scores, task="binary", threshold=threshold,
                                        n_bootstrap=100)
    assert same["difference"]["roc_auc"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    diff = evaluation.paired_difference(labels, scores, noisy, task="binary", threshold=threshold,
                                        n_bootstrap=200)["difference"]["roc_auc"]
    expected = skm.roc_auc_score(labels, scores) - skm.roc_auc_score(labels, noisy)
    assert diff["value"] == pytest.approx(expected)
    assert diff["ci_low"] <= expected <= diff["ci_high"]
