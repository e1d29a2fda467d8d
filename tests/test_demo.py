"""`kmedimg demo` end to end on the quick budget (the README's first command)."""

import json

from kmedimg import cli


def test_demo_quick_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--backbone", "lenet5", "--out", str(out)]) == 0
    output = capsys.readouterr().out
    assert "Category 3" in output  # small target, low similarity -> the advisor's two_stage
    for fragment in ("source: pretrain", "target: two_stage (transfer)",
                     "target: from_scratch (baseline)", "test AUC [95% CI]"):
        assert fragment in output
    transfer = json.loads((out / "runs" / "target-two_stage" / "metrics.json").read_text())
    assert transfer["recipe"] == "two_stage"
    assert any("source-from_scratch" in note for note in transfer["notes"])
    assert transfer["test"]["metrics"]["roc_auc"]["ci_low"] is not None
    assert (out / "data" / "target-inverted" / "dataset.json").exists()
