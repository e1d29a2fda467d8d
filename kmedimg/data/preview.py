"""`preview_images` and `write_preview`: training images per class, as the model sees them.

The first thing to look at when a model fails: the decoded images of a split after
`kmedimg.data.pipeline.load` (resize, channels), the model's intensity scaling to
[0, 1] and the training augmentation (`kmedimg.layers.MedicalAugmentation`), in a grid
with one row per class.
"""

import dataclasses
import io

import numpy as np
import tensorflow as tf

from kmedimg.data.manifest_files import as_manifest
from kmedimg.data.pipeline import load
from kmedimg.layers import IntensityScaling, MedicalAugmentation

#: Size of one grid cell in inches and the figure's resolution: a cell is 160 pixels.
CELL_INCHES = 1.6
DPI = 100


@dataclasses.dataclass
class Preview:
    """Images per class of a split, before and after augmentation.

    Attributes:
        class_names: the row titles.
        raw: per class, float32 images `[n, H, W, C]` scaled to [0, 1], unaugmented.
        augmented: the same images after the augmentation (equal to `raw` when
            `augmentation` is `None`).
        augmentation: a sentence describing the augmentation applied.
    """

    class_names: list
    raw: list
    augmented: list
    augmentation: str


def preview_images(path_or_manifest, count=8, split=None, image_size=None, channels=None,
                   augmentation=True, pixel_dtype=None, seed=0):
    """The first `count` images of each class of `split`, scaled and augmented.

    Args:
        path_or_manifest: a dataset directory, its `dataset.json` or a `Manifest`.
        count: images per class, >= 1. Defaults to `8`.
        split: the split to read; `None` takes `"train"` (else the first split).
            Defaults to `None`.
        image_size: as for `load`; `None` keeps the stored size. Defaults to `None`.
        channels: as for `load`. Defaults to `None`.
        augmentation: a recipe's `model.augmentation`: `None`/`False` (none), `True` or
            `"default"` (the default `MedicalAugmentation`) or a dict of its arguments.
            Defaults to `True`.
        pixel_dtype: the stored pixel type for `IntensityScaling`; `None` takes the
            manifest's. Defaults to `None`.
        seed: the augmentation's seed. Defaults to `0`.

    Returns:
        A `Preview`.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"`count` (--show) must be an int >= 1. Received: count={count!r}")
    manifest = as_manifest(path_or_manifest)
    split = split or ("train" if "train" in manifest.splits else sorted(manifest.splits)[0])
    layer, description = _augmentation(augmentation, seed)
    names = list(manifest.class_names)
    picked = {index: [] for index in range(len(names))}
    dataset = load(manifest, split, image_size=image_size, batch_size=32, training=False,
                   channels=channels)
    for images, labels in dataset:
        for image, label in zip(images.numpy(), labels.numpy()):
            for index in _classes_of(label, manifest.task):
                if len(picked[index]) < count:
                    picked[index].append(image)
        if all(len(images) >= count for images in picked.values()):
            break
    scaling = IntensityScaling(pixel_dtype=pixel_dtype or manifest.dtype)
    raw, augmented = [], []
    for index in range(len(names)):
        scaled = np.asarray(scaling(np.stack(picked[index]))) if picked[index] else None
        raw.append(scaled)
        augmented.append(scaled if scaled is None or layer is None
                         else np.asarray(layer(scaled, training=True)))
    return Preview(names, raw, augmented, description)


def write_preview(preview, path):
    """Draws `preview.augmented` as a grid (a row per class, titled) into a PNG.

    The PNG is `columns * 160` by `classes * 160` pixels, `columns` being the most
    images of any class.

    Args:
        preview: a `Preview`.
        path: the PNG's path (local or `gs://`).

    Returns:
        `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    rows = len(preview.class_names)
    columns = max([len(images) for images in preview.augmented if images is not None] or [1])
    figure, axes = pyplot.subplots(rows, columns, squeeze=False, dpi=DPI,
                                   figsize=(columns * CELL_INCHES, rows * CELL_INCHES))
    for row, (name, images) in enumerate(zip(preview.class_names, preview.augmented)):
        for column in range(columns):
            axis = axes[row][column]
            axis.set_xticks([])
            axis.set_yticks([])
            if images is None or column >= len(images):
                axis.set_title(f"{name} (none)" if column == 0 else "", fontsize=8)
                axis.axis("off")
                continue
            image = np.clip(images[column], 0.0, 1.0)
            if image.shape[-1] == 1:
                axis.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
            else:
                axis.imshow(image)
            axis.set_title(name, fontsize=8)
    figure.tight_layout(pad=0.3, h_pad=0.9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    pyplot.close(figure)
    with tf.io.gfile.GFile(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path


def _augmentation(setting, seed):
    """`(MedicalAugmentation or None, description)` for a `model.augmentation` value."""
    if setting is None or setting is False:
        return None, "no augmentation (model.augmentation is not set)"
    if setting is True or setting == "default":
        return MedicalAugmentation(seed=seed), "the default MedicalAugmentation"
    if isinstance(setting, dict):
        return (MedicalAugmentation(**{"seed": seed, **setting}),
                f"MedicalAugmentation({', '.join(f'{k}={v!r}' for k, v in setting.items())})")
    raise ValueError(
        "`augmentation` must be None, True/'default' or a dict of MedicalAugmentation "
        f"arguments. Received: augmentation={setting!r}"
    )


def _classes_of(label, task):
    """The class indices an encoded label belongs to."""
    label = np.asarray(label).reshape(-1)
    if task == "binary":
        return [int(label[0] > 0.5)]
    if task == "multiclass":
        return [int(np.argmax(label))]
    return [int(index) for index in np.flatnonzero(label > 0.5)]
