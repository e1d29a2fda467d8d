"""`kmedimg demo` end to end on the quick budget (the README's first command)."""

import json

from kmedimg import cli


def test_demo_quick_tells_the_whole_story(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--out", str(out)]) == 0
    output = capsys.readouterr().out
    # Few site-B images, similar to site A -> the advisor's feature extractor.
    assert "Category 4" in output
    for fragment in ("site A: pretrain", "site B: feature_extractor (transfer)",
                     "site B: from_scratch (baseline)", "test AUC [95% CI]"):
        assert fragment in output
    runs = out / "runs"
    transfer = json.loads((runs / "target-feature_extractor" / "metrics.json").read_text())
    scratch = json.loads((runs / "target-from_scratch" / "metrics.json").read_text())
    assert transfer["recipe"] == "feature_extractor" and scratch["recipe"] == "from_scratch"
    assert any("source-from_scratch" in note for note in transfer["notes"])
    for metrics in (transfer, scratch):
        assert metrics["test"]["metrics"]["roc_auc"]["ci_low"] is not None
    report = runs / "target-feature_extractor" / "report.html"
    assert report.stat().st_size > 10_000 and "<img" in report.read_text()
    assert (out / "data" / "site-b" / "dataset.json").exists()
    verdict = [line for line in output.splitlines() if line.startswith("Transfer ")]
    transfer_auc = transfer["test"]["metrics"]["roc_auc"]["value"]
    assert len(verdict) == 1 and f"{transfer_auc:.3f}" in verdict[0]
    closing = output.strip().splitlines()[-1]
    assert closing.startswith("Next: open ") and str(report) in closing
    assert "--recipe two_stage" in closing and "--seed 1" in closing
