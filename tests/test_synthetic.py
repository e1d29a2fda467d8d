"""The chest-X-ray phantom generator: determinism, difficulty, and the TFRecord round trip."""

import collections

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from kmedimg.data.pipeline import load, read_manifest
from kmedimg.data.sources import Item, open_source
from kmedimg.data.synthetic import PhantomSource, make_phantom_dataset


def loaded_pairs(out_dir):
    """Counter of (pixel bytes, label names) over every split read back through `load`."""
    manifest = read_manifest(out_dir)
    pairs = collections.Counter()
    for split in manifest.splits:
        for images, labels in load(out_dir, split, batch_size=64, training=False):
            for image, label in zip(images.numpy(), labels.numpy()):
                pixels = np.rint(image).astype(manifest.dtype)
                if manifest.task == "binary":
                    names = (manifest.class_names[int(label[0])],)
                elif manifest.task == "multiclass":
                    names = (manifest.class_names[int(np.argmax(label))],)
                else:
                    names = tuple(manifest.class_names[k] for k in np.flatnonzero(label))
                pairs[(pixels.tobytes(), names)] += 1
    return pairs


def source_pairs(items):
    return collections.Counter(
        (np.ascontiguousarray(item.pixels).tobytes(), tuple(item.labels)) for item in items
    )


def test_phantoms_are_deterministic_per_index():
    source = PhantomSource(num_images=6, image_size=32, seed=5)
    first, second = list(source), list(source)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.pixels, b.pixels)
        assert a.labels == b.labels
    pixels, label, _ = source.render(4)
    np.testing.assert_array_equal(pixels, first[4].pixels)
    assert (label,) == first[4].labels
    other = list(PhantomSource(num_images=6, image_size=32, seed=6))
    assert not np.array_equal(other[0].pixels, first[0].pixels)
    assert first[0].pixels.shape == (32, 32, 1) and first[0].pixels.dtype == np.uint8


def test_phantom_classes_dtypes_and_errors():
    items = list(PhantomSource(num_images=200, image_size=24, seed=0))
    share = np.mean([item.labels == ("opacity",) for item in items])
    assert 0.4 < share < 0.6
    for item in items:
        assert ("opacity_center_yx" in item.metadata) == (item.labels == ("opacity",))
    deep = next(iter(PhantomSource(num_images=1, image_size=24, dtype="uint16")))
    assert deep.pixels.dtype == np.uint16 and deep.pixels.max() > 255
    assert all(i.labels == ("normal",) for i in PhantomSource(20, 16, opacity_fraction=0.0))
    with pytest.raises(ValueError, match="num_images"):
        PhantomSource(num_images=0)
    with pytest.raises(ValueError, match="dtype"):
        PhantomSource(num_images=1, dtype="float32")
    with pytest.raises(ValueError, match="synthetic:N"):
        open_source("synthetic:many")
    assert open_source("synthetic:7", image_size=16).num_images == 7


def test_phantom_task_is_local_not_global():
    """A global statistic must not give the class away; a look at the right spot must."""
    items = list(PhantomSource(num_images=400, image_size=64, seed=3))
    labels = np.array([item.labels == ("opacity",) for item in items])
    images = np.stack([item.pixels[..., 0] for item in items]).astype(np.float64)
    assert roc_auc_score(labels, images.mean(axis=(1, 2))) < 0.65
    assert roc_auc_score(labels, images.max(axis=(1, 2))) < 0.65
    # Oracle: mean inside the opacity minus a ring around it (normal images are probed
    # at the places where opacities were drawn in other images).
    rng = np.random.default_rng(0)
    spots = [(i.metadata["opacity_center_yx"], i.metadata["opacity_sigma_px"])
             for i in items if "opacity_center_yx" in i.metadata]
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    scores = []
    for item, image in zip(items, images):
        (cy, cx), sigma = (
            (item.metadata["opacity_center_yx"], item.metadata["opacity_sigma_px"])
            if "opacity_center_yx" in item.metadata else spots[rng.integers(len(spots))]
        )
        distance2 = (yy - cy) ** 2 + (xx - cx) ** 2
        inner = image[distance2 < max(sigma, 1.0) ** 2].mean()
        ring = image[(distance2 >= (2 * sigma) ** 2) & (distance2 < (3 * sigma) ** 2)].mean()
        scores.append(inner - ring)
    oracle = roc_auc_score(labels, scores)
    assert 0.85 < oracle < 0.99  # visible, but not every opacity stands out


@pytest.mark.parametrize("dtype,encoding", [("uint8", "raw"), ("uint16", "png")])
def test_make_phantom_dataset_round_trip(tmp_path, dtype, encoding):
    out = str(tmp_path / "phantoms")
    manifest = make_phantom_dataset(
        out, num_images=40, image_size=24, seed=2, dtype=dtype, encoding=encoding
    )
    assert manifest.class_names == ["normal", "opacity"]
    assert manifest.dtype == dtype and manifest.channels == 1
    assert (manifest.height, manifest.width) == (24, 24)
    assert set(manifest.splits) == {"train", "val", "test"}
    assert sum(split.count for split in manifest.splits.values()) == 40
    assert manifest.counts["rejected"] == 0
    source = PhantomSource(num_images=40, image_size=24, seed=2, dtype=dtype)
    assert loaded_pairs(out) == source_pairs(item for item in source if isinstance(item, Item))


@pytest.mark.slow
def test_small_cnn_learns_phantoms_but_not_at_once(tmp_path):
    import keras

    out = str(tmp_path / "phantoms")
    make_phantom_dataset(out, num_images=2500, image_size=64, seed=1,
                         val_fraction=0.2, test_fraction=0.0)
    keras.utils.set_random_seed(0)
    layers = keras.layers

    def block(filters):
        return [layers.Conv2D(filters, 3, padding="same", use_bias=False),
                layers.BatchNormalization(), layers.ReLU(), layers.MaxPooling2D()]

    model = keras.Sequential([
        keras.Input((64, 64, 1)), layers.Rescaling(1 / 255.0),
        *block(16), *block(32), *block(64),
        layers.GlobalMaxPooling2D(), layers.Dense(1, activation="sigmoid"),
    ])
    model.compile("adam", "binary_crossentropy")
    train = load(out, "train", batch_size=32, training=True, seed=0)
    steps = read_manifest(out).splits["train"].count // 32
    val_images, val_labels = [], []
    for images, labels in load(out, "val", batch_size=256):
        val_images.append(images.numpy())
        val_labels.append(labels.numpy()[:, 0])
    val_images, val_labels = np.concatenate(val_images), np.concatenate(val_labels)
    aucs = []
    for _ in range(6):
        model.fit(train, steps_per_epoch=steps, epochs=1, verbose=0)
        aucs.append(roc_auc_score(val_labels, model.predict(val_images, verbose=0)[:, 0]))
    print("phantom val AUC per epoch:", [round(a, 3) for a in aucs])
    assert aucs[0] < 0.97, aucs  # not solved in one epoch
    assert max(aucs) > 0.8, aucs  # but learnable within a few
