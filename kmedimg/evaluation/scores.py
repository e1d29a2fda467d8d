"""The class score an explanation differentiates: the logit of the class.

Grad-CAM and occlusion explain the output layer's pre-activation score of a class
(`ImageClassifier.logits_model` / `gradcam_model`), as in the Grad-CAM paper: a
confident model's probability is saturated and has no gradient.
"""

import tensorflow as tf

EPSILON = 1e-7


def logit_score(logits, task, class_index):
    """Pre-activation score of `class_index` [B] (binary: class 0 is the negated logit)."""
    logits = tf.cast(logits, tf.float32)
    if task == "binary":
        return tf.where(tf.equal(class_index, 1), logits[:, 0], -logits[:, 0])
    return tf.gather(logits, class_index, axis=1, batch_dims=1)


def default_class(probs, task):
    """The class explained by default [B]: binary the positive class, else the argmax."""
    if task == "binary":
        return tf.ones(tf.shape(probs)[:1], tf.int32)
    return tf.cast(tf.argmax(probs, axis=1), tf.int32)
