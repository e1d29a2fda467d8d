"""Words the whole package shares, defined once.

Every module that validates one of these imports it from here, so the allowed values
named in an error message are the same wherever the error is raised.
"""

TASKS = ("binary", "multiclass", "multilabel")
"""What a classifier predicts: one sigmoid, a softmax over classes, a sigmoid per class."""

PIXEL_DTYPES = ("uint8", "uint16")
"""How pixels are stored in TFRecords (CT/MR keep 16 bits)."""

OPTIMIZERS = ("adamw", "adam", "sgd")
"""Optimizers a recipe stage may name (`kmedimg.optimizers.make_optimizer`)."""

SPLITS = ("train", "val", "test")
"""The standard split names, in the order they are listed."""
