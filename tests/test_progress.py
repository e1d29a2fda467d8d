"""Progress lines with an ETA for long loops, and no TensorFlow log noise from our pipeline."""

import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from kmedimg.data.pipeline import load
from kmedimg.data.synthetic import make_phantom_dataset


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    path = tmp_path_factory.mktemp("phantoms")
    make_phantom_dataset(path, num_images=48, image_size=16, seed=0, val_fraction=0.25,
                         test_fraction=0.25)
    return str(path)


def test_pipeline_under_op_determinism_logs_no_unknown_attribute_error(phantoms, capfd):
    # Training enables op determinism; tf.data's make_deterministic rewrite then turned
    # every parallel map into a sequential MapDataset (a stateful TensorDataset in the
    # shard check triggered it) and TensorFlow logged an `E0000 ... NodeDef mentions
    # attribute use_unbounded_threadpool` line per map.
    tf.config.experimental.enable_op_determinism()
    try:
        for split, training in (("train", True), ("val", False)):
            dataset = load(phantoms, split, image_size=16, batch_size=4, training=training,
                           deterministic=True, seed=0)
            for _ in dataset.take(2):
                pass
    finally:
        tf_config.disable_op_determinism()
    err = capfd.readouterr().err
    assert "use_unbounded_threadpool" not in err and "E0000" not in err, err[-2000:]


def _tiny_model():
    import keras

    return keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(1, activation="sigmoid")])


def test_prediction_draws_a_bar_with_an_eta_when_asked(phantoms, monkeypatch, capsys):
    from kmedimg.evaluation.prediction import predict_dataset

    model = _tiny_model()
    data = load(phantoms, "val", image_size=16, batch_size=4, training=False)
    monkeypatch.setenv("KMEDIMG_PROGRESS", "1")
    predictions = predict_dataset(model, data)
    err = capsys.readouterr().err
    batches = len(predictions.probs) // 4 + bool(len(predictions.probs) % 4)
    # tqdm's "predict:  33%|...| 1/3 [00:00<00:01,  1.53batch/s]": done/total, elapsed<ETA.
    assert "predict:" in err and f"/{batches} [00:00<" in err and "batch/s" in err, err
    monkeypatch.setenv("KMEDIMG_PROGRESS", "0")
    predict_dataset(model, data)
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("KMEDIMG_PROGRESS")
    predict_dataset(model, data)  # not a terminal: silent
    assert capsys.readouterr().err == ""


def test_occlusion_draws_one_bar_per_image(monkeypatch, capsys):
    import numpy as np

    from kmedimg.evaluation.occlusion import occlusion_sensitivity
    from kmedimg.models import build_classifier

    monkeypatch.setenv("KMEDIMG_PROGRESS", "on")
    model = build_classifier("lenet5", 1, (32, 32, 1))
    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 1)).astype("float32")
    maps = occlusion_sensitivity(model, images, patch_size=8, stride=8, batch_size=4)
    assert maps.shape == (2, 32, 32)
    err = capsys.readouterr().err
    assert "occlusion 1/2:" in err and "occlusion 2/2:" in err and "batch/s" in err, err


def test_trial_table_prints_elapsed_time_and_eta(monkeypatch):
    import io

    import keras_tuner

    from kmedimg.tuning.table import TrialTable

    stream = io.StringIO()
    table = TrialTable(stream=stream)
    for trial_id in ("0", "1", "2"):
        hp = keras_tuner.HyperParameters()
        hp.values["dropout"] = 0.1
        trial = keras_tuner.engine.trial.Trial(hp, trial_id=trial_id, status="COMPLETED")
        trial.score = 0.5
        table.begin(trial, total=3)
        table.end(trial)
    started = [line for line in stream.getvalue().splitlines() if line.startswith("  > trial")]
    assert started[0] == "  > trial 0 (1/3; elapsed 00:00) started: dropout=0.1"
    assert started[2] == ("  > trial 2 (3/3; elapsed 00:00; ~00:00 per trial; ETA 00:00) "
                          "started: dropout=0.1")


def test_bad_progress_setting_names_the_variable(monkeypatch):
    from kmedimg.core.progress import progress

    monkeypatch.setenv("KMEDIMG_PROGRESS", "loud")
    with pytest.raises(ValueError, match=r"KMEDIMG_PROGRESS must be one of .*'loud'"):
        progress(range(3))


def test_learning_rate_sweep_draws_a_bar(phantoms, monkeypatch, capsys):
    from kmedimg.training.lr_finder import find_learning_rate

    model = _tiny_model()
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    data = load(phantoms, "train", image_size=16, batch_size=4, training=True, seed=0)
    monkeypatch.setenv("KMEDIMG_PROGRESS", "1")
    find_learning_rate(model, data, steps=12)
    err = capsys.readouterr().err
    assert "lr sweep:" in err and "/12 [" in err and "step/s" in err, err
