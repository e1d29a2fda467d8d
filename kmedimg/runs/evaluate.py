"""Evaluating a run: metrics at a validation-chosen operating point, predictions, report.

`evaluate_run` opens a run directory (local, `gs://` or `ram://`), predicts the
validation split (to choose the operating point) and the evaluated split (to apply
it), and writes next to the model, through `RunDirectory`:

```
run_dir/evaluation/metrics_<split>.json       the `evaluate_model` result
run_dir/evaluation/predictions_<split>.csv    record ids, labels, probabilities, decisions
run_dir/evaluation/predictions_<val>.csv
run_dir/evaluation/threshold.json             the operating point `kmedimg predict` uses
run_dir/report.html                           the self-contained report
```

Example:

```python
written = evaluate_run("runs/quickstart", split="test", tta="hflip")
written["evaluation"]["metrics"]["roc_auc"]
```
"""

import time
import warnings

import numpy as np

from kmedimg.core.run_directory import RunDirectory
from kmedimg.data.pipeline import load
from kmedimg.evaluation.gradcam import GradCam, GradCamWarning
from kmedimg.evaluation.inputs import model_input_spec
from kmedimg.evaluation.model_evaluation import evaluate_model
from kmedimg.evaluation.prediction import check_split
from kmedimg.evaluation.predictions_csv import predictions_csv
from kmedimg.evaluation.report import build_report, select_cases
from kmedimg.runs.inference import load_model_for_inference


def _check_operating_split(val_split, train_split, allow):
    """Refuses choosing the operating point on the training split unless `allow`."""
    if val_split == train_split and not allow:
        raise ValueError(
            f"The operating point would be chosen on the training split {train_split!r}, "
            "where the model's probabilities are optimistic; the threshold (and every "
            "sensitivity/specificity at it) would not hold on new data. Choose it on a held-"
            "out split: re-convert with --val-fraction (and --test-fraction), or pass "
            "--allow-train-operating-point to do it anyway. "
            f"Received: val_split={val_split!r}"
        )


def _check_splits(info, split, val_split, run_dir):
    if info.get("manifest") is None:
        raise ValueError(
            f"{run_dir}: no dataset to evaluate on "
            f"({info.get('data_missing') or 'no data.path in config.yaml'}). "
            "Pass --data DIR. Received: data=None"
        )
    if split == val_split:
        raise ValueError(
            f"The operating point is chosen on {val_split!r}; evaluate another split (e.g. test). "
            f"Received: split={split!r}"
        )
    check_split(info["manifest"], val_split, "choose the operating point on")
    check_split(info["manifest"], split, "evaluate")


