"""A small real run directory for the evaluation tests (same layout as kmedimg.runs.train_and_evaluate).

Phantom TFRecords -> build_classifier (LeNet-5, registered backbone) -> a few real
epochs of model.fit -> model.keras, config.yaml, history.csv in a run directory.
"""

import csv
import os

IMAGE_SIZE = 64


def copy_tree(source, destination):
    """Copies a local directory tree to `destination` (a local path or a URL such as
    ram://...) through tf.io.gfile, as a run or dataset would sit on gs://."""
    import tensorflow as tf

    for root, _, names in os.walk(source):
        relative = os.path.relpath(root, source)
        target = destination.rstrip("/")
        if relative != ".":
            target += "/" + relative.replace(os.sep, "/")
        tf.io.gfile.makedirs(target)
        for name in names:
            tf.io.gfile.copy(os.path.join(root, name), target + "/" + name, overwrite=True)
    return destination


def make_run(root, num_images=320, epochs=6, backbone="lenet5_modern", seed=0, data_path=None):
    """Trains a tiny model on phantoms and writes its run directory under `root`.

    `data_path` is what config.yaml stores as `data.path` (default: the absolute
    dataset directory); returns `(run_dir, data_dir, model)`.
    """
    import keras

    from kmedimg.config import DataConfig, ModelConfig, RecipeConfig
    from kmedimg.data.pipeline import load
    from kmedimg.data.synthetic import make_phantom_dataset
    from kmedimg.models import build_classifier

    data_dir = os.path.join(root, "data")
    run_dir = os.path.join(root, "run")
    os.makedirs(run_dir, exist_ok=True)
    manifest = make_phantom_dataset(data_dir, num_images=num_images, image_size=IMAGE_SIZE,
                                    seed=seed, val_fraction=0.25, test_fraction=0.25)
    keras.utils.set_random_seed(seed)
    model = build_classifier(backbone, 1, (IMAGE_SIZE, IMAGE_SIZE, 1), dropout=0.0)
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc")])
    train = load(data_dir, "train", batch_size=32, training=True, seed=seed)
    val = load(data_dir, "val", batch_size=64)
    steps = manifest.splits["train"].count // 32
    history = model.fit(train, validation_data=val, epochs=epochs, steps_per_epoch=steps, verbose=0)
    model.save(os.path.join(run_dir, "model.keras"))
    config = RecipeConfig(data=DataConfig(path=data_path or data_dir, image_size=IMAGE_SIZE),
                          model=ModelConfig(backbone=backbone))
    with open(os.path.join(run_dir, "config.yaml"), "w") as handle:
        handle.write(config.to_yaml())
    keys = list(history.history)
    with open(os.path.join(run_dir, "history.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["stage", "epoch", "global_epoch"] + keys)
        for epoch in range(epochs):
            stage = "head" if epoch < epochs // 2 else "finetune"
            writer.writerow([stage, epoch, epoch] + [history.history[key][epoch] for key in keys])
    return run_dir, data_dir, model
