"""What a trained model is, read from its layer tree (to be replaced by the task class).

`build_classifier` returns an anonymous functional model today, so the evaluation code
guesses its task from the output layer, finds the backbone as the nested model named
after a registry key, reads the pixel dtype from the `IntensityScaling` layer, and
makes the output Dense return logits by swapping its activation during one forward
pass. Every such guess lives in this one module: when `kmedimg.models.ImageClassifier`
(with `task`, `backbone`, `output_dense`, `input_dtype`) lands, this file is replaced
by reading those attributes, and nothing else in `kmedimg.evaluation` changes.

It holds two small classes (`Capture`, `Logits`, the layer patches Grad-CAM needs)
instead of one per file: they are part of the same guesswork and go with it.
"""

import keras

from kmedimg.core.vocabulary import PIXEL_DTYPES
from kmedimg.layers import IntensityScaling
from kmedimg.models import backbones


def infer_task(model):
    """"binary" (one output), "multiclass" (softmax) or "multilabel" (K sigmoids)."""
    outputs = int(model.outputs[0].shape[-1])
    if outputs == 1:
        return "binary"
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", "") or type(last).__name__
    return "multiclass" if "softmax" in name.lower() else "multilabel"


def nested_models(model):
    """Every model nested in `model`, depth first."""
    found = []
    for layer in model.layers:
        if hasattr(layer, "layers"):
            found.append(layer)
            found.extend(nested_models(layer))
    return found


def registered_backbone(model):
    """`(nested_model, Backbone record)` of the first nested model named after a
    registered backbone (build_classifier names it after its registry key), else None."""
    registered = set(backbones.list_backbones())
    for candidate in nested_models(model):
        if candidate.name in registered:
            return candidate, backbones.get_backbone(candidate.name)
    return None


def backbone_names(model):
    """Names of the models nested in `model` (a readable stand-in for its backbone)."""
    return [nested.name for nested in nested_models(model)]


def model_input_dtype(model):
    """The stored pixel dtype the model scales from ("uint8", "uint16"), else "auto"."""

    def walk(container):
        for layer in container.layers:
            if isinstance(layer, IntensityScaling):
                return layer.input_dtype
            if hasattr(layer, "layers"):
                found = walk(layer)
                if found:
                    return found
        return None

    found = walk(model)
    return found if found in PIXEL_DTYPES else "auto"


def output_activation_layer(model):
    """The output layer when it applies sigmoid/softmax itself (a Dense), else None."""
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", "")
    if name in ("sigmoid", "softmax") and last.output is model.outputs[0]:
        return last
    return None


class Capture:
    """Records a layer's output while a model runs (works through nested models).

    A Keras functional model nested in another does not expose its inner tensors to
    the outer graph, so `keras.Model(outer.inputs, inner_layer.output)` cannot be
    built. Instead the layer's `call` is wrapped for the duration of one forward
    pass and its output watched by the gradient tape.

    Args:
        layer: the layer whose output is recorded.
        tape: the `tf.GradientTape` that watches it.
    """

    def __init__(self, layer, tape):
        self.layer, self.tape, self.output = layer, tape, None

    def __enter__(self):
        original = self.layer.call

        def call(*args, **kwargs):
            output = original(*args, **kwargs)
            self.tape.watch(output)
            self.output = output
            return output

        object.__setattr__(self.layer, "call", call)
        return self

    def __exit__(self, *exc):
        object.__delattr__(self.layer, "call")
        return False


class Logits:
    """Makes the output layer return its pre-activation scores during one forward pass.

    Grad-CAM differentiates the class score before the sigmoid/softmax: a confident
    model's probability is saturated (exactly 1.0 in float32) and has zero gradient.

    Args:
        layer: the output layer from `output_activation_layer`, or None (no change).
    """

    def __init__(self, layer):
        self.layer = layer

    def __enter__(self):
        if self.layer is not None:
            self.original = self.layer.activation
            object.__setattr__(self.layer, "activation", keras.activations.linear)
        return self

    def __exit__(self, *exc):
        if self.layer is not None:
            object.__setattr__(self.layer, "activation", self.original)
        return False
