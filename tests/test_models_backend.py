"""kmedimg.layers and kmedimg.models import and run without TensorFlow on another Keras backend."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys

    import numpy as np

    import kmedimg
    import kmedimg.layers as kl
    import kmedimg.models
    import keras

    assert keras.backend.backend() == sys.argv[1], keras.backend.backend()
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 1)).astype("float32")
    for layer in [kl.IntensityScaling("uint16"), kl.Window(0.5, 1.0), kl.GreyToRGB(),
                  kl.BackbonePreprocessing("torch"), kl.GeMPooling2D(), kl.PerImageStandardization(),
                  kl.LocalResponseNormalization(), kl.MedicalAugmentation(seed=1)]:
        output = keras.ops.convert_to_numpy(layer(x))
        assert np.isfinite(output).all(), type(layer).__name__
    augmented = keras.ops.convert_to_numpy(kl.MedicalAugmentation(seed=1)(x, training=True))
    assert augmented.shape == x.shape and not np.array_equal(augmented, x)
    model = kmedimg.models.build_classifier("lenet5", 3, (32, 32, 1), task="multiclass", head="gem")
    assert isinstance(model, kmedimg.models.ImageClassifier)
    probabilities = model.predict(x * 255, verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert len(kmedimg.models.backbone_blocks(model)) == 3
    assert "tensorflow" not in sys.modules, "TensorFlow was imported"
    print("no tensorflow")
    # (Keras' own serialisation imports TensorFlow when it is installed, on any backend.)
    model.save(sys.argv[2])
    np.save(sys.argv[2] + ".npy", probabilities)
    """
)

# `import kmedimg` alone registers ImageClassifier and the layers for loading.
LOAD_SCRIPT = textwrap.dedent(
    """
    import sys

    import numpy as np

    import kmedimg
    import keras

    assert "tensorflow" not in sys.modules, "TensorFlow was imported"
    model = keras.saving.load_model(sys.argv[1], safe_mode=True)
    assert type(model).__name__ == "ImageClassifier" and model.task == "multiclass"
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 1)).astype("float32")
    np.testing.assert_array_equal(model.predict(x * 255, verbose=0), np.load(sys.argv[1] + ".npy"))
    print("loaded")
    """
)


def _backend_available(backend):
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run([sys.executable, "-c", "import keras"], env=env, capture_output=True, timeout=300)
    return result.returncode == 0


def test_layers_and_models_run_on_the_numpy_backend_without_tensorflow(tmp_path):
    # Keras' numpy backend imports jax (for its FFT); without jax it cannot start.
    if not _backend_available("numpy"):
        pytest.skip("Keras' numpy backend cannot start here (it needs jax: pip install jax)")
    env = dict(os.environ, KERAS_BACKEND="numpy", PYTHONPATH=str(REPO_ROOT))
    path = str(tmp_path / "model.keras")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, "numpy", path], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no tensorflow" in result.stdout
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, path], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded" in result.stdout
