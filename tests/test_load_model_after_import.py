"""`import kmedimg, keras; keras.models.load_model("run/model.keras")` in a fresh process.

The README's loading line must work without importing `kmedimg.layers` or
`kmedimg.models` by hand: `import kmedimg` registers every serializable class.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np

from kmedimg.models import build_classifier

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

LOAD = """
import sys
import numpy as np
import kmedimg, keras
model = keras.models.load_model(sys.argv[1])
pixels = np.load(sys.argv[2])
np.save(sys.argv[3], model.predict(pixels, verbose=0))
names = {type(layer).__name__ for layer in model._flatten_layers(include_self=False)}
print(type(model).__name__, sorted(names))
"""


def test_import_kmedimg_alone_lets_keras_load_a_saved_classifier(tmp_path):
    model = build_classifier("lenet5_modern", 1, (32, 32, 1), augmentation=True,
                             input_dtype="uint16")
    pixels = np.random.default_rng(0).integers(0, 65535, (3, 32, 32, 1)).astype("uint16")
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "pixels.npy", pixels)
    result = subprocess.run(
        [sys.executable, "-c", LOAD, str(tmp_path / "model.keras"), str(tmp_path / "pixels.npy"),
         str(tmp_path / "loaded.npy")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ImageClassifier" in result.stdout and "IntensityScaling" in result.stdout
    np.testing.assert_allclose(np.load(tmp_path / "loaded.npy"),
                               model.predict(pixels, verbose=0), rtol=1e-5, atol=1e-6)
