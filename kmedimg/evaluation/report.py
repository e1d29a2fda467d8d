"""`report.html`: one self-contained page a clinician and an engineer can both read.

Sections: summary, configuration, data (class counts per split), training curves,
metrics with 95% intervals, ROC and precision-recall curves with bootstrap bands,
confusion matrix, calibration, test-time augmentation (when used), Grad-CAM of
correct and wrong cases, timing. Figures are PNGs drawn with matplotlib (Agg) and
embedded as base64, so the file can be mailed or archived alone.

Example:

```python
from kmedimg.evaluation.report import write_report
write_report("runs/quickstart/report.html", evaluation, predictions["test"], info=info)
```
"""

import base64
import csv
import datetime
import html
import io
import os

import numpy as np

from kmedimg.evaluation import metrics as metric_lib

SECTIONS = ("summary", "configuration", "data", "training", "metrics", "curves",
            "confusion", "calibration", "tta", "gradcam", "timing")

_TITLES = {
    "summary": "Summary", "configuration": "Configuration", "data": "Data",
    "training": "Training curves", "metrics": "Metrics", "curves": "ROC and precision-recall",
    "confusion": "Confusion matrix", "calibration": "Calibration",
    "tta": "Test-time augmentation", "gradcam": "Grad-CAM: correct and wrong cases",
    "timing": "Timing",
}

_METRIC_LABELS = {
    "roc_auc": "ROC AUC", "pr_auc": "PR AUC (average precision)", "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy", "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity", "ppv": "PPV (precision)", "npv": "NPV", "f1": "F1",
    "brier": "Brier score", "ece": "Expected calibration error",
    "subset_accuracy": "Subset accuracy (all labels right)",
}

