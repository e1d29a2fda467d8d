"""`RecipeConfig`: a whole recipe file, its sections in file order."""

import dataclasses

import yaml

from kmedimg.config.sections import (
    DataConfig,
    DistributeConfig,
    EvaluationConfig,
    ModelConfig,
    RecipeSection,
    TrainingConfig,
)


@dataclasses.dataclass
class RecipeConfig:
    """A whole recipe file.

    Attributes:
        description: free text shown in the run directory. Defaults to `""`.
        data: see `DataConfig`.
        model: see `ModelConfig`.
        recipe: see `RecipeSection`.
        training: see `TrainingConfig`.
        distribute: see `DistributeConfig`.
        evaluation: see `EvaluationConfig`.
        tune: the `tune:` mapping as the file wrote it, validated on loading by
            `kmedimg.config.TuneSettings.from_dict` (kept as the file's mapping so a
            run's `config.yaml` repeats what the user wrote, not every default).
            Defaults to `{}`.
    """

    description: str = ""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    recipe: RecipeSection = dataclasses.field(default_factory=RecipeSection)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    distribute: DistributeConfig = dataclasses.field(default_factory=DistributeConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    tune: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def section_names(cls):
        """The sections of a recipe file, in file order."""
        return [field.name for field in dataclasses.fields(cls)]

    def to_dict(self):
        """The config as plain YAML-ready data (recipe options flattened next to `name`)."""
        raw = dataclasses.asdict(self)
        recipe = raw.pop("recipe")
        raw["recipe"] = {"name": recipe["name"], **recipe["options"]}
        return {key: raw[key] for key in self.section_names()}

    def to_yaml(self):
        """The config as a YAML document that `load_config` reads back unchanged."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)
