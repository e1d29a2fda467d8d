"""Training a head on cached backbone features when that gives the same result."""

import keras
import numpy as np
import tensorflow as tf

from kmedimg import models
from kmedimg.training.stages import sample_weight_fn

# Layers whose output changes between two calls on the same image in training mode;
# a backbone containing one cannot have its features cached.
_RANDOM_LAYER_HINTS = ("Dropout", "Noise", "Random", "Augmentation")


def _random_layers(layers):
    found = []
    for layer in layers:
        if any(hint in type(layer).__name__ for hint in _RANDOM_LAYER_HINTS):
            found.append(layer)
        if isinstance(layer, keras.Model):
            found += _random_layers(layer.layers)
    return found


def split_at_head(model):
    """Splits an `ImageClassifier` into `(feature_model, head_model)` sharing its layers.

    The feature model maps the raw input through the `preprocessor` and the
    `backbone` to the backbone's feature map; the head model maps those features
    through the `pooler`, `hidden_dense`, `dropout`, `output_dense` and
    `output_activation` to the prediction. Training the head model trains the
    classifier's head.

    Raises:
        ValueError: when `model` is not an `ImageClassifier`.
    """
    if not isinstance(model, models.ImageClassifier):
        raise ValueError(
            "Cannot find the head of the model: expected an ImageClassifier from "
            f"kmedimg.models.build_classifier. Received: model={getattr(model, 'name', model)!r}"
        )
    features = model.backbone(model.preprocessor(model.inputs[0]))
    feature_model = keras.Model(model.inputs, features, name=f"{model.name}_features")
    head_input = keras.Input(tuple(features.shape[1:]), dtype=features.dtype)
    tensor = model.pooler(head_input)
    if model.hidden_dense is not None:
        tensor = model.hidden_dense(tensor)
    tensor = model.output_activation(model.output_dense(model.dropout(tensor)))
    head_model = keras.Model(head_input, tensor, name=f"{model.name}_head")
    return feature_model, head_model


def feature_cache_plan(model, stage):
    """Whether `stage` can train on cached backbone features, and why (not).

    It applies when the whole backbone is frozen (its BatchNormalization in inference
    mode) and nothing before the head is random in training (no augmentation,
    dropout or noise layers): then every epoch would compute the same features, so
    computing them once and fitting only the head gives the same result, faster.

    Returns:
        `((feature_model, head_model), reason)` or `(None, reason)`.
    """
    if not stage.cache_features:
        return None, "cache_features is off"
    if not stage.backbone_frozen:
        return None, "the backbone trains in this stage (cache_features needs freeze_depth='all')"
    try:
        feature_model, head_model = split_at_head(model)
    except ValueError as error:
        return None, str(error)
    random_layers = _random_layers([model.preprocessor, model.backbone])
    if random_layers:
        names = sorted({layer.name for layer in random_layers})
        return None, (
            f"layers before the head are random in training ({', '.join(names)}: "
            "augmentation, dropout or noise), so the features differ between epochs"
        )
    return (feature_model, head_model), (
        "the whole backbone is frozen (BatchNormalization in inference mode) and nothing "
        "before the head is random"
    )


def compute_features(feature_model, dataset):
    features, labels = [], []
    for images, batch_labels in dataset:
        features.append(np.asarray(feature_model(images, training=False)))
        labels.append(batch_labels.numpy())
    return np.concatenate(features), np.concatenate(labels)


def feature_dataset(features, labels, batch_size, seed, weights, task, skip_batches):
    dataset = tf.data.Dataset.from_tensor_slices((features, labels))
    dataset = dataset.shuffle(len(features), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat().batch(batch_size, drop_remainder=True)
    if skip_batches:
        dataset = dataset.skip(skip_batches)
    if weights is not None:
        dataset = dataset.map(sample_weight_fn(weights, task))
    return dataset.prefetch(tf.data.AUTOTUNE)
