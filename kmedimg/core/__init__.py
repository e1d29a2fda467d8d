"""kmedimg.core: the few pieces every layer of the package may use.

Nothing here imports TensorFlow at module import, so `kmedimg.layers` and
`kmedimg.models` stay usable under any Keras backend.

- `Registry`: a named, explicit registry (backbones, recipes, sources, tuners).
"""

from kmedimg.core.registry import Registry

__all__ = ["Registry"]
