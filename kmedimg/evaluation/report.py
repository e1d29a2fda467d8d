"""`report.html`: one self-contained page a clinician and an engineer can both read.

Sections: summary, configuration, data (class counts per split), training curves,
metrics with 95% intervals, ROC and precision-recall curves with bootstrap bands,
confusion matrix, calibration, test-time augmentation (when used), Grad-CAM of
correct and wrong cases, timing. Figures are PNGs drawn with matplotlib (Agg) and
embedded as base64, so the file can be mailed or archived alone.

Example:

```python
from kmedimg.evaluation.report import build_report
text = build_report(evaluation, predictions["test"], info=info, history=rows)
```
"""

import datetime
import html
import os

import numpy as np
import yaml

from kmedimg.core.run_directory import write_text
from kmedimg.evaluation import report_figures
from kmedimg.evaluation.report_html import CSS, METRIC_LABELS, fmt, interval, metric_order, table

SECTIONS = ("summary", "configuration", "data", "training", "metrics", "curves",
            "confusion", "calibration", "tta", "gradcam", "timing")

_TITLES = {
    "summary": "Summary", "configuration": "Configuration", "data": "Data",
    "training": "Training curves", "metrics": "Metrics", "curves": "ROC and precision-recall",
    "confusion": "Confusion matrix", "calibration": "Calibration",
    "tta": "Test-time augmentation", "gradcam": "Grad-CAM: correct and wrong cases",
    "timing": "Timing",
}



def _summary(evaluation, info):
    metrics = evaluation["metrics"]
    keys = (["roc_auc", "sensitivity", "specificity", "ppv", "npv"] if evaluation["task"] == "binary"
            else ["macro_roc_auc", "accuracy", "balanced_accuracy", "macro_f1"]
            if evaluation["task"] == "multiclass"
            else ["macro_roc_auc", "macro_pr_auc", "macro_f1", "subset_accuracy"])
    cards = []
    for key in keys:
        entry = metrics.get(key)
        if not entry:
            continue
        label = METRIC_LABELS.get(key.replace("macro_", ""), key)
        if key.startswith("macro_"):
            label = "Macro " + label
        ci = "" if entry.get("ci_low") is None else f'95% CI [{fmt(entry["ci_low"])}, {fmt(entry["ci_high"])}]'
        cards.append(f'<div class="card"><div class="l">{label}</div><div class="v">'
                     f'{fmt(entry["value"])}</div><div class="ci">{ci}</div></div>')
    threshold = evaluation["threshold"]
    if threshold["rule"] == "argmax":
        point = "Decision: the most probable class (argmax)."
    else:
        values = ", ".join(f"{value:.4f}" for value in threshold["values"])
        target = f" (target {threshold['target']})" if threshold.get("target") is not None else ""
        chosen = (f"chosen on the <b>{html.escape(threshold['chosen_on'])}</b> split "
                  f"({threshold['num_samples']} cases) by the <b>{threshold['rule']}</b> rule{target}"
                  if threshold["chosen_on"] != "fixed" else "fixed, not chosen on data")
        point = f"Operating point: probability ≥ {values}, {chosen}, then applied unchanged to this split."
    counts = ", ".join(f"{html.escape(name)} {count}" for name, count in evaluation["class_counts"].items())
    return (f'<div class="cards">{"".join(cards)}</div>'
            f'<p>Evaluated on the <b>{html.escape(evaluation["split"])}</b> split: '
            f'{evaluation["num_samples"]} cases ({counts}). {point}</p>'
            f'<p class="note">Intervals: {evaluation["bootstrap"]["confidence"]:.0%} percentile bootstrap, '
            f'{evaluation["bootstrap"]["n_bootstrap"]} replicates stratified by '
            f'{evaluation["bootstrap"]["stratified_by"]}, seed {evaluation["bootstrap"]["seed"]}.</p>')


def _configuration(info):
    config = info.get("config") or {}
    facts = dict(info.get("model_summary") or {})
    recipe = config.get("recipe") or {}
    if recipe:
        options = ", ".join(f"{k}={v}" for k, v in recipe.items() if k != "name")
        facts["recipe"] = f"{recipe.get('name')}" + (f" ({options})" if options else "")
    for section, key, label in (("model", "weights", "initial weights"),
                                ("data", "batch_size", "batch size"),
                                ("training", "optimizer", "optimizer"),
                                ("training", "seed", "seed")):
        value = (config.get(section) or {}).get(key, "–" if config else None)
        if value is not None or config:
            facts[label] = "none (from scratch)" if key == "weights" and value is None else value
    rows = [[html.escape(key), html.escape(str(value))] for key, value in facts.items()]
    text = table(["Model and recipe", ""], rows) if rows else ""
    if config:
        text += ("<details><summary>Full config.yaml (click to expand)</summary><pre>"
                 f"{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre></details>")
    else:
        text += '<p class="note">No config.yaml (a bare model file was evaluated).</p>'
    return text


