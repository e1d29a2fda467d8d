"""`split_at_head` reads the ImageClassifier's parts instead of walking its layer list."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from kmedimg.models import build_classifier  # noqa: E402
from kmedimg.training import split_at_head  # noqa: E402


@pytest.mark.parametrize("head,hidden_units", [("avg", 0), ("gem", 8)])
def test_feature_and_head_models_compose_to_the_classifier(head, hidden_units):
    model = build_classifier("lenet5_modern", 3, (32, 32, 1), task="multiclass", head=head,
                             hidden_units=hidden_units, dropout=0.3, weights=None)
    feature_model, head_model = split_at_head(model)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1)).astype("float32")
    features = feature_model(images, training=False)
    assert tuple(features.shape[1:]) == tuple(model.backbone.output.shape[1:])
    np.testing.assert_allclose(head_model(features, training=False), model(images, training=False),
                               rtol=1e-5, atol=1e-6)
    # Training the head model trains the classifier's head: they share the variables.
    assert {id(v) for v in head_model.trainable_weights} >= {id(v) for v in model.output_dense.trainable_weights}


def test_a_model_that_is_no_image_classifier_is_refused():
    inputs = keras.Input((8, 8, 1))
    other = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(inputs)), name="mine")
    with pytest.raises(ValueError, match="expected an ImageClassifier.*Received: model='mine'"):
        split_at_head(other)
