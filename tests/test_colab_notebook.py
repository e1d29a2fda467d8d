"""tpu/colab_quickstart.ipynb runs top to bottom on a CPU (headless, nbclient)."""

import os
import pathlib

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_ROOT / "tpu" / "colab_quickstart.ipynb"


def test_notebook_runs_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("KMEDIMG_NOTEBOOK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("KMEDIMG_BUCKET", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE", "TF_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    outputs = {}
    for cell in notebook.cells:
        if cell.cell_type == "code":
            text = "".join(output.get("text", "") for output in cell.get("outputs", []))
            outputs[cell.source.splitlines()[0]] = text
    text = "\n".join(outputs.values())
    assert "_DefaultDistributionStrategy: 1 replica(s), float32" in text
    # No TPU visible: said loudly, with what to do, not a silent switch to CPU sizes.
    assert "WARNING: TensorFlow sees no TPU" in text and "Change runtime type -> TPU" in text
    assert "pip install tensorflow-tpu" in text
    assert "global batch 16" in text
    run_dir = tmp_path / "work" / "runs" / "quickstart"
    for name in ("config.yaml", "history.csv", "model.keras", "metrics.json"):
        assert (run_dir / name).exists(), name
    assert (tmp_path / "work" / "tuning" / "quickstart").is_dir()
    assert (run_dir / "evaluation").is_dir()
    # The last cell shows the report itself, inline, not a list of keys.
    last = [cell for cell in notebook.cells if cell.cell_type == "code"][-1]
    shown = [output["data"]["text/html"] for output in last.outputs
             if output.get("output_type") == "display_data"
             and "text/html" in output["data"]]
    assert len(shown) == 1 and shown[0].startswith("<iframe srcdoc=")
    assert "test ROC AUC" in "".join(output.get("text", "") for output in last.outputs)
    assert len(shown[0]) > (run_dir / "report.html").stat().st_size  # all of it, escaped


def test_notebook_documents_the_real_tune_flags():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    text = "\n".join(cell.source for cell in notebook.cells)
    assert "--role" not in text
    for role in ("--chief", "--worker"):
        assert f"kmedimg tune recipe.yaml {role}" in text


def test_notebook_has_no_stored_outputs():
    """Committed clean: outputs would go stale and hide errors."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None