def _data(info, evaluation):
    manifest = info.get("manifest")
    names = evaluation["class_names"]
    if manifest is None:
        return '<p class="note">Dataset manifest not available.</p>'
    rows = []
    for split, split_info in manifest.splits.items():
        counts = split_info.class_counts or {}
        rows.append([html.escape(split)] + [str(counts.get(name, 0)) for name in names]
                    + [str(split_info.count)])
    image = f"{manifest.height}×{manifest.width}" if manifest.height else "varying"
    facts = (f'<p class="note">{html.escape(str(info.get("data", "")))} · task {manifest.task} · '
             f"stored {image}, {manifest.channels} channel(s), {manifest.dtype}, "
             f"{manifest.encoding} records</p>")
    note = ('<p class="note">Multilabel: a case counts once for each label it carries.</p>'
            if manifest.task == "multilabel" else "")
    return table(["Split"] + [html.escape(n) for n in names] + ["Total"], rows) + facts + note


def _metrics(evaluation):
    rows = []
    for key, entry in sorted(evaluation["metrics"].items(), key=lambda item: metric_order(item[0])):
        label = METRIC_LABELS.get(key.replace("macro_", ""), key)
        if key.startswith("macro_"):
            label = "Macro " + label.lower() if not label.startswith(("ROC", "PR", "PPV", "NPV", "F1")) else "Macro " + label
        rows.append([label, interval(entry)])
    text = table(["Metric", "Value (95% CI)"], rows)
    if evaluation.get("per_class"):
        names = list(evaluation["per_class"])
        keys = ["roc_auc", "pr_auc", "sensitivity", "specificity", "ppv", "npv", "f1"]
        per_rows = []
        for name in names:
            entry = evaluation["per_class"][name]
            per_rows.append([html.escape(name), str(evaluation["class_counts"].get(name, ""))]
                            + [interval(entry.get(key), stacked=True) for key in keys])
        text += "<h3>Per class (one vs rest)</h3>" + table(
            ["Class", "n"] + [METRIC_LABELS[k].split(" (")[0] for k in keys], per_rows)
    threshold = evaluation["threshold"]
    if threshold.get("achieved"):
        achieved = "; ".join(
            f"sensitivity {point['sensitivity']:.3f}, specificity {point['specificity']:.3f}"
            for point in threshold["achieved"])
        text += (f'<p class="note">On the {html.escape(threshold["chosen_on"])} split the operating '
                 f"point reached: {achieved}.</p>")
    return text


def _tta(evaluation):
    tta = evaluation.get("tta") or {}
    if tta.get("mode", "none") == "none":
        return ('<p class="note">Not used. Run <code>kmedimg evaluate … --tta hflip</code> to '
                "average predictions over flipped views and see its effect here.</p>")
    rows = []
    for key, entry in tta["difference"].items():
        if key not in tta.get("metrics_without_tta", {}):
            continue
        rows.append([METRIC_LABELS.get(key.replace("macro_", ""), key) + (" (macro)" if key.startswith("macro_") else ""),
                     interval(tta["metrics_without_tta"][key]), interval(evaluation["metrics"][key]),
                     interval(entry)])
    return (f"<p>Mode <b>{html.escape(tta['mode'])}</b>: the probabilities are averaged over the "
            "flipped views. Difference = with − without TTA on the same cases, with a paired "
            "bootstrap interval (an interval excluding 0 is a real effect).</p>"
            + table(["Metric", "Without TTA", "With TTA", "Difference (95% CI)"], rows))


def _timing(evaluation, info):
    rows = []
    training = info.get("training_metrics") or {}
    if training.get("wall_time_seconds") is not None:
        stages = training.get("stages") or []
        epochs = sum(stage.get("epochs_run", 0) or 0 for stage in stages)
        detail = f" ({epochs} epochs, {len(stages)} stage(s), {training.get('platform', '?')})" if stages else ""
        rows.append(["Training (wall time)" + html.escape(detail),
                     f"{training['wall_time_seconds']:.1f} s"])
    best = training.get("best") or {}
    if best:
        rows.append(["Best checkpoint", html.escape(
            f"{best.get('monitor')} {fmt(best.get('value'))} at stage {best.get('stage')}, "
            f"epoch {best.get('epoch')}")])
    timing = evaluation.get("timing") or {}
    split = evaluation["split"]
    for key, value in timing.items():
        if key.endswith("_images_per_second"):
            rows.append([f"Prediction rate ({html.escape(split)})", f"{value:.0f} images/s"])
        elif key.endswith("_seconds"):
            label = key[:-len("_seconds")].replace("_predict", " prediction").replace("_", " ")
            rows.append([html.escape(label.capitalize()), f"{value:.2f} s"])
    for key, value in (info.get("timing") or {}).items():
        label = "Grad-CAM of the report's cases" if key == "grad_cam_seconds" else key.replace("_", " ")
        rows.append([html.escape(label), f"{value:.2f} s"])
    return table(["Step", "Time"], rows) if rows else '<p class="note">No timing recorded.</p>'


