"""`RecordDecoder`: serialized kmedimg records -> image and label tensors (bytes -> tensors).

The decoder knows the storage format (from the manifest) and nothing about the
model: it returns the image in its stored dtype and shape and the labels as a
multi-hot indicator. Resizing, channel handling and label encoding for the task are
the `RecordParser`'s job.
"""

import tensorflow as tf

from kmedimg.data import schema


class RecordDecoder:
    """Decodes kmedimg `tf.train.Example` records.

    Two modes:

    * `decode_batch(serialized)` takes a 1-D string tensor (a batch of records) and
      decodes all images with one `parse_example` + `decode_raw` — the vectorised path.
      It needs raw encoding and one stored shape for every record.
    * `decode(serialized)` takes one scalar record (any encoding, any shape).

    Args:
        manifest: the dataset's `schema.Manifest`.
        include_ids: also decode each record's `id` string (as `"id"`).
            Defaults to `False`.

    Example:

    ```python
    decoder = RecordDecoder(read_manifest("/tmp/phantoms"))
    decoded = decoder.decode(next(iter(tf.data.TFRecordDataset(path))))
    decoded["image"].shape, decoded["labels"].shape
    ```
    """

    def __init__(self, manifest, include_ids=False):
        self.manifest = manifest
        self.include_ids = bool(include_ids)
        self.image_dtype = tf.as_dtype(manifest.dtype)
        self.channels = int(manifest.channels)
        self.num_classes = len(manifest.class_names)
        self.stored_shape = (
            (int(manifest.height), int(manifest.width), self.channels)
            if manifest.height and manifest.width
            else None
        )
        spec = schema.feature_spec()
        # Parse only what is used: every extra feature costs time on the hot path.
        ids = (schema.ID_KEY,) if self.include_ids else ()
        self._batch_spec = {
            key: spec[key] for key in (schema.IMAGE_KEY, schema.LABEL_KEY) + ids
        }
        self._single_spec = {
            key: spec[key]
            for key in (schema.IMAGE_KEY, schema.HEIGHT_KEY, schema.WIDTH_KEY,
                        schema.LABEL_KEY) + ids
        }

    @property
    def supports_batch_decode(self):
        """True when records are raw and all share one shape (the vectorised path)."""
        return self.manifest.encoding == "raw" and self.stored_shape is not None

    def _indicator(self, labels):
        return tf.sparse.to_indicator(labels, self.num_classes)

    def decode_batch(self, serialized):
        """Decodes a 1-D batch of serialized records.

        Returns:
            dict with "image" ([B, H, W, C], stored dtype), "labels" ([B, K] bool)
            and, with `include_ids`, "id" ([B] string).
        """
        if not self.supports_batch_decode:
            raise ValueError(
                "Batch decoding needs raw records of one stored shape. "
                f"Received: encoding={self.manifest.encoding!r}, "
                f"height={self.manifest.height}, width={self.manifest.width}"
            )
        parsed = tf.io.parse_example(serialized, self._batch_spec)
        flat = tf.io.decode_raw(parsed[schema.IMAGE_KEY], self.image_dtype, little_endian=True)
        # Keep a static batch dimension when the batch has one (drop_remainder=True),
        # so training batches are fully static (XLA / TPU).
        batch = serialized.shape[0]
        images = tf.reshape(flat, (-1 if batch is None else batch,) + self.stored_shape)
        labels = self._indicator(parsed[schema.LABEL_KEY])
        labels = tf.ensure_shape(labels, (batch, self.num_classes))
        return self._with_id({"image": images, "labels": labels}, parsed)

    def decode(self, serialized):
        """Decodes one serialized record.

        Returns:
            dict with "image" ([H, W, C], stored dtype; H and W may be dynamic),
            "labels" ([K] bool) and, with `include_ids`, "id" (a string).
        """
        parsed = tf.io.parse_single_example(serialized, self._single_spec)
        encoded = parsed[schema.IMAGE_KEY]
        if self.manifest.encoding == "png":
            image = tf.io.decode_png(encoded, channels=self.channels, dtype=self.image_dtype)
        else:
            flat = tf.io.decode_raw(encoded, self.image_dtype, little_endian=True)
            shape = tf.stack(
                [parsed[schema.HEIGHT_KEY], parsed[schema.WIDTH_KEY], self.channels]
            )
            image = tf.reshape(flat, tf.cast(shape, tf.int32))
        if self.stored_shape is not None:
            image = tf.ensure_shape(image, self.stored_shape)
        else:
            image = tf.ensure_shape(image, (None, None, self.channels))
        labels = tf.ensure_shape(self._indicator(parsed[schema.LABEL_KEY]), (self.num_classes,))
        return self._with_id({"image": image, "labels": labels}, parsed)

    def _with_id(self, decoded, parsed):
        if self.include_ids:
            decoded["id"] = parsed[schema.ID_KEY]
        return decoded
