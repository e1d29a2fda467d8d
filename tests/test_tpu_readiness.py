"""TPU-readiness without a TPU: every recipe compiles under XLA in bfloat16 on CPU.

Each case builds the recipe's model through `kmedimg.training` (augmentation on,
`mixed_bfloat16`, `jit_compile=True`), runs every stage for one training step and
one validation step on the static-shape TFRecord pipeline, so the train and eval
steps of every stage go through XLA the way they would on a TPU. The fast subset
(every recipe on LeNet-5, the default backbone on the two-stage recipe) runs by
default; the representative backbone set is `slow`.
"""

import dataclasses

import keras
import numpy as np
import pytest

from kmedimg import distribute, training
from kmedimg.config import RecipeConfig
from kmedimg.data.synthetic import make_phantom_dataset
from kmedimg.models.backbones import get_backbone
from kmedimg.recipes import get_recipe, list_recipes

RECIPE_CASES = [(name, {}) for name in list_recipes()] + [("two_stage", {"block_lr_decay": 0.5})]
# Random init with a cosine warm-up; a frozen backbone; two stages with a partial
# freeze, frozen BatchNormalization and per-block learning rates; a real backbone.
FAST_CASES = [
    ("from_scratch", {}, "lenet5"),
    ("feature_extractor", {}, "lenet5"),
    ("two_stage", {"block_lr_decay": 0.5}, "lenet5"),
    ("partial_finetune", {}, "mobilenetv2"),
]
SLOW_BACKBONES = [
    "lenet5",
    "mobilenetv2",
    "resnet50",
    "resnet50v2",
    "densenet121",
    "efficientnetb0",
    "efficientnetv2b0",
    "vgg16",
    "inceptionv3",
    "convnexttiny",
    "mobilenetv3small",
    "alexnet",
]
SLOW_CASES = [
    (name, options, backbone)
    for backbone in SLOW_BACKBONES
    for name, options in RECIPE_CASES
    if (name, options, backbone) not in FAST_CASES
]
BATCH_SIZE = 4


@pytest.fixture(autouse=True)
def without_op_determinism():
    """Keras quietly compiles without XLA once op determinism is on (an earlier
    in-process `training.run` turns it on for the whole process); switch it off here
    so these tests really compile with XLA, and restore it afterwards."""
    from tensorflow.python.framework import config as tf_config  # no public switch-off

    was_enabled = tf_config.is_op_determinism_enabled()
    tf_config.disable_op_determinism()
    yield
    if was_enabled:
        tf_config.enable_op_determinism()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    directory = tmp_path_factory.mktemp("xla_phantoms")
    make_phantom_dataset(str(directory), num_images=24, image_size=32, val_fraction=0.25, test_fraction=0.0)
    return str(directory)


def compile_every_stage(recipe_name, options, backbone, data_path):
    image_size = max(32, get_backbone(backbone).min_size)
    config = RecipeConfig()
    config.data.path = data_path
    config.data.image_size = image_size
    config.data.batch_size = BATCH_SIZE
    config.model.backbone = backbone
    config.model.augmentation = True
    config.recipe.name = recipe_name
    config.recipe.options = dict(options)
    config.distribute.kind = "cpu"
    config.distribute.precision = "mixed_bfloat16"
    config.training.jit_compile = True
    config.training.steps_per_epoch = 1
    config.training.validation_steps = 1
    recipe = get_recipe(recipe_name, **options)
    # One step per epoch; as few epochs as the stage's warm-up allows.
    recipe = dataclasses.replace(
        recipe, stages=[dataclasses.replace(s, epochs=s.warmup_epochs + 1) for s in recipe.stages]
    )

    settings = training.platform_settings(config)
    assert (settings.precision_policy, settings.jit_compile) == ("mixed_bfloat16", True)
    data = training.prepare_data(config)
    model = training.build_model(
        config, data.num_classes, data.input_shape, data.task, recipe=recipe,
        dtype_policy=settings.precision_policy,
    )
    distribute.check_layers_for_xla(model)
    histories = training.run_stages(
        model, recipe, config, data.train, validation_data=data.val, steps_per_epoch=1,
        validation_steps=1,
    )
    return model, recipe, histories


def check_compiled(model, recipe, histories):
    assert len(histories) == len(recipe.stages)
    for history in histories:
        assert np.isfinite(history.history["loss"]).all()
        assert np.isfinite(history.history["val_loss"]).all()
    assert model.jit_compile is True  # False would mean Keras fell back to no XLA
    compute_dtypes = {layer.compute_dtype for layer in model.layers if layer.weights}
    assert "bfloat16" in compute_dtypes
    assert model.outputs[0].dtype == "float32"


@pytest.mark.parametrize("recipe_name, options, backbone", FAST_CASES)
def test_recipe_compiles_under_xla_in_bfloat16(recipe_name, options, backbone, phantoms):
    keras.utils.set_random_seed(0)
    check_compiled(*compile_every_stage(recipe_name, options, backbone, phantoms))


@pytest.mark.slow
@pytest.mark.parametrize("recipe_name, options, backbone", SLOW_CASES)
def test_recipe_compiles_under_xla_in_bfloat16_slow(recipe_name, options, backbone, phantoms):
    keras.utils.set_random_seed(0)
    check_compiled(*compile_every_stage(recipe_name, options, backbone, phantoms))


def test_every_recipe_is_checked_on_every_backbone():
    checked = {(name, str(options), backbone) for name, options, backbone in FAST_CASES + SLOW_CASES}
    assert len(checked) == len(RECIPE_CASES) * len(SLOW_BACKBONES)
    assert {name for name, _ in RECIPE_CASES} == set(list_recipes())
