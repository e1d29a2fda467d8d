"""kmedimg.data: importers -> sharded TFRecords + manifest -> tf.data pipelines.

The public API:

- reading: `load` (one split as a `tf.data.Dataset`), `make_dataset_fn` (per-replica
  input for `strategy.distribute_datasets_from_function`), `read_manifest`, `verify`;
- writing: `write_dataset` = `plan_conversion` (pass 1, a `ConversionPlan`, no
  TensorFlow) + `write_shards` (pass 2) + `finalize`; `convert_source` opens a
  source by spec first (what `kmedimg convert` does);
- sources: `open_source`, `Item`, `Rejected`, `Source`, `PhantomSource`,
  `make_phantom_dataset`;
- the format: `Manifest` (dataset.json).
"""

# kmedimg.data is the lowest layer that needs TensorFlow: a missing or too old one is
# named here, with the install command, before anything else fails.
from kmedimg._tensorflow import require_tensorflow

require_tensorflow()

from kmedimg.data.conversion import convert_source
from kmedimg.data.finalize import finalize
from kmedimg.data.manifest_files import read_manifest, verify
from kmedimg.data.pipeline import load, make_dataset_fn
from kmedimg.data.planning import ConversionPlan, plan_conversion
from kmedimg.data.schema import Manifest
from kmedimg.data.sources import Item, Rejected, Source, open_source
from kmedimg.data.synthetic import PhantomSource, make_phantom_dataset
from kmedimg.data.writer import write_dataset, write_shards

__all__ = [
    "ConversionPlan",
    "Item",
    "Manifest",
    "PhantomSource",
    "Rejected",
    "Source",
    "convert_source",
    "finalize",
    "load",
    "make_dataset_fn",
    "make_phantom_dataset",
    "open_source",
    "plan_conversion",
    "read_manifest",
    "verify",
    "write_dataset",
    "write_shards",
]
