"""From a trial's searched values to recipe-file values: epochs, rates, augmentation."""

import inspect
import math

from kmedimg.layers import MedicalAugmentation


def is_learning_rate_option(name):
    return name == "learning_rate" or name.endswith("_learning_rate")


def is_epochs_option(name):
    return (name == "epochs" or name.endswith("_epochs")) and name != "warmup_epochs"


def scale_epochs(options, total):
    """Scales a recipe's epoch options (`epochs`, `*_epochs`) to sum to `total`.

    Each stage keeps at least one epoch; rounding gives the leftover epochs to the
    stages with the largest remainders, so the result is deterministic.
    """
    names = [name for name in options if is_epochs_option(name)]
    current = [options[name] for name in names]
    if not names or sum(current) == total:
        return dict(options)
    if total < len(names):
        raise ValueError(
            f"The recipe has {len(names)} stages, so a trial needs at least {len(names)} "
            f"epochs. Received: max_epochs={total}"
        )
    shares = [total * value / sum(current) for value in current]
    scaled = [max(1, math.floor(share)) for share in shares]
    order = sorted(range(len(names)), key=lambda i: shares[i] - math.floor(shares[i]), reverse=True)
    index = 0
    while sum(scaled) < total:
        scaled[order[index % len(order)]] += 1
        index += 1
    while sum(scaled) > total:
        largest = max(range(len(scaled)), key=lambda i: scaled[i])
        scaled[largest] -= 1
    out = dict(options, **dict(zip(names, scaled)))
    if "warmup_epochs" in out and out["warmup_epochs"] >= min(scaled):
        out["warmup_epochs"] = max(0, min(scaled) - 1)
    return out


AUGMENTATION_MAGNITUDES = ("rotation", "zoom", "translation", "contrast", "brightness",
                           "noise_stddev")


def augmentation_for_strength(strength, base=None):
    """`model.augmentation` for a strength in 0..1: 0 is off, 1 the base settings.

    Every magnitude of `kmedimg.layers.MedicalAugmentation` (rotation, zoom,
    translation, contrast, brightness, noise) is the base value times `strength`; the
    base is the recipe file's augmentation dict, or the layer's defaults.
    """
    strength = float(strength)
    if strength <= 0:
        return None
    defaults = inspect.signature(MedicalAugmentation.__init__).parameters
    base = dict(base) if isinstance(base, dict) else {}
    for name in AUGMENTATION_MAGNITUDES:
        base[name] = round(float(base.get(name, defaults[name].default)) * strength, 6)
    return base


def input_shape_for(config, manifest):
    """The model input `(height, width, channels)`: the config's, else the stored one."""
    size = config.data.image_size
    if size is None:
        size = (manifest.height, manifest.width)
    elif isinstance(size, int):
        size = (size, size)
    channels = config.data.channels or manifest.channels
    return (int(size[0]), int(size[-1]), int(channels))


def tidy(value):
    """A searched float rounded to 10 digits (`None` stays `None`)."""
    # Stepped ranges give 0.30000000000000004; the recipe file should say 0.3.
    return None if value is None else round(float(value), 10)


def clip(value, value_range):
    """`value` clipped into a `FloatRange`/`IntRange`, as a float."""
    return float(min(max(value, value_range.min), value_range.max))
