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
    """Splits a classifier into `(feature_model, head_model)` sharing its layers.

    The feature model maps the raw input to the output of the last backbone block;
    the head model maps those features to the prediction. Training the head model
    trains the classifier's head.
    """
    backbone = models.get_backbone_model(model)
    if backbone is model or backbone not in model.layers:
        raise ValueError(
            f"Cannot find the head of model {model.name!r}: expected a classifier from "
            "kmedimg.models.build_classifier with a nested backbone."
        )
    # The classifier is a chain; replaying it up to the backbone gives the features
    # in the outer graph (a nested model's own `.output` is not connected to it).
    position = model.layers.index(backbone)
    tensor = model.inputs[0]
    for layer in model.layers[1:position + 1]:
        tensor = layer(tensor)
    feature_model = keras.Model(model.inputs, tensor, name=f"{model.name}_features")
    head_input = keras.Input(tuple(tensor.shape[1:]), dtype=tensor.dtype)
    tensor = head_input
    for layer in model.layers[position + 1:]:
        tensor = layer(tensor)
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
    random_layers = _random_layers(feature_model.layers)
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
