"""Recipe registry, stages, the §9 advisor, and discriminative learning rates."""

import numpy as np
import pytest

from kmedimg import recipes
from kmedimg.recipes import Stage, advise, get_recipe, list_recipes


@pytest.mark.parametrize("name", list_recipes())
def test_every_registered_recipe_builds(name):
    recipe = get_recipe(name)
    assert recipe.name == name
    assert recipe.init in recipes.INITS
    assert recipe.stages and all(isinstance(stage, Stage) for stage in recipe.stages)
    assert recipe.total_epochs == sum(stage.epochs for stage in recipe.stages)
    # Every option of the factory can be passed back in unchanged.
    defaults = {key: default for key, (_, default) in recipes.recipe_options(name).items()}
    assert get_recipe(name, **defaults) == recipe


def test_the_five_approaches_are_registered():
    assert set(list_recipes()) == {
        "from_scratch", "full_finetune", "partial_finetune", "feature_extractor", "two_stage"
    }


def test_stage_layouts_per_recipe():
    assert get_recipe("from_scratch").init == "random"
    assert get_recipe("from_scratch").stages[0].freeze_depth == 0
    assert get_recipe("full_finetune").stages[0].freeze_depth == 0
    assert get_recipe("partial_finetune", freeze_depth=4).stages[0].freeze_depth == 4
    extractor = get_recipe("feature_extractor").stages[0]
    assert extractor.freeze_depth == "all" and extractor.backbone_frozen and extractor.cache_features
    warmup, finetune = get_recipe("two_stage", freeze_depth=3, block_lr_decay=0.5).stages
    assert warmup.freeze_depth == "all" and warmup.learning_rate > finetune.learning_rate
    assert finetune.freeze_depth == 3 and finetune.block_lr_decay == 0.5
    assert not finetune.train_batchnorm


def test_registry_errors():
    with pytest.raises(ValueError, match=r"Unknown recipe 'nope'.*two_stage.*Received: name='nope'"):
        get_recipe("nope")
    with pytest.raises(ValueError, match=r"unknown option `lr`.*Allowed options"):
        get_recipe("two_stage", lr=0.1)
    with pytest.raises(ValueError, match="option `epochs` must be of type int"):
        get_recipe("from_scratch", epochs="10")
    with pytest.raises(ValueError, match="already registered"):
        recipes.register_recipe("two_stage")(lambda: None)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(epochs=0), "`epochs`"),
        (dict(learning_rate=-1.0), "`learning_rate`"),
        (dict(freeze_depth=1.5), "`freeze_depth`"),
        (dict(freeze_depth="some"), "`freeze_depth`"),
        (dict(schedule="step"), "`schedule`"),
        (dict(warmup_epochs=1), "needs schedule='cosine'"),
        (dict(block_lr_decay=1.5), "`block_lr_decay`"),
        (dict(optimizer="rmsprop"), "`optimizer`"),
    ],
)
def test_stage_validation(kwargs, fragment):
    arguments = dict(name="s", epochs=2, learning_rate=1e-3)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=fragment):
        Stage(**arguments)


def test_resolve_freeze_depth_matches_models():
    from kmedimg.models import resolve_freeze_depth as models_resolve

    for depth in (0, 3, 7, 0.1, 0.25, 0.5, 0.75, 1.0, "all"):
        assert recipes.resolve_freeze_depth(depth, 7) == models_resolve(depth, 7)
    with pytest.raises(ValueError, match="larger than the backbone's 7 blocks"):
        recipes.resolve_freeze_depth(8, 7)


@pytest.mark.parametrize(
    "num_images, similarity, category, recipe",
    [
        (50_000, "low", 1, "full_finetune"),
        (50_000, "high", 2, "partial_finetune"),
        (546, "low", 3, "two_stage"),
        (546, "high", 4, "feature_extractor"),
    ],
)
def test_advisor_returns_each_category(num_images, similarity, category, recipe):
    advice = advise(num_images, similarity)
    assert advice.category == category
    assert advice.recipe == recipe
    assert f"Category {category}" in advice.explanation
    assert advice.to_recipe().name == recipe
    assert f"recipe.name={recipe}" in advice.overrides()
    assert advice.augmentation == (category == 3)


def test_advisor_threshold_and_errors():
    assert advise(999, "high", large_threshold=1000).dataset_size == "small"
    assert advise(1000, "high", large_threshold=1000).dataset_size == "large"
    with pytest.raises(ValueError, match=r"`similarity` must be one of \['high', 'low'\]"):
        advise(100, "medium")
    with pytest.raises(ValueError, match="`num_images`"):
        advise(0, "high")


def test_advise_command(capsys):
    from kmedimg import cli

    assert cli.main(["advise", "--num-images", "546", "--similarity", "low"]) == 0
    output = capsys.readouterr().out
    assert "Category 3" in output and "two_stage" in output
    assert "kmedimg train recipes/two_stage.yaml --data DIR --set recipe.freeze_depth=0.5" in output
    assert "--set model.augmentation=default" in output


def test_discriminative_learning_rates_under_xla_and_after_saving(tmp_path):
    import keras
    import tensorflow as tf

    from kmedimg.optimizers import DiscriminativeAdamW, make_optimizer

    x = np.random.default_rng(0).random((32, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)

    def train(multipliers):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        outputs = keras.layers.Dense(1, name="top")(keras.layers.Dense(3, name="low")(inputs))
        model = keras.Model(inputs, outputs)
        before = [w.numpy().copy() for w in model.weights]
        optimizer = make_optimizer("adamw", 1e-2, weight_decay=0.1, lr_multipliers=multipliers)
        model.compile(optimizer, "mse")
        variables = model.trainable_variables
        optimizer.build(variables)

        # An explicit XLA step: Keras' own jit_compile is switched off whenever another
        # test has enabled op determinism in this process.
        @tf.function(jit_compile=True)
        def step(inputs, targets):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((model(inputs, training=True) - targets) ** 2)
            optimizer.apply(tape.gradient(loss, variables), variables)

        for start in range(0, 32, 8):
            step(x[start:start + 8], y[start:start + 8])
        return model, [np.abs(b - w.numpy()).max() for b, w in zip(before, model.weights)]

    plain, plain_change = train(None)
    assert type(plain.optimizer) is keras.optimizers.AdamW
    model, change = train({"low/kernel": 0.0, "low/bias": 0.0, "top/kernel": 0.5})
    assert isinstance(model.optimizer, DiscriminativeAdamW)
    assert change[0] == 0 and change[1] == 0  # multiplier 0: frozen, also no decay
    assert 0 < change[2] < plain_change[2]  # half the rate moves less
    np.testing.assert_allclose(change[3], plain_change[3], rtol=0.2)  # top bias: rate 1
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.lr_multipliers == {"low/kernel": 0.0, "low/bias": 0.0, "top/kernel": 0.5}
    low_before = loaded.get_layer("low").get_weights()[0].copy()
    loaded.fit(x, y, epochs=1, batch_size=8, verbose=0)
    np.testing.assert_array_equal(loaded.get_layer("low").get_weights()[0], low_before)
