"""kmedimg.data: importers -> sharded TFRecords + manifest -> tf.data pipelines."""
from kmedimg._tensorflow import require_tensorflow
require_tensorflow()