# ------------------------------------------------------------------------- report


def build_report(evaluation, predictions, info=None, history=None, cam_cases=None,
                 n_bootstrap=200, seed=0, title=None):
    """The HTML text of the report.

    Args:
        evaluation: the dict from `evaluate` / `evaluate_model`.
        predictions: `Predictions` of the evaluated split (labels, probs).
        info: run facts from `kmedimg.runs.inference.load_model_for_inference`
            (config, manifest, data, model_summary, timing). Defaults to `None`.
        history: rows of history.csv (`RunDirectory.read_history()`). Defaults to `None`.
        cam_cases: list of dicts `group`, `image`, `heatmap`, `caption`. Defaults to `None`.
        n_bootstrap: replicates for the curve bands. Defaults to `200`.
        seed: bootstrap seed. Defaults to `0`.
        title: page title. Defaults to `None` (the run directory's name).
    """
    info = info or {}
    title = title or os.path.basename(os.path.normpath(info.get("run_dir") or info.get(
        "model_path") or "model"))
    bodies = {
        "summary": _summary(evaluation, info),
        "configuration": _configuration(info),
        "data": _data(info, evaluation),
        "training": report_figures.training_section(history or []),
        "metrics": _metrics(evaluation),
        "curves": report_figures.curves_section(evaluation, predictions, n_bootstrap, seed),
        "confusion": report_figures.confusion_section(evaluation),
        "calibration": report_figures.calibration_section(evaluation, predictions),
        "tta": _tta(evaluation),
        "gradcam": report_figures.gradcam_section(cam_cases, evaluation),
        "timing": _timing(evaluation, info),
    }
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{key}">{_TITLES[key]}</a>' for key in SECTIONS)
    sections = "".join(f'<section id="{key}"><h2>{_TITLES[key]}</h2>{bodies[key]}</section>'
                       for key in SECTIONS)
    task = evaluation["task"]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)} · kmedimg report</title><style>{CSS}</style></head>"
            f"<body><main><h1>{html.escape(title)}</h1>"
            f'<div class="sub">kmedimg evaluation report · {task} · split '
            f'{html.escape(evaluation["split"])} · {generated}</div><nav>{nav}</nav>'
            f"{sections}</main></body></html>")


def write_report(path, evaluation, predictions, **kwargs):
    """Writes `build_report(...)` to `path` (local, gs:// or ram://) and returns the path."""
    write_text(os.fspath(path), build_report(evaluation, predictions, **kwargs))
    return path


def select_cases(predictions, evaluation, per_group=4):
    """Indices of correct and wrong cases for the Grad-CAM grid.

    Binary: true positives, true negatives, false positives and false negatives,
    the most confident first. Multiclass/multilabel: correct and wrong (any label wrong).

    Returns:
        dict group name -> list of indices.
    """
    labels, probs = np.asarray(predictions.labels), np.asarray(predictions.probs)
    task = evaluation["task"]
    threshold = evaluation["threshold"]
    if task == "binary":
        positive = labels.reshape(-1) > 0.5
        score = probs.reshape(-1)
        called = score >= threshold["values"][0]
        names = evaluation["class_names"]
        groups = {
            f"Correct: {names[1]} (true positives)": (positive & called, -score),
            f"Correct: {names[0]} (true negatives)": (~positive & ~called, score),
            f"Wrong: called {names[1]} (false positives)": (~positive & called, -score),
            f"Wrong: missed {names[1]} (false negatives)": (positive & ~called, score),
        }
    else:
        if task == "multiclass":
            correct = probs.argmax(axis=1) == labels.argmax(axis=1)
            confidence = probs.max(axis=1)
        else:
            values = np.asarray(threshold["values"] if len(threshold["values"]) == probs.shape[1]
                                else threshold["values"][:1] * probs.shape[1])
            correct = np.all((probs >= values) == (labels > 0.5), axis=1)
            confidence = np.abs(probs - values).mean(axis=1)
        groups = {"Correct": (correct, -confidence), "Wrong (most confident errors first)": (~correct, -confidence)}
    chosen = {}
    for name, (mask, order) in groups.items():
        indices = np.flatnonzero(mask)
        indices = indices[np.argsort(order[indices], kind="stable")][:per_group]
        if len(indices):
            chosen[name] = [int(i) for i in indices]
    return chosen
