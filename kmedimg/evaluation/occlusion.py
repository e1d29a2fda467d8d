"""Occlusion sensitivity: how much the class score drops when each region is hidden.

Gradient-free, and it needs no feature map: use it to check that a Grad-CAM map is
not an artefact of the gradients, and where Grad-CAM cannot localise (a backbone
whose feature maps are smaller than 4x4 at a small input size).
"""

import weakref

import numpy as np
import tensorflow as tf

from kmedimg.core.progress import progress
from kmedimg.evaluation.model_file import as_classifier
from kmedimg.evaluation.scores import default_class, logit_score


_SCORE_FNS = weakref.WeakKeyDictionary()


def _scores_fn(model):
    """Compiled images -> (probabilities, logits) of an `ImageClassifier`, cached per model."""
    if model not in _SCORE_FNS:
        # Not `model` itself in the closure: the cache is keyed weakly by it.
        logits_model, activation = model.logits_model(), model.output_activation

        def scores(images):
            logits = tf.cast(logits_model(images, training=False), tf.float32)
            return tf.cast(activation(logits), tf.float32), logits

        _SCORE_FNS[model] = tf.function(scores, reduce_retracing=True)
    return _SCORE_FNS[model]


def occlusion_sensitivity(model, images, class_index=None, patch_size=None, stride=None,
                          task=None, batch_size=64):
    """How much the class score drops when each region is hidden, [B, H, W].

    A square patch filled with the image's mean intensity slides over the image; each
    pixel gets the mean drop of the class score (the pre-activation logit, as `GradCam`)
    over the patches covering it. Positive values mark evidence for the class. Gradient-free:
    use it to check that Grad-CAM is not an artefact of the gradients.

    Args:
        model: an `ImageClassifier`; a classifier saved by kmedimg 0.1.0 is
            converted (`kmedimg.models.as_image_classifier`).
        images: float array [B, H, W, C] in the model's input range.
        class_index: as `GradCam`. Defaults to `None`.
        patch_size: patch side in pixels. Defaults to `None` (H // 8, at least 4).
        stride: step in pixels. Defaults to `None` (patch_size // 2).
        task: the task of an old saved model, checked against the model's.
            Defaults to `None` (the model's `task`).
        batch_size: occluded images per forward pass. Defaults to `64`.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"`images` must be [B, H, W, C]. Received: images.shape={images.shape}")
    model = as_classifier(model, task=task)
    task = model.task
    _, height, width, _ = images.shape
    patch_size = int(patch_size or max(4, height // 8))
    stride = int(stride or max(1, patch_size // 2))
    if not 0 < patch_size <= min(height, width) or stride < 1:
        raise ValueError(
            f"`patch_size` must be in [1, {min(height, width)}] and `stride` >= 1. "
            f"Received: patch_size={patch_size}, stride={stride}"
        )
    tops = list(range(0, height - patch_size + 1, stride))
    lefts = list(range(0, width - patch_size + 1, stride))
    if tops[-1] != height - patch_size:
        tops.append(height - patch_size)
    if lefts[-1] != width - patch_size:
        lefts.append(width - patch_size)
    positions = [(top, left) for top in tops for left in lefts]
    forward = _scores_fn(model)
    maps = np.zeros(images.shape[:3], dtype=np.float32)
    for index, image in enumerate(images):
        probs, logits = forward(image[np.newaxis])
        explained = default_class(probs, task) if class_index is None else tf.constant(
            [int(np.broadcast_to(class_index, images.shape[:1])[index])])
        base = float(logit_score(logits, task, explained)[0])
        fill = image.mean(axis=(0, 1))
        total = np.zeros((height, width), np.float32)
        count = np.zeros((height, width), np.float32)
        for start in progress(range(0, len(positions), batch_size),
                              desc=f"occlusion {index + 1}/{len(images)}", unit="batch"):
            chunk = positions[start:start + batch_size]
            occluded = np.repeat(image[np.newaxis], len(chunk), axis=0)
            for row, (top, left) in enumerate(chunk):
                occluded[row, top:top + patch_size, left:left + patch_size] = fill
            scores = logit_score(forward(occluded)[1], task, tf.repeat(explained, len(chunk))).numpy()
            for row, (top, left) in enumerate(chunk):
                total[top:top + patch_size, left:left + patch_size] += base - scores[row]
                count[top:top + patch_size, left:left + patch_size] += 1
        maps[index] = total / np.maximum(count, 1)
    return maps