def evaluate_run(run_dir, data=None, split="test", val_split=None, tta="none", n_bootstrap=None,
                 threshold_rule=None, threshold_target=None, batch_size=64, cam_per_group=4,
                 report=True, seed=None, allow_train_operating_point=False):
    """Evaluates a run directory's model on a split and writes the results next to it.

    Args:
        run_dir: the run directory (with `model.keras`); local, `gs://` or `ram://`.
        data: dataset directory. Defaults to `None` (the run's `data.path`, resolved
            against the run directory).
        split: split to evaluate. Defaults to `"test"`.
        val_split: split to choose the operating point on. Defaults to `None` (the
            run's `data.val_split`, else "val").
        tta: "none", "hflip" or "flips". Defaults to `"none"`.
        n_bootstrap: bootstrap replicates. Defaults to `None` (the run's
            `evaluation.bootstrap`, else 1000).
        threshold_rule: operating-point rule. Defaults to `None` (the run's).
        threshold_target: its target. Defaults to `None` (the run's).
        batch_size: images per batch. Defaults to `64`.
        cam_per_group: Grad-CAM cases per group in the report. Defaults to `4`.
        report: write report.html. Defaults to `True`.
        seed: bootstrap seed. Defaults to `None` (the run's `training.seed`, else 0).
        allow_train_operating_point: allow `val_split` to be the training split (the
            operating point is then optimistic). Defaults to `False`.

    Returns:
        dict of written paths (`metrics`, `threshold`, `predictions_<split>`, `report`)
        and the metrics dict (`"evaluation"`).
    """
    model, info = load_model_for_inference(run_dir, data)
    if info["run_dir"] is None:
        raise ValueError(
            f"`run_dir` must be a run directory holding {RunDirectory.MODEL} (evaluate writes "
            f"its results there). Received: run_dir={run_dir!r}"
        )
    run = RunDirectory(info["run_dir"])
    config = info.get("config") or {}
    evaluation_config = config.get("evaluation") or {}
    val_split = val_split or (config.get("data") or {}).get("val_split") or "val"
    _check_operating_split(val_split, (config.get("data") or {}).get("train_split") or "train",
                           allow_train_operating_point)
    _check_splits(info, split, val_split, run_dir)
    rule = threshold_rule or evaluation_config.get("threshold_rule") or "youden"
    target = (evaluation_config.get("threshold_target") if threshold_target is None
              else threshold_target)
    n_bootstrap = evaluation_config.get("bootstrap", 1000) if n_bootstrap is None else n_bootstrap
    seed = (config.get("training") or {}).get("seed", 0) if seed is None else seed
    height, width, channels = model_input_spec(model)

    def records(name):
        return load(info["manifest"], name, image_size=(height, width), channels=channels,
                    batch_size=batch_size, with_ids=True)

    result, predictions = evaluate_model(
        model, records(split), info["task"], val_data=records(val_split), split=split,
        val_split=val_split, threshold_rule=rule, threshold_target=target,
        class_names=info["class_names"], n_bootstrap=n_bootstrap,
        confidence=evaluation_config.get("confidence", 0.95), seed=seed, tta=tta,
        return_predictions=True)
    result["data"] = str(info["data"])
    result["model"] = info["model_path"]
    explainer = None
    if report:
        with warnings.catch_warnings():
            # The warning is kept in the result, shown in the report and by the CLI.
            warnings.simplefilter("ignore", GradCamWarning)
            explainer = GradCam(model)
        result["grad_cam"] = explainer.describe()
    run.makedirs(RunDirectory.EVALUATION)
    written = {}
    metrics_name = RunDirectory.EVALUATION_METRICS.format(split=split)
    run.write_json(metrics_name, result)
    written["metrics"] = run.file(metrics_name)
    run.write_json(RunDirectory.THRESHOLD, result["threshold"])
    written["threshold"] = run.threshold_path
    for name in (split, val_split):
        csv_name = RunDirectory.PREDICTIONS.format(split=name)
        run.write_text(csv_name, predictions_csv(
            predictions[name].ids, predictions[name].probs, info["task"], info["class_names"],
            result["threshold"], predictions[name].labels, id_column="id"))
        written[f"predictions_{name}"] = run.file(csv_name)
    if report:
        cases, cam_seconds = _gradcam_cases(explainer, records(split), predictions[split], result,
                                            cam_per_group)
        info["timing"] = dict(info.get("timing") or {})
        if cam_seconds is not None:
            info["timing"]["grad_cam_seconds"] = cam_seconds
        info["model_summary"] = _model_summary(model, info)
        run.write_text(RunDirectory.REPORT, build_report(
            result, predictions[split], info=info, history=run.read_history(), cam_cases=cases,
            seed=seed))
        written["report"] = run.file(RunDirectory.REPORT)
    written["evaluation"] = result
    return written


def _model_summary(model, info):
    return {
        "model file": info["model_path"],
        "backbone": model.backbone_name,
        "input": "×".join(str(v) for v in model.input_shape[1:]) + f" raw {model.input_dtype} pixels",
        "outputs": f"{model.num_classes} ({model.task})",
        "parameters": f"{model.count_params():,}",
    }


def _gather_images(records, wanted):
    """The images at positions `wanted` (sorted) of an ordered dataset, by position."""
    images, position = {}, 0
    for batch in records:
        batch_images = batch[0].numpy()
        for offset in range(len(batch_images)):
            if position + offset in wanted:
                images[position + offset] = batch_images[offset]
        position += len(batch_images)
        if position > wanted[-1]:
            break
    return images


def _gradcam_cases(explainer, records, predictions, result, per_group):
    """Grad-CAM overlays of correct and wrong cases for the report.

    Returns `([], None)` when there are no cases, or when Grad-CAM cannot localise
    (`explainer.warning`; the report shows the warning instead of uniform maps).
    """
    groups = select_cases(predictions, result, per_group)
    wanted = sorted({index for indices in groups.values() for index in indices})
    if not wanted or explainer.warning:
        return [], None
    images = _gather_images(records, wanted)
    start = time.perf_counter()
    stacked = np.stack([images[index] for index in wanted])
    heatmaps, _, explained = explainer(stacked, return_details=True)
    seconds = time.perf_counter() - start
    by_index = {index: row for row, index in enumerate(wanted)}
    names = result["class_names"]
    cases = []
    for group, indices in groups.items():
        for index in indices:
            row = by_index[index]
            label = predictions.labels[index]
            if result["task"] == "binary":
                true = names[int(label[0] > 0.5)]
                detail = f"p({names[1]})={predictions.probs[index][0]:.2f}"
            elif result["task"] == "multiclass":
                true = names[int(np.argmax(label))]
                detail = f"pred {names[int(explained[row])]} {predictions.probs[index].max():.2f}"
            else:
                true = "|".join(n for n, on in zip(names, label) if on > 0.5) or "none"
                detail = f"CAM: {names[int(explained[row])]}"
            case_id = predictions.ids[index] if predictions.ids is not None else str(index)
            cases.append({"group": group, "image": images[index], "heatmap": heatmaps[row],
                          "caption": f"{case_id[:8]} · true {true}\n{detail}"})
    return cases, seconds
