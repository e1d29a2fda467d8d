"""The figure sections of `report.html`: training curves, ROC/PR with bands, confusion
matrix, calibration, Grad-CAM cases. Each returns an HTML fragment with embedded PNGs.
"""

import html

import numpy as np

from kmedimg.evaluation.curves import curve_band, roc_curve
from kmedimg.evaluation.overlay import HEATMAP_COLORMAP, heatmap_scale, show_heatmap
from kmedimg.evaluation.report_html import METRIC_LABELS, embed, interval, new_figure, table


def _binary_columns(labels, probs, task):
    """One-vs-rest (labels, scores, name index) pairs for curve plots."""
    labels = np.asarray(labels)
    probs = np.asarray(probs)
    if task == "binary":
        return [(labels.reshape(-1).astype(int), probs.reshape(-1), 1)]
    return [(labels[:, k].astype(int), probs[:, k], k) for k in range(probs.shape[1])]


def _history_columns(rows):
    """History rows (`RunDirectory.read_history`) -> {column: list}; numbers as floats
    (blank -> NaN), text columns as strings."""
    columns = {}
    for row in rows:
        for key, value in row.items():
            columns.setdefault(key, []).append(value)
    parsed = {}
    for key, values in columns.items():
        if all(value is None or isinstance(value, (int, float)) for value in values):
            parsed[key] = [float("nan") if value is None else float(value) for value in values]
        else:
            parsed[key] = ["" if value is None else str(value) for value in values]
    return parsed


def training_section(history):
    """Training and validation curves from the rows of history.csv."""
    history = _history_columns(history or [])
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
    figure = new_figure(min(3.3 * len(names), 10.0), 2.9)
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
    return embed(figure, "Training and validation curves per epoch (history.csv)." + note, "training curves")


def curves_section(evaluation, predictions, n_bootstrap, seed):
    task = evaluation["task"]
    columns = _binary_columns(predictions.labels, predictions.probs, task)
    names = evaluation["class_names"]
    figure = new_figure(9.6, 4.2)
    roc_axis, pr_axis = figure.subplots(1, 2)
    colours = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#be185d", "#4b5563"]
    skipped = []
    for index, (labels, scores, name_index) in enumerate(columns[:8]):
        if labels.min() == labels.max():
            skipped.append(names[name_index])
            continue
        colour = colours[index % len(colours)]
        label = names[name_index] if task != "binary" else f"{names[1]} vs {names[0]}"
        roc = curve_band(labels, scores, "roc", n_bootstrap=n_bootstrap, seed=seed)
        pr = curve_band(labels, scores, "pr", n_bootstrap=n_bootstrap, seed=seed)
        auc = (evaluation["metrics"]["roc_auc"] if task == "binary" else
               evaluation["per_class"][names[name_index]]["roc_auc"])["value"]
        ap = (evaluation["metrics"]["pr_auc"] if task == "binary" else
              evaluation["per_class"][names[name_index]]["pr_auc"])["value"]
        roc_axis.fill_between(roc["grid"], roc["low"], roc["high"], color=colour, alpha=0.15, lw=0)
        fpr, tpr, _ = roc_curve(labels, scores)
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
    return embed(figure, caption, "ROC and PR curves")


def confusion_section(evaluation):
    matrix = evaluation["confusion_matrix"]
    panels = [("", matrix)] if "matrix" in matrix else list(matrix.items())[:8]
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    size = 3.6 if len(panels) == 1 else 2.6
    figure = new_figure(size * columns + 0.6, size * rows)
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
    return embed(figure, "Counts and row percentages (share of each true class) at the operating point.",
                "confusion matrix")


def calibration_section(evaluation, predictions):
    calibration = evaluation["calibration"]
    bins = calibration["bins"]
    figure = new_figure(8.4, 3.6)
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
    caption = (f"Expected calibration error {interval(ece)}; {calibration['n_bins']} equal-width bins, "
               "bars: Wilson 95% intervals of each bin's observed frequency. Points below the "
               "diagonal: the predicted probabilities are too high there.")
    return embed(figure, caption, "calibration")


def gradcam_section(cases, evaluation):
    """Grad-CAM of correct and wrong cases, with a colour bar, the layer explained and,
    when Grad-CAM cannot localise (`evaluation["grad_cam"]["warning"]`), why not."""
    facts = evaluation.get("grad_cam") or {}
    names = evaluation["class_names"]
    explained = (f"the positive class ({names[1]}): where the evidence for it lies, also in "
                 "cases called negative" if evaluation["task"] == "binary"
                 else "the predicted class" if evaluation["task"] == "multiclass"
                 else "the most probable label")
    if facts.get("warning"):
        return f'<p class="note"><strong>No Grad-CAM:</strong> {html.escape(facts["warning"])}</p>'
    if not cases:
        return '<p class="note">No Grad-CAM cases (pass the model and data to the report).</p>'
    groups = {}
    for case in cases:
        groups.setdefault(case["group"], []).append(case)
    text = ""
    for group, members in groups.items():
        text += f"<h3>{html.escape(group)}</h3>" + embed(_case_grid(members), None, group)
    layer = (f"layer {facts['layer']} ({'×'.join(map(str, facts['feature_map']))} map)"
             if facts.get("layer") else "the backbone's last convolutional layer (from the registry)")
    text += (f'<p class="note">Heatmap: Grad-CAM from {html.escape(layer)} of {html.escape(explained)}, '
             "over the input shown in its stored intensities (0.5–99.5th percentile window); "
             f"colour scale {HEATMAP_COLORMAP} (perceptually uniform), each map relative to its peak, "
             "more opaque where higher. Wrong cases are the most confident errors.</p>")
    if facts.get("note"):
        text += f'<p class="note">{html.escape(facts["note"])}</p>'
    return text


def _case_grid(members):
    """A figure of up to 4 cases a row, each heatmap over its image, and one colour bar."""
    columns = min(4, len(members))
    rows = -(-len(members) // columns)
    figure = new_figure(2.4 * columns + 0.7, 2.55 * rows)
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    heat = None
    for axis, case in zip(axes, members):
        heat = show_heatmap(axis, case["image"], case["heatmap"])
        axis.set_title(case["caption"], fontsize=7.5)
        axis.set_xticks([])
        axis.set_yticks([])
    for axis in axes[len(members):]:
        axis.axis("off")
    figure.colorbar(heatmap_scale(heat), ax=list(axes), fraction=0.03, pad=0.02,
                    label="Grad-CAM (of each map's peak)")
    return figure
