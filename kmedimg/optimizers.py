"""Optimizers with per-variable learning-rate multipliers (discriminative learning rates).

Keras optimizers have one learning rate. Fine-tuning practice (ULMFiT's
"discriminative fine-tuning") gives lower blocks smaller rates than upper ones. Scaling
gradients cannot do this for Adam-type optimizers (their update is invariant to the
gradient's scale), so these subclasses scale the *learning rate* per variable inside
`update_step`, and the decoupled weight decay with it. The multipliers are Python
floats looked up by variable path while the train step is traced, so they become
constants of the graph: the step compiles under `jit_compile=True`/XLA and on TPU, and
they are part of `get_config`, so a saved `model.keras` reloads with them.

Example:

```python
optimizer = make_optimizer("adamw", 1e-4, weight_decay=1e-4,
                           lr_multipliers={"block_1_conv/kernel": 0.25})
```
"""

import keras

from kmedimg.core.vocabulary import OPTIMIZERS


class _LearningRateMultipliers:
    """Mixin: `update_step` with `learning_rate * lr_multipliers[variable.path]`."""

    def __init__(self, *args, lr_multipliers=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_multipliers = {str(k): float(v) for k, v in dict(lr_multipliers or {}).items()}
        for path, multiplier in self.lr_multipliers.items():
            if multiplier < 0:
                raise ValueError(
                    f"`lr_multipliers` must be >= 0. Received: lr_multipliers[{path!r}]={multiplier}"
                )

    def build(self, variables):
        super().build(variables)
        # Index-aligned with `self._trainable_variables`, like the optimizer slots.
        self._multiplier_by_index = [
            self.lr_multipliers.get(variable.path, 1.0) for variable in variables
        ]

    def _multiplier(self, variable):
        return self._multiplier_by_index[self._get_variable_index(variable)]

    def _use_weight_decay(self, variable):
        # Scaled variables get their decay in `update_step`, scaled the same way.
        if self._multiplier(variable) != 1.0:
            return False
        return super()._use_weight_decay(variable)

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self._multiplier(variable)
        if multiplier == 1.0:
            return super().update_step(gradient, variable, learning_rate)
        learning_rate = keras.ops.cast(learning_rate, variable.dtype) * multiplier
        if self.weight_decay is not None and super()._use_weight_decay(variable):
            decay = keras.ops.cast(self.weight_decay, variable.dtype)
            variable.assign(variable - variable * decay * learning_rate)
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["lr_multipliers"] = dict(self.lr_multipliers)
        return config


@keras.saving.register_keras_serializable(package="kmedimg")
class DiscriminativeAdamW(_LearningRateMultipliers, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` with per-variable learning-rate multipliers.

    Args:
        lr_multipliers: dict variable path -> multiplier of the learning rate (and of
            the decoupled weight decay); variables not listed use 1.0.
            Defaults to `None`.
        **kwargs: arguments of `keras.optimizers.AdamW`.
    """


@keras.saving.register_keras_serializable(package="kmedimg")
class DiscriminativeAdam(_LearningRateMultipliers, keras.optimizers.Adam):
    """`keras.optimizers.Adam` with per-variable learning-rate multipliers.

    Args:
        lr_multipliers: dict variable path -> multiplier of the learning rate;
            variables not listed use 1.0. Defaults to `None`.
        **kwargs: arguments of `keras.optimizers.Adam`.
    """


@keras.saving.register_keras_serializable(package="kmedimg")
class DiscriminativeSGD(_LearningRateMultipliers, keras.optimizers.SGD):
    """`keras.optimizers.SGD` with per-variable learning-rate multipliers.

    Args:
        lr_multipliers: dict variable path -> multiplier of the learning rate (and of
            the weight decay); variables not listed use 1.0. Defaults to `None`.
        **kwargs: arguments of `keras.optimizers.SGD`.
    """


_CLASSES = {
    "adamw": (keras.optimizers.AdamW, DiscriminativeAdamW),
    "adam": (keras.optimizers.Adam, DiscriminativeAdam),
    "sgd": (keras.optimizers.SGD, DiscriminativeSGD),
}


def make_optimizer(name, learning_rate, weight_decay=None, lr_multipliers=None, **kwargs):
    """Builds an optimizer by name, with discriminative rates when multipliers are given.

    Args:
        name: `"adamw"`, `"adam"` or `"sgd"` (SGD gets Nesterov momentum 0.9 unless
            `momentum` is passed).
        learning_rate: a float or a `keras.optimizers.schedules.LearningRateSchedule`.
        weight_decay: decoupled weight decay (ignored by `"adam"`, which has none in
            kmedimg; use `"adamw"`). Defaults to `None`.
        lr_multipliers: dict variable path -> learning-rate multiplier; `None` or all
            ones builds the plain Keras optimizer. Defaults to `None`.
        **kwargs: more optimizer arguments.

    Returns:
        A `keras.optimizers.Optimizer`.
    """
    if name not in _CLASSES:
        raise ValueError(f"Unknown optimizer. Expected one of {OPTIMIZERS}. Received: name={name!r}")
    plain, discriminative = _CLASSES[name]
    if name == "sgd":
        kwargs.setdefault("momentum", 0.9)
        kwargs.setdefault("nesterov", True)
    if name != "adam" and weight_decay:
        kwargs["weight_decay"] = weight_decay
    multipliers = {k: v for k, v in dict(lr_multipliers or {}).items() if float(v) != 1.0}
    if multipliers:
        return discriminative(learning_rate=learning_rate, lr_multipliers=multipliers, **kwargs)
    return plain(learning_rate=learning_rate, **kwargs)
