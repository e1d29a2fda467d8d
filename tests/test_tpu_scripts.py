"""The TPU launch and staging scripts: --dry-run prints the real commands; bad input stops early."""

import pathlib
import shutil
import subprocess

import pytest

TPU_DIR = pathlib.Path(__file__).resolve().parents[1] / "tpu"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_script(name, *args):
    return subprocess.run(
        ["bash", str(TPU_DIR / name), *map(str, args)], capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def dataset_dir(tmp_path):
    directory = tmp_path / "cxr"
    directory.mkdir()
    (directory / "dataset.json").write_text("{}")
    return directory


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("recipe:\n  name: two_stage\n")
    return path


def commands(result):
    assert result.returncode == 0, result.stderr
    return [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]


def test_stage_dry_run_prints_copy_and_iam_commands(dataset_dir):
    result = run_script(
        "stage_to_gcs.sh", "--source", dataset_dir, "--bucket", "gs://bucket/", "--project", "proj",
        "--service-account", "tpu@proj.iam.gserviceaccount.com", "--create-bucket", "--region",
        "us-central2", "--dry-run",
    )
    lines = commands(result)
    assert lines[0].startswith("gcloud storage buckets create gs://bucket --project=proj --location=us-central2")
    assert lines[1].startswith("gcloud storage rsync --recursive") and lines[1].endswith(f"{dataset_dir} gs://bucket/datasets/cxr")
    # The manifest goes last, after its shards.
    assert lines[2] == f"gcloud storage cp {dataset_dir}/dataset.json gs://bucket/datasets/cxr/dataset.json"
    assert "--member=serviceAccount:tpu@proj.iam.gserviceaccount.com --role=roles/storage.objectAdmin" in lines[3]
    assert result.stdout.strip().endswith("data.path: gs://bucket/datasets/cxr")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bucket", "gs://b", "--project", "p"], "--source is required"),
        (["--source", "{missing}", "--bucket", "gs://b", "--project", "p"], "must hold dataset.json"),
        (["--source", "{dataset}", "--bucket", "/local/b", "--project", "p"], "--bucket must start with gs://"),
        (["--source", "{dataset}", "--bucket", "gs://b", "--project", "p", "--create-bucket"], "needs --region"),
        (["--source", "{dataset}", "--bogus"], "unknown argument: --bogus"),
    ],
)
def test_stage_refuses_bad_input(dataset_dir, tmp_path, args, message):
    args = [a.format(dataset=dataset_dir, missing=tmp_path / "nothing") for a in args]
    result = run_script("stage_to_gcs.sh", *args, "--dry-run")
    assert result.returncode == 2
    assert message in result.stderr


def launch(recipe_file, accelerator, *extra):
    return run_script(
        "launch_pod.sh", "--name", "kmed", "--zone", "us-central2-b", "--accelerator-type", accelerator,
        "--config", recipe_file, "--data", "gs://b/datasets/cxr", "--run-dir", "gs://b/runs/one", *extra,
    )


def test_launch_single_host_uses_local_tpu(recipe_file):
    lines = commands(launch(recipe_file, "v4-8", "--dry-run"))
    assert lines[0] == (
        "gcloud compute tpus tpu-vm create kmed --zone=us-central2-b --accelerator-type=v4-8 "
        "--version=tpu-vm-tf-2.16.1-pjrt"
    )
    assert "--worker=all" in lines[1] and "pip\\ install" in lines[1]
    assert lines[2].startswith(f"gcloud compute tpus tpu-vm scp {recipe_file} kmed:recipe.yaml")
    assert "--worker=0" in lines[3] and "TPU_NAME=local\\ kmedimg\\ train" in lines[3]
    assert "data.path=gs://b/datasets/cxr" in lines[3] and "training.run_dir=gs://b/runs/one" in lines[3]
    assert len(lines) == 4


def test_launch_pod_slice_uses_tpu_name_spot_and_delete(recipe_file):
    lines = commands(launch(recipe_file, "v4-32", "--spot", "--project", "proj", "--delete-after", "--dry-run"))
    assert lines[0].endswith("--version=tpu-vm-tf-2.16.1-pod-pjrt --spot")
    assert "--project=proj" in lines[0]
    assert "TPU_NAME=kmed\\ kmedimg" in lines[3]
    assert lines[4] == "gcloud compute tpus tpu-vm delete kmed --zone=us-central2-b --project=proj --quiet"


def test_launch_refuses_local_paths_and_missing_arguments(recipe_file):
    result = run_script(
        "launch_pod.sh", "--name", "kmed", "--zone", "z", "--accelerator-type", "v4-8", "--config",
        recipe_file, "--data", "/home/me/data", "--run-dir", "gs://b/r", "--dry-run",
    )
    assert result.returncode == 2 and "TPU workers read only gs:// paths" in result.stderr
    result = run_script("launch_pod.sh", "--zone", "z", "--dry-run")
    assert result.returncode == 2 and "--name is required" in result.stderr
    result = launch(recipe_file, "v4", "--dry-run")
    assert result.returncode == 2 and "must end in a core/chip count" in result.stderr
