"""`kmedimg inspect DATA --show N`: augmented training images per class in a PNG grid."""

import numpy as np
import pytest
from PIL import Image

from kmedimg import cli
from kmedimg.data.preview import preview_images
from kmedimg.data.synthetic import make_phantom_dataset


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    path = tmp_path_factory.mktemp("phantoms")
    make_phantom_dataset(path, num_images=40, image_size=24, seed=0, val_fraction=0.25)
    return str(path)


def test_show_writes_a_grid_of_augmented_images_per_class(phantoms, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["inspect", phantoms, "--show", "3"]) == 0
    printed = capsys.readouterr().out
    name = f"{tmp_path.joinpath(phantoms.rstrip('/').split('/')[-1])}-preview.png"
    assert f"written to {name}" in printed and "default MedicalAugmentation" in printed
    with Image.open(name) as grid:
        # One 160-pixel cell per image: 3 columns, one row per class (normal, opacity).
        assert grid.format == "PNG" and grid.size == (3 * 160, 2 * 160)
        pixels = np.asarray(grid.convert("L"))
    assert pixels.std() > 10  # images were drawn, not an empty canvas


def test_augmented_pixels_differ_from_the_raw_ones(phantoms):
    preview = preview_images(phantoms, count=4, augmentation=True, seed=1)
    assert preview.class_names == ["normal", "opacity"]
    for raw, augmented in zip(preview.raw, preview.augmented):
        assert raw.shape == augmented.shape == (4, 24, 24, 1)
        assert 0.0 <= raw.min() and raw.max() <= 1.0
        assert np.abs(raw - augmented).mean() > 0.005


def test_recipe_without_augmentation_shows_the_raw_images(phantoms, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data: {image_size: 32}\nmodel: {backbone: lenet5}\n")
    out = tmp_path / "grid.png"
    assert cli.main(["inspect", phantoms, "--show", "2", "--recipe", str(recipe),
                     "--out", str(out)]) == 0
    assert "no augmentation" in capsys.readouterr().out
    with Image.open(out) as grid:
        assert grid.size == (2 * 160, 2 * 160)
    preview = preview_images(phantoms, count=2, image_size=32, augmentation=None)
    assert all(np.array_equal(r, a) for r, a in zip(preview.raw, preview.augmented))
    assert preview.raw[0].shape == (2, 32, 32, 1)


def test_bad_show_count_names_the_flag(phantoms, tmp_path, capsys):
    assert cli.main(["inspect", phantoms, "--show", "0", "--out", str(tmp_path / "g.png")]) == 2
    assert "`count` (--show) must be an int >= 1. Received: count=0" in capsys.readouterr().err
