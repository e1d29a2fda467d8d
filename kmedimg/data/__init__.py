"""kmedimg.data: importers -> sharded TFRecords + manifest -> tf.data pipelines."""
