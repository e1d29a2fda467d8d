"""The README's tour is run exactly as written, on tiny sizes, so it cannot drift.

The test reads the first ```bash block under `## A tour` in README.md, checks that
it is the one path the README promises (convert with a test split, train, evaluate,
predict, explain, export, tune), and runs it with `bash -e` in a temporary folder
holding a copy of `recipes/`, with the tiny sizes the README names
(`TOUR_IMAGES=160 TOUR_SIZE=32 TOUR_EPOCHS=1 TOUR_BACKBONE=lenet5_modern`) in the
environment.
"""

import csv
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = {"TOUR_IMAGES": "160", "TOUR_SIZE": "32", "TOUR_EPOCHS": "1",
        "TOUR_BACKBONE": "lenet5_modern"}
STEPS = ("kmedimg convert", "kmedimg train", "kmedimg evaluate", "kmedimg predict",
         "kmedimg explain", "kmedimg export", "kmedimg tune")


def tour_block(readme_text):
    """The first ```bash block after the `## A tour` heading."""
    section = readme_text.split("\n## A tour\n", 1)[1]
    match = re.search(r"^```bash\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)
    assert match, "README.md: no ```bash block under '## A tour'"
    return match.group(1)


def command_lines(block):
    """The block's commands, continuation lines joined (comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def tour_environment():
    environment = dict(os.environ, **TINY)
    # The subprocesses import this checkout's kmedimg, and find its `kmedimg` command.
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p])
    environment["PATH"] = os.pathsep.join([str(pathlib.Path(sys.executable).parent),
                                           environment.get("PATH", "")])
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return environment


def test_the_tour_block_is_one_complete_path_with_the_documented_tiny_sizes():
    readme = (REPO / "README.md").read_text()
    block = tour_block(readme)
    lines = command_lines(block)
    started = [next((i for i, line in enumerate(lines) if line.startswith(step)), None)
               for step in STEPS]
    assert None not in started, dict(zip(STEPS, started))
    assert started == sorted(started), "the tour's steps are out of order"
    convert = lines[started[0]]
    assert "--test-fraction" in convert and "--val-fraction" in convert
    # What the README says the test sets is what the test sets.
    assert " ".join(f"{k}={v}" for k, v in TINY.items()) in readme.replace("\n", " ")
    for name in TINY:
        assert f"${name}" in block
    # Every run the tour uses is one the tour makes.
    made = set(re.findall(r"--out (\S+)", block))
    for used in re.findall(r"kmedimg (?:evaluate|predict|explain|export) (\S+)", block):
        assert used in made, f"{used} is used but never made"


def run_block(text, directory):
    shutil.copytree(REPO / "recipes", directory / "recipes")
    # Its own process group, so a timeout also ends the commands bash started.
    process = subprocess.Popen(
        ["bash", "-e", "-o", "pipefail", "-c", text], cwd=directory, env=tour_environment(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    assert process.returncode == 0, (stdout + stderr)[-6000:]
    return stdout


def test_readme_tour_runs_top_to_bottom(tmp_path):
    """The whole tour as written, with the tiny sizes the README names (~90 s here)."""
    block = tour_block((REPO / "README.md").read_text())
    started = time.time()
    printed = run_block(block, tmp_path)
    print(f"tour ran in {time.time() - started:.0f} s")

    manifest = json.loads((tmp_path / "data/phantoms/dataset.json").read_text())
    counts = {name: split["count"] for name, split in manifest["splits"].items()}
    assert set(counts) == {"train", "val", "test"} and sum(counts.values()) == 160
    run = tmp_path / "runs/quickstart"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["split"] == "test"
    assert metrics["operating_point"]["chosen_on"] == "val"
    assert "operating point: threshold" in printed
    assert (run / "report.html").stat().st_size > 10_000
    evaluation = json.loads((run / "evaluation/metrics_test.json").read_text())
    assert evaluation["split"] == "test" and evaluation["threshold"]["chosen_on"] == "val"
    with open(tmp_path / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    assert len(list((tmp_path / "cams").glob("*.png"))) == 2
    assert list((run / "export").rglob("*.tflite"))
    project = tmp_path / "runs/tune/quickstart"
    assert (project / "trials.csv").exists()
    assert (project / "best_recipe.yaml").exists()
    assert (tmp_path / "runs/best/model.keras").exists()