_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#1d2330;
background:#f4f5f7;line-height:1.45}
main{max-width:1060px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:26px;margin:4px 0 2px}h2{font-size:19px;margin:34px 0 10px;padding-bottom:4px;
border-bottom:2px solid #e3e6eb}h3{font-size:15px;margin:18px 0 6px}
.sub{color:#5b6475;font-size:14px;margin-bottom:14px}
table{border-collapse:collapse;font-size:14px;margin:6px 0 10px}
th,td{padding:5px 12px;border-bottom:1px solid #e6e8ec;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f1f3f6;font-weight:600}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:10px 0 4px}
.card{border:1px solid #dde1e7;border-radius:8px;padding:10px 16px;min-width:150px}
.card .v{font-size:24px;font-weight:600}.card .l{font-size:12px;color:#5b6475}
.card .ci{font-size:12px;color:#5b6475}
img{max-width:100%;height:auto}figure{margin:8px 0 16px}
figcaption{font-size:13px;color:#5b6475;margin-top:2px}
pre{background:#f6f8fa;border:1px solid #e3e6eb;border-radius:6px;padding:10px;font-size:12px;
overflow:auto;max-height:420px}
.note{font-size:13px;color:#5b6475}.warn{color:#9a3412}
nav{font-size:13px;margin:6px 0 0}nav a{margin-right:10px;color:#2255aa;text-decoration:none}
"""


# ------------------------------------------------------------------------ helpers


def _figure(width=6.4, height=4.0):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _png(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(figure, caption=None, alt=""):
    text = f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(figure)}">'
    if caption:
        text += f"<figcaption>{caption}</figcaption>"
    return text + "</figure>"


def _fmt(value, digits=3):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _interval(entry, digits=3, stacked=False):
    if not isinstance(entry, dict):
        return _fmt(entry, digits)
    text = _fmt(entry.get("value"), digits)
    if entry.get("ci_low") is not None:
        text += ("<br>" if stacked else " ") + (
            f'<span class="note">[{_fmt(entry["ci_low"], digits)}, {_fmt(entry["ci_high"], digits)}]</span>')
    return text


_ORDER = ("accuracy", "subset_accuracy", "balanced_accuracy", "roc_auc", "pr_auc", "sensitivity",
          "specificity", "ppv", "npv", "f1", "brier", "ece")


def _metric_order(key):
    base = key.replace("macro_", "")
    return (_ORDER.index(base) if base in _ORDER else len(_ORDER), key)


def _table(header, rows):
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def read_history(path):
    """history.csv -> {column: list}; numeric columns as floats (blank -> NaN), others as text."""
    if not path or not os.path.isfile(path):
        return {}
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = {}
    for row in rows:
        for key, value in row.items():
            columns.setdefault(key, []).append(value)
    parsed = {}
    for key, values in columns.items():
        try:
            parsed[key] = [float(value) if value not in ("", None) else float("nan") for value in values]
        except ValueError:
            parsed[key] = [value or "" for value in values]
    return parsed


def _binary_columns(labels, probs, task):
    """One-vs-rest (labels, scores, name index) pairs for curve plots."""
    labels = np.asarray(labels)
    probs = np.asarray(probs)
    if task == "binary":
        return [(labels.reshape(-1).astype(int), probs.reshape(-1), 1)]
    return [(labels[:, k].astype(int), probs[:, k], k) for k in range(probs.shape[1])]


# ----------------------------------------------------------------------- sections


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
        label = _METRIC_LABELS.get(key.replace("macro_", ""), key)
        if key.startswith("macro_"):
            label = "Macro " + label
        ci = "" if entry.get("ci_low") is None else f'95% CI [{_fmt(entry["ci_low"])}, {_fmt(entry["ci_high"])}]'
        cards.append(f'<div class="card"><div class="l">{label}</div><div class="v">'
                     f'{_fmt(entry["value"])}</div><div class="ci">{ci}</div></div>')
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
    import yaml

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
    text = _table(["Model and recipe", ""], rows) if rows else ""
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
    return _table(["Split"] + [html.escape(n) for n in names] + ["Total"], rows) + facts + note


def _training(history):
    if not history:
        return '<p class="note">No history.csv in the run directory.</p>'
    length = len(next(iter(history.values())))
    x_key = "global_epoch" if "global_epoch" in history else "epoch" if "epoch" in history else None
    epochs = np.asarray(history[x_key] if x_key else range(length), dtype=float)
    if x_key != "global_epoch":
        epochs = np.arange(1, length + 1, dtype=float)
    skip = {"epoch", "global_epoch", "stage", "lr", "learning_rate"}
    names = [key for key, values in history.items()
             if not key.startswith("val_") and key not in skip
             and all(isinstance(v, float) for v in values) and not all(np.isnan(values))]
    names = sorted(names, key=lambda name: (name != "loss", name))[:4]
    if not names:
        return '<p class="note">history.csv holds no metric columns.</p>'
    figure = _figure(min(3.3 * len(names), 10.0), 2.9)
    axes = np.atleast_1d(figure.subplots(1, len(names)))
    for axis, name in zip(axes, names):
        axis.plot(epochs, history[name], "o-", ms=3, label="train", color="#2563eb")
        if f"val_{name}" in history:
            axis.plot(epochs, history[f"val_{name}"], "o-", ms=3, label="validation", color="#dc2626")
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("epoch", fontsize=9)
        axis.grid(alpha=0.3)
        axis.tick_params(labelsize=8)
    axes[0].legend(fontsize=8)
    note = ""
    stage = history.get("stage")
    if stage is not None and len(set(stage)) > 1:
        changes = [(epochs[i - 1] + epochs[i]) / 2 for i in range(1, length) if stage[i] != stage[i - 1]]
        for axis in axes:
            for change in changes:
                axis.axvline(change, color="grey", ls="--", lw=0.8)
        order = list(dict.fromkeys(stage))
        note = f" Dashed lines separate the recipe's stages ({' → '.join(map(str, order))})."
    return _img(figure, "Training and validation curves per epoch (history.csv)." + note, "training curves")


def _metrics(evaluation):
    rows = []
    for key, entry in sorted(evaluation["metrics"].items(), key=lambda item: _metric_order(item[0])):
        label = _METRIC_LABELS.get(key.replace("macro_", ""), key)
        if key.startswith("macro_"):
            label = "Macro " + label.lower() if not label.startswith(("ROC", "PR", "PPV", "NPV", "F1")) else "Macro " + label
        rows.append([label, _interval(entry)])
    text = _table(["Metric", "Value (95% CI)"], rows)
    if evaluation.get("per_class"):
        names = list(evaluation["per_class"])
        keys = ["roc_auc", "pr_auc", "sensitivity", "specificity", "ppv", "npv", "f1"]
        per_rows = []
        for name in names:
            entry = evaluation["per_class"][name]
            per_rows.append([html.escape(name), str(evaluation["class_counts"].get(name, ""))]
                            + [_interval(entry.get(key), stacked=True) for key in keys])
        text += "<h3>Per class (one vs rest)</h3>" + _table(
            ["Class", "n"] + [_METRIC_LABELS[k].split(" (")[0] for k in keys], per_rows)
    threshold = evaluation["threshold"]
    if threshold.get("achieved"):
        achieved = "; ".join(
            f"sensitivity {point['sensitivity']:.3f}, specificity {point['specificity']:.3f}"
            for point in threshold["achieved"])
        text += (f'<p class="note">On the {html.escape(threshold["chosen_on"])} split the operating '
                 f"point reached: {achieved}.</p>")
    return text


def _curves(evaluation, predictions, n_bootstrap, seed):
    task = evaluation["task"]
    columns = _binary_columns(predictions.labels, predictions.probs, task)
    names = evaluation["class_names"]
    figure = _figure(9.6, 4.2)
    roc_axis, pr_axis = figure.subplots(1, 2)
    colours = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#be185d", "#4b5563"]
    skipped = []
    for index, (labels, scores, name_index) in enumerate(columns[:8]):
        if labels.min() == labels.max():
            skipped.append(names[name_index])
            continue
        colour = colours[index % len(colours)]
        label = names[name_index] if task != "binary" else f"{names[1]} vs {names[0]}"
        roc = metric_lib.curve_band(labels, scores, "roc", n_bootstrap=n_bootstrap, seed=seed)
        pr = metric_lib.curve_band(labels, scores, "pr", n_bootstrap=n_bootstrap, seed=seed)
        auc = (evaluation["metrics"]["roc_auc"] if task == "binary" else
               evaluation["per_class"][names[name_index]]["roc_auc"])["value"]
        ap = (evaluation["metrics"]["pr_auc"] if task == "binary" else
              evaluation["per_class"][names[name_index]]["pr_auc"])["value"]
        roc_axis.fill_between(roc["grid"], roc["low"], roc["high"], color=colour, alpha=0.15, lw=0)
        fpr, tpr, _ = metric_lib.roc_curve(labels, scores)
        roc_axis.plot(fpr, tpr, color=colour, lw=1.6, label=f"{label} (AUC {auc:.3f})")
        pr_axis.fill_between(pr["grid"], pr["low"], pr["high"], color=colour, alpha=0.15, lw=0)
        pr_axis.plot(pr["grid"], pr["value"], color=colour, lw=1.6, label=f"{label} (AP {ap:.3f})")
        pr_axis.axhline(labels.mean(), color=colour, ls=":", lw=0.8)
        threshold = evaluation["threshold"]
        if threshold["rule"] != "argmax":
            value = threshold["values"][0 if task == "binary" else name_index]
            decided = scores >= value
            sens = decided[labels == 1].mean()
            spec = 1 - decided[labels == 0].mean()
            roc_axis.plot([1 - spec], [sens], "o", color=colour, ms=7, mec="black")
    roc_axis.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
    roc_axis.set(xlabel="1 − specificity (false positive rate)", ylabel="sensitivity", xlim=(0, 1),
                 ylim=(0, 1.01), title="ROC")
    pr_axis.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(0, 1), ylim=(0, 1.01),
                title="Precision–recall")
    for axis in (roc_axis, pr_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower right" if axis is roc_axis else "lower left")
        axis.set_aspect("equal")
    caption = f"Shaded: pointwise 95% bootstrap bands ({n_bootstrap} stratified replicates). "
    if evaluation["threshold"]["rule"] != "argmax":
        caption += ("Dots on the ROC curve: the operating point chosen on "
                    f"{html.escape(evaluation['threshold']['chosen_on'])}, applied to this split. ")
    else:
        caption += "Curves are one class vs the rest. "
    caption += "Dotted lines: prevalence (the precision of a random classifier)."
    if len(columns) > 8:
        caption += f" First 8 of {len(columns)} classes shown."
    if skipped:
        caption += f" No curve for {', '.join(skipped)}: only one label value in this split."
    return _img(figure, caption, "ROC and PR curves")


def _confusion(evaluation):
    matrix = evaluation["confusion_matrix"]
    panels = [("", matrix)] if "matrix" in matrix else list(matrix.items())[:8]
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    size = 3.6 if len(panels) == 1 else 2.6
    figure = _figure(size * columns + 0.6, size * rows)
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for axis, (title, panel) in zip(axes, panels):
        counts = np.asarray(panel["matrix"])
        labels = panel["labels"]
        totals = counts.sum(axis=1, keepdims=True)
        shares = counts / np.maximum(totals, 1)
        axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for i in range(counts.shape[0]):
            for j in range(counts.shape[1]):
                axis.text(j, i, f"{counts[i, j]}\n{shares[i, j]:.0%}", ha="center", va="center",
                          fontsize=8 if counts.shape[0] > 4 else 10,
                          color="white" if shares[i, j] > 0.6 else "black")
        axis.set_xticks(range(len(labels)), labels, fontsize=8, rotation=30 if len(labels) > 3 else 0)
        axis.set_yticks(range(len(labels)), labels, fontsize=8)
        axis.set_xlabel("predicted", fontsize=9)
        axis.set_ylabel("true", fontsize=9)
        if title:
            axis.set_title(title, fontsize=10)
    for axis in axes[len(panels):]:
        axis.axis("off")
    return _img(figure, "Counts and row percentages (share of each true class) at the operating point.",
                "confusion matrix")


def _calibration(evaluation, predictions):
    calibration = evaluation["calibration"]
    bins = calibration["bins"]
    figure = _figure(8.4, 3.6)
    curve_axis, hist_axis = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    filled = [b for b in bins if b["count"]]
    curve_axis.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="perfect calibration")
    counts = np.array([b["count"] for b in filled], float)
    observed = np.array([b["fraction_positive"] for b in filled])
    predicted = np.array([b["mean_predicted"] for b in filled])
    # Wilson 95% interval of each bin's observed frequency: small bins are uncertain.
    z = 1.96
    centre = (observed + z * z / (2 * counts)) / (1 + z * z / counts)
    half = z * np.sqrt(observed * (1 - observed) / counts + z * z / (4 * counts ** 2)) / (1 + z * z / counts)
    curve_axis.errorbar(predicted, observed, yerr=[np.maximum(observed - (centre - half), 0),
                                                   np.maximum(centre + half - observed, 0)],
                        color="#2563eb", ecolor="#93c5fd", elinewidth=2, capsize=0, lw=1.2)
    curve_axis.scatter(predicted, observed, s=12 + 120 * counts / counts.max(), color="#2563eb",
                       zorder=3, label="model (size: cases)")
    curve_axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability",
                   ylabel="observed frequency", title=f"Reliability ({calibration['kind']})")
    curve_axis.grid(alpha=0.3)
    curve_axis.legend(fontsize=8)
    edges = [b["lower"] for b in bins] + [bins[-1]["upper"]]
    hist_axis.bar(edges[:-1], [b["count"] for b in bins], width=np.diff(edges), align="edge",
                  color="#93c5fd", edgecolor="#2563eb")
    hist_axis.set(xlabel="predicted probability", ylabel="cases", title="Cases per bin")
    ece = evaluation["metrics"]["ece"]
    caption = (f"Expected calibration error {_interval(ece)}; {calibration['n_bins']} equal-width bins, "
               "bars: Wilson 95% intervals of each bin's observed frequency. Points below the "
               "diagonal: the predicted probabilities are too high there.")
    return _img(figure, caption, "calibration")


def _tta(evaluation):
    tta = evaluation.get("tta") or {}
    if tta.get("mode", "none") == "none":
        return ('<p class="note">Not used. Run <code>kmedimg evaluate … --tta hflip</code> to '
                "average predictions over flipped views and see its effect here.</p>")
    rows = []
    for key, entry in tta["difference"].items():
        if key not in tta.get("metrics_without_tta", {}):
            continue
        rows.append([_METRIC_LABELS.get(key.replace("macro_", ""), key) + (" (macro)" if key.startswith("macro_") else ""),
                     _interval(tta["metrics_without_tta"][key]), _interval(evaluation["metrics"][key]),
                     _interval(entry)])
    return (f"<p>Mode <b>{html.escape(tta['mode'])}</b>: the probabilities are averaged over the "
            "flipped views. Difference = with − without TTA on the same cases, with a paired "
            "bootstrap interval (an interval excluding 0 is a real effect).</p>"
            + _table(["Metric", "Without TTA", "With TTA", "Difference (95% CI)"], rows))


def _gradcam(cases, evaluation):
    names = evaluation["class_names"]
    explained = (f"the positive class ({names[1]}): where the evidence for it lies, also in "
                 "cases called negative" if evaluation["task"] == "binary"
                 else "the predicted class" if evaluation["task"] == "multiclass"
                 else "the most probable label")
    if not cases:
        return '<p class="note">No Grad-CAM cases (pass the model and data to the report).</p>'
    groups = {}
    for case in cases:
        groups.setdefault(case["group"], []).append(case)
    text = ""
    for group, members in groups.items():
        columns = min(4, len(members))
        rows = -(-len(members) // columns)
        figure = _figure(2.4 * columns, 2.55 * rows)
        axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
        for axis, case in zip(axes, members):
            image = np.asarray(case["image"], np.float32)
            image = image[..., 0] if image.shape[-1] == 1 else image
            from kmedimg.evaluation.explain import display_range

            low, high = display_range(image)
            if image.ndim == 2:
                axis.imshow(image, cmap="gray", vmin=low, vmax=high)
            else:
                axis.imshow(np.clip((image - low) / (high - low), 0, 1))
            heat = np.clip(case["heatmap"], 0, 1)
            axis.imshow(heat, cmap="jet", alpha=0.6 * heat, vmin=0, vmax=1)
            axis.set_title(case["caption"], fontsize=7.5)
            axis.set_xticks([])
            axis.set_yticks([])
        for axis in axes[len(members):]:
            axis.axis("off")
        text += f"<h3>{html.escape(group)}</h3>" + _img(figure, None, group)
    text += ('<p class="note">Heatmap: Grad-CAM from the backbone\'s last convolutional layer '
             f"(from the registry) of {html.escape(explained)}, over the input shown in its stored "
             "intensities (0.5–99.5th percentile window). Wrong cases are the most confident "
             "errors.</p>")
    return text


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
            f"{best.get('monitor')} {_fmt(best.get('value'))} at stage {best.get('stage')}, "
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
    return _table(["Step", "Time"], rows) if rows else '<p class="note">No timing recorded.</p>'


# ------------------------------------------------------------------------- report


def build_report(evaluation, predictions, info=None, history=None, cam_cases=None,
                 n_bootstrap=200, seed=0, title=None):
    """The HTML text of the report.

    Args:
        evaluation: the dict from `metrics.evaluate` / `evaluate_model`.
        predictions: `Predictions` of the evaluated split (labels, probs).
        info: run facts from `runs.load_model_for_inference` (config, manifest, data,
            model_summary, timing). Defaults to `None`.
        history: columns of history.csv (`read_history`). Defaults to `None`.
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
        "training": _training(history or {}),
        "metrics": _metrics(evaluation),
        "curves": _curves(evaluation, predictions, n_bootstrap, seed),
        "confusion": _confusion(evaluation),
        "calibration": _calibration(evaluation, predictions),
        "tta": _tta(evaluation),
        "gradcam": _gradcam(cam_cases, evaluation),
        "timing": _timing(evaluation, info),
    }
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{key}">{_TITLES[key]}</a>' for key in SECTIONS)
    sections = "".join(f'<section id="{key}"><h2>{_TITLES[key]}</h2>{bodies[key]}</section>'
                       for key in SECTIONS)
    task = evaluation["task"]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)} · kmedimg report</title><style>{_CSS}</style></head>"
            f"<body><main><h1>{html.escape(title)}</h1>"
            f'<div class="sub">kmedimg evaluation report · {task} · split '
            f'{html.escape(evaluation["split"])} · {generated}</div><nav>{nav}</nav>'
            f"{sections}</main></body></html>")


def write_report(path, evaluation, predictions, **kwargs):
    """Writes `build_report(...)` to `path` (UTF-8) and returns the path."""
    text = build_report(evaluation, predictions, **kwargs)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
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
