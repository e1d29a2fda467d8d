"""`Stage`: one `fit` of a recipe: which blocks train, how fast, for how long."""

import dataclasses
from typing import Optional, Union

from kmedimg.core.validation import check_fields, error, field
from kmedimg.core.vocabulary import OPTIMIZERS
from kmedimg.models.freezing import check_freeze_depth

SCHEDULES = ("constant", "cosine", "plateau")


@dataclasses.dataclass
class Stage:
    """One `fit` of a recipe: what trains, how fast, for how long.

    Attributes:
        name: label used in `history.csv` and the logs.
        epochs: epochs of this stage, >= 1.
        learning_rate: peak learning rate (after warm-up), > 0.
        freeze_depth: how many backbone blocks, counted from the stem, are frozen: an
            int, a fraction in (0, 1] of the blocks, or `"all"` for the whole backbone.
            `0` trains everything. The head always trains. Defaults to `0`.
        schedule: `"constant"`, `"cosine"` (cosine decay to 0 over the stage, after
            `warmup_epochs` of linear warm-up) or `"plateau"` (divide by 10 when the
            monitored metric stalls for 2 epochs). Defaults to `"constant"`.
        warmup_epochs: linear warm-up epochs of the cosine schedule. Defaults to `0`.
        optimizer: one of `"adamw"`, `"adam"`, `"sgd"`; `None` takes
            `training.optimizer`. Defaults to `None`.
        train_batchnorm: whether BatchNormalization layers inside the *training*
            blocks train (update moving statistics, scale and offset). `False` keeps
            them frozen in inference mode, the usual advice when fine-tuning on a small
            dataset. Frozen blocks always keep BatchNormalization frozen.
            Defaults to `True`.
        block_lr_decay: discriminative learning rates: the top training block gets
            `learning_rate`, each block below it `block_lr_decay` times the one above
            (the head gets `learning_rate`). `None` is one rate for all.
            Defaults to `None`.
        cache_features: compute the frozen backbone's features once and train only the
            head on them. Applies only when the whole backbone is frozen (`freeze_depth=
            "all"`) and the model has no augmentation (the features of an image must
            not change between epochs); otherwise the stage trains normally and the run
            says why. Defaults to `False`.

    Example:

    >>> Stage("finetune", epochs=10, learning_rate=1e-4, freeze_depth=0.5).backbone_frozen
    False
    """

    name: str
    epochs: int = field(minimum=1)
    learning_rate: float = field(minimum=0, include_minimum=False)
    freeze_depth: Union[int, float, str] = 0
    schedule: str = field("constant", choices=SCHEDULES)
    warmup_epochs: int = field(0, minimum=0)
    optimizer: Optional[str] = field(None, choices=(None,) + OPTIMIZERS)
    train_batchnorm: bool = True
    block_lr_decay: Optional[float] = field(None, minimum=0, maximum=1, include_minimum=False)
    cache_features: bool = False

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Raises ValueError naming the field when the stage is inconsistent."""
        where = f"Stage {self.name!r}"
        check_fields(self, where, kind="")
        check_freeze_depth(self.freeze_depth, where)
        if self.warmup_epochs >= self.epochs:
            raise error("warmup_epochs", f"an int in [0, epochs={self.epochs})",
                        self.warmup_epochs, where, kind="")
        if self.warmup_epochs and self.schedule != "cosine":
            raise ValueError(
                f"{where}: `warmup_epochs` needs schedule='cosine'. "
                f"Received: schedule={self.schedule!r}, warmup_epochs={self.warmup_epochs!r}"
            )

    @property
    def backbone_frozen(self):
        """True when no backbone block trains in this stage."""
        return self.freeze_depth == "all" or (
            isinstance(self.freeze_depth, float) and self.freeze_depth >= 1.0
        )
