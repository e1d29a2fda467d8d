"""`Recipe`: where the weights start and the stages that train them."""

import dataclasses

from kmedimg.core.validation import check_choice

INITS = ("random", "pretrained")


@dataclasses.dataclass
class Recipe:
    """A fine-tuning approach: where the weights start and the stages that train them.

    Attributes:
        name: the registered name.
        init: `"random"` (ignore `model.weights`) or `"pretrained"` (start from
            `model.weights`: ImageNet or a kmedimg backbone).
        stages: the `Stage`s, run in order; each recompiles the model.
        description: one line on what it does and when the review recommends it.
            Defaults to `""`.
    """

    name: str
    init: str
    stages: list
    description: str = ""

    def __post_init__(self):
        where = f"Recipe {self.name!r}"
        check_choice("init", self.init, INITS, where, kind="")
        if not self.stages:
            raise ValueError(f"{where}: needs at least one stage. Received: stages=[]")
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: stage names must be unique. Received: stages={names}")

    @property
    def total_epochs(self):
        """Epochs over all stages."""
        return sum(stage.epochs for stage in self.stages)
