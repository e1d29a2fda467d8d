"""kmedimg.core: the few pieces every layer of the package may use.

Nothing here imports TensorFlow at module import, so `kmedimg.layers` and
`kmedimg.models` stay usable under any Keras backend.

- `Registry`: a named, explicit registry (backbones, recipes, sources, tuners).
- `vocabulary`: the shared words (`TASKS`, pixel dtypes, optimizers, split names).
- `run_directory.RunDirectory`: the one owner of a run's files (imports TensorFlow,
  so it is not imported here).
"""

from kmedimg.core.registry import Registry

__all__ = ["Registry"]
