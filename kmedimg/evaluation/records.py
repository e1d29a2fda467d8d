"""Reading a TFRecord split with its record ids (until `kmedimg.data.load(..., with_ids=True)`).

`records_with_ids` is the one place in the evaluation layer that builds its own
tf.data reader; it is replaced by `kmedimg.data.load(path, split, with_ids=True)`
when the data package has it. Its callers: `kmedimg.evaluation.prediction.predict_records`
and `kmedimg.runs.evaluate.evaluate_run`.
"""

import tensorflow as tf

from kmedimg.core.run_directory import join
from kmedimg.data import schema
from kmedimg.data.decoder import RecordDecoder
from kmedimg.data.parser import RecordParser
from kmedimg.data.pipeline import read_manifest


def records_with_ids(path_or_manifest, split, image_size, channels, batch_size=64):
    """A finite, ordered tf.data.Dataset of `(images, labels, ids)` of one split.

    Images and labels are exactly what `kmedimg.data.pipeline.load(..., training=False)`
    yields; `ids` are the records' `id` strings. Shards are read in manifest order.

    Args:
        path_or_manifest: a dataset directory (local, gs:// or ram://) or its `Manifest`.
        split: the split to read.
        image_size: `(height, width)` of the model input.
        channels: channels of the model input.
        batch_size: records per batch. Defaults to `64`.
    """
    manifest = path_or_manifest if isinstance(path_or_manifest, schema.Manifest) else (
        read_manifest(path_or_manifest))
    if split not in manifest.splits:
        raise ValueError(
            f"Dataset {getattr(manifest, 'directory', '')!r} has no split {split!r}; splits: "
            f"{sorted(manifest.splits)}. Received: split={split!r}"
        )
    directory = str(getattr(manifest, "directory", "."))
    files = [join(directory, shard.path) for shard in manifest.splits[split].shards]
    decoder = RecordDecoder(manifest)
    parser = RecordParser(manifest.task, manifest.num_classes, image_size, channels,
                          manifest.channels).parse_fn(False)
    id_spec = {schema.ID_KEY: schema.feature_spec()[schema.ID_KEY]}
    compression = "" if manifest.compression == "NONE" else manifest.compression
    dataset = tf.data.TFRecordDataset(files, compression_type=compression,
                                      num_parallel_reads=None)
    if decoder.supports_batch_decode:
        def decode_batch(records):
            images, labels = parser(decoder.decode_batch(records))
            return images, labels, tf.io.parse_example(records, id_spec)[schema.ID_KEY]

        dataset = dataset.batch(batch_size).map(decode_batch, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        def decode_one(record):
            images, labels = parser(decoder.decode(record))
            return images, labels, tf.io.parse_single_example(record, id_spec)[schema.ID_KEY]

        dataset = dataset.map(decode_one, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)
