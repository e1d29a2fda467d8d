"""What `kmedimg train` and `kmedimg evaluate` tell a user about a run, on a tiny real run.

The end-of-training table names its operating point (chosen on val) and does not
score val at a threshold nobody chose; `evaluate` reports the same test interval as
training did; the operating point is never chosen on the training split by accident;
several classes get their macro ROC AUC.
"""

import csv
import json

import numpy as np
import pytest
import yaml

from kmedimg.cli import main
from kmedimg.data.synthetic import make_phantom_dataset
from kmedimg.evaluation import evaluate
from kmedimg.runs.tables import format_table, summary_rows


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("summary")
    data = root / "data"
    make_phantom_dataset(str(data), num_images=128, image_size=32, seed=0,
                         val_fraction=0.25, test_fraction=0.25, progress=False)
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"path": str(data), "image_size": 32, "batch_size": 16},
        "model": {"backbone": "lenet5_modern", "dropout": 0.0},
        "recipe": {"name": "from_scratch", "epochs": 2, "learning_rate": 3e-3},
        "training": {"seed": 0, "tensorboard": False, "verbose": 0},
        "evaluation": {"bootstrap": 200},
    }))
    return root, recipe


def test_train_table_states_the_val_chosen_operating_point(trained_run, capsys):
    root, recipe = trained_run
    run = root / "run"
    assert main(["train", str(recipe), "--out", str(run), "--quiet"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    point = metrics["operating_point"]
    assert point["chosen_on"] == "val" and point["rule"] == "youden"
    assert f"operating point: threshold {point['values'][0]:.3f} (youden, chosen on val" in printed
    rows = {row["metric"]: row for row in summary_rows(metrics)}
    assert rows["roc_auc"]["val"] and rows["roc_auc"]["test"]
    # Val is never shown at the fixed 0.5 nobody chose; test is at the val-chosen point.
    assert rows["sensitivity"]["val"] is None and rows["sensitivity"]["test"]
    sensitivity_line = next(line for line in printed.splitlines()
                            if line.startswith("sensitivity "))
    assert sensitivity_line.split()[1] == "-"

    # `evaluate` on the same run: the same threshold and the same test interval.
    assert main(["evaluate", str(run), "--no-report"]) == 0
    printed = capsys.readouterr().out
    evaluation = json.loads((run / "evaluation/metrics_test.json").read_text())
    assert evaluation["threshold"]["values"] == point["values"]
    trained, evaluated = metrics["test"]["metrics"]["roc_auc"], evaluation["metrics"]["roc_auc"]
    assert (evaluated["value"], evaluated["ci_low"], evaluated["ci_high"]) == pytest.approx(
        (trained["value"], trained["ci_low"], trained["ci_high"]))
    assert f"({trained['ci_low']:.3f}-{trained['ci_high']:.3f})" in printed.replace(
        "95% CI ", "")


def test_evaluate_refuses_an_operating_point_chosen_on_train(trained_run, capsys):
    root, recipe = trained_run
    run = root / "run"
    if not (run / "model.keras").exists():
        assert main(["train", str(recipe), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--val-split", "train", "--no-report"]) == 2
    error = capsys.readouterr().err
    assert "chosen on the training split 'train'" in error
    assert "--allow-train-operating-point" in error and "Received: val_split='train'" in error
    assert main(["evaluate", str(run), "--val-split", "train", "--no-report",
                 "--allow-train-operating-point"]) == 0
    evaluation = json.loads((run / "evaluation/metrics_test.json").read_text())
    assert evaluation["threshold"]["chosen_on"] == "train"


def test_several_classes_list_macro_roc_auc():
    rng = np.random.default_rng(0)
    labels = np.eye(3)[rng.integers(0, 3, 90)]
    probs = rng.dirichlet(np.ones(3), 90) * 0.5 + labels * 0.5
    result = evaluate(labels, probs, task="multiclass", split="test", n_bootstrap=50)
    val = evaluate(labels, probs, task="multiclass", split="val", n_bootstrap=50)
    metrics = {"val": val, "test": result,
               "operating_point": {"rule": "argmax", "values": [], "chosen_on": "fixed"}}
    rows = {row["metric"]: row for row in summary_rows(metrics)}
    assert rows["macro_roc_auc"]["test"].startswith(
        f"{result['metrics']['macro_roc_auc']['value']:.3f} [")
    assert rows["accuracy"]["val"]  # argmax is not chosen on val: both columns are real
    assert "macro_roc_auc" in format_table(list(rows.values()), ["metric", "val", "test"])


def test_predict_decides_at_the_training_operating_point_unless_asked(trained_run, capsys):
    root, recipe = trained_run
    run = root / "run"
    if not (run / "model.keras").exists():
        assert main(["train", str(recipe), "--out", str(run), "--quiet"]) == 0
    trained = json.loads((run / "metrics.json").read_text())["operating_point"]
    # An evaluation at another operating point must not change what predict decides.
    assert main(["evaluate", str(run), "--no-report", "--threshold-rule", "fixed",
                 "--target", "0.999"]) == 0
    capsys.readouterr()
    data = str(root / "data")
    cases = [((), trained["values"][0], "metrics.json"),
             (("--operating-point", "evaluation"), 0.999, "threshold.json")]
    for flag, expected, source in cases:
        out = root / f"predictions{len(flag)}.csv"
        assert main(["predict", str(run), data, "--out", str(out), *flag]) == 0
        note = capsys.readouterr().err
        assert f"decisions: threshold {expected:.3f}" in note and source in note
        rows = list(csv.DictReader(out.open()))
        assert {row["predicted"] for row in rows} <= {"normal", "opacity"}
        decided = [row["predicted"] == "opacity" for row in rows]
        assert decided == [float(row["p_opacity"]) >= expected for row in rows]
