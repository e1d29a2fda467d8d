"""Occlusion sensitivity: how much the class score drops when each region is hidden.

Model-agnostic and gradient-free: use it to check that a Grad-CAM map is not an
artefact of the gradients.
"""

import weakref

import numpy as np
import tensorflow as tf

from kmedimg.evaluation.introspection import Logits, infer_task, output_activation_layer
from kmedimg.evaluation.scores import class_score, default_class, logit_score


_SCORE_FNS = weakref.WeakKeyDictionary()


def _scores_fn(model, task):
    """Compiled images -> (probabilities, pre-activation scores or None), cached per model."""
    if model not in _SCORE_FNS:
        output_layer = output_activation_layer(model)

        def scores(images):
            if output_layer is None:
                return tf.cast(model(images, training=False), tf.float32), tf.zeros([0])
            with Logits(output_layer):
                logits = tf.cast(model(images, training=False), tf.float32)
            return tf.cast(output_layer.activation(logits), tf.float32), logits

        _SCORE_FNS[model] = tf.function(scores, reduce_retracing=True)
    return _SCORE_FNS[model]


def _score(probs, logits, task, class_index):
    if logits.shape[0] == 0:
        return class_score(probs, task, class_index)
    return logit_score(logits, task, class_index)


def occlusion_sensitivity(model, images, class_index=None, patch_size=None, stride=None,
                          task=None, batch_size=64):
    """How much the class score drops when each region is hidden, [B, H, W].

    A square patch filled with the image's mean intensity slides over the image; each
    pixel gets the mean drop of the class score (the pre-activation logit, as `GradCam`)
    over the patches covering it. Positive values mark evidence for the class. Model-agnostic:
    use it to check that Grad-CAM is not an artefact of the gradients.

    Args:
        model: any Keras classifier taking raw pixels.
        images: float array [B, H, W, C] in the model's input range.
        class_index: as `GradCam`. Defaults to `None`.
        patch_size: patch side in pixels. Defaults to `None` (H // 8, at least 4).
        stride: step in pixels. Defaults to `None` (patch_size // 2).
        task: as `GradCam`. Defaults to `None`.
        batch_size: occluded images per forward pass. Defaults to `64`.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"`images` must be [B, H, W, C]. Received: images.shape={images.shape}")
    task = task or infer_task(model)
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
    forward = _scores_fn(model, task)
    maps = np.zeros(images.shape[:3], dtype=np.float32)
    for index, image in enumerate(images):
        probs, logits = forward(image[np.newaxis])
        explained = default_class(probs, task) if class_index is None else tf.constant(
            [int(np.broadcast_to(class_index, images.shape[:1])[index])])
        base = float(_score(probs, logits, task, explained)[0])
        fill = image.mean(axis=(0, 1))
        total = np.zeros((height, width), np.float32)
        count = np.zeros((height, width), np.float32)
        for start in range(0, len(positions), batch_size):
            chunk = positions[start:start + batch_size]
            occluded = np.repeat(image[np.newaxis], len(chunk), axis=0)
            for row, (top, left) in enumerate(chunk):
                occluded[row, top:top + patch_size, left:left + patch_size] = fill
            scores = _score(*forward(occluded), task, tf.repeat(explained, len(chunk))).numpy()
            for row, (top, left) in enumerate(chunk):
                total[top:top + patch_size, left:left + patch_size] += base - scores[row]
                count[top:top + patch_size, left:left + patch_size] += 1
        maps[index] = total / np.maximum(count, 1)
    return maps
