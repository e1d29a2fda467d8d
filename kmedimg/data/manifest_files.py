"""A dataset directory's manifest and shard files: `read_manifest` and `verify`.

`dataset.json` is the one description of a dataset directory (see `schema`); these
functions read it (local or gs://, through `tf.io.gfile`; its own checksum is checked
on every read) and check the shard files it lists, by size (cheap, done by `load`
before reading) or by sha256 (`verify`). `manifest_fingerprint` identifies a
dataset's content, so a run can refuse to resume on a re-converted dataset.
"""

import concurrent.futures
import re

import tensorflow as tf

from kmedimg.core.run_directory import join
from kmedimg.data import schema
from kmedimg.data.paths import sha256_of

#: How `load` starts the error it raises for a shard with too few valid records.
CORRUPT_SHARD_MARK = "kmedimg: the dataset is corrupt: shard "
_CORRUPT_SHARD_MESSAGE = re.compile(re.escape(CORRUPT_SHARD_MARK) + r"[^\]\n]*")


def read_error(error):
    """The one-line `ValueError` for a corrupt shard met while reading, or `None`.

    `load` names a shard that holds fewer valid records than the manifest lists (a
    flipped byte, a truncated file) in a TensorFlow error raised inside the
    pipeline, which reaches the caller as a `tf.errors.OpError` (from `fit`,
    `predict`, iteration). Callers turn it into a plain message:

    ```python
    try:
        model.fit(load(path, "train", training=True), ...)
    except tf.errors.OpError as error:
        raise read_error(error) or error
    ```

    Args:
        error: any exception.

    Returns:
        A `ValueError` naming the shard, or `None` when `error` is something else.
    """
    if not isinstance(error, tf.errors.OpError):
        return None
    found = _CORRUPT_SHARD_MESSAGE.search(error.message or "")
    if not found:
        return None
    return ValueError(found.group(0)[len("kmedimg: "):].strip())


def read_manifest(path):
    """Reads and validates a dataset's `dataset.json`.

    Args:
        path: the dataset directory or the `dataset.json` file (local or gs://).

    Returns:
        The `schema.Manifest`, with `.directory` set to the dataset directory.

    Raises:
        FileNotFoundError: when there is no manifest at `path`.
        ValueError: when the manifest is invalid (naming the file and the field).
    """
    path = str(path)
    if path.endswith(schema.MANIFEST_NAME) and not tf.io.gfile.isdir(path):
        manifest_path = path
        directory = path[: -len(schema.MANIFEST_NAME)].rstrip("/") or "."
    else:
        manifest_path = join(path, schema.MANIFEST_NAME)
        directory = path
    if not tf.io.gfile.exists(manifest_path):
        hint = (
            " The directory exists but has no manifest: the conversion may have been "
            "interrupted; run `kmedimg convert` again."
            if tf.io.gfile.isdir(directory)
            else ""
        )
        raise FileNotFoundError(
            f"No kmedimg dataset at {path}: {manifest_path} does not exist.{hint}"
        )
    with tf.io.gfile.GFile(manifest_path, "r") as handle:
        manifest = schema.Manifest.from_json(handle.read(), where=manifest_path)
    manifest.directory = directory
    return manifest


def as_manifest(path_or_manifest):
    """A `Manifest` that knows its directory, from a path or a manifest."""
    if isinstance(path_or_manifest, schema.Manifest):
        if not getattr(path_or_manifest, "directory", None):
            raise ValueError(
                "This Manifest does not know its directory; pass the dataset path, or a "
                "manifest from `read_manifest(path)` / `write_dataset(...)`. "
                "Received: a Manifest without `.directory`"
            )
        return path_or_manifest
    return read_manifest(path_or_manifest)


def split_info(manifest, split):
    """The `SplitInfo` of a non-empty split, or a ValueError listing the splits."""
    if split not in manifest.splits:
        raise ValueError(
            f"{join(manifest.directory, schema.MANIFEST_NAME)}: no split {split!r}; "
            f"available splits: {sorted(manifest.splits)}. Received: split={split!r}"
        )
    info = manifest.splits[split]
    if not info.shards or info.count == 0:
        raise ValueError(
            f"{join(manifest.directory, schema.MANIFEST_NAME)}: split {split!r} is "
            f"empty. Received: split={split!r}"
        )
    return info


def check_shard_sizes(manifest, shards):
    """Stats every shard (in parallel: gs:// stats are slow) against the manifest.

    Raises:
        ValueError: naming the missing or resized shards.
    """

    def check(shard):
        path = join(manifest.directory, shard.path)
        try:
            length = tf.io.gfile.stat(path).length
        except tf.errors.NotFoundError:
            return f"shard {path} is missing"
        if length != shard.bytes:
            return (
                f"shard {path} has {length} bytes but the manifest says {shard.bytes} "
                "(truncated or replaced); re-run the conversion or restore the file"
            )
        return None

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        problems = [problem for problem in pool.map(check, shards) if problem]
    if problems:
        raise ValueError("; ".join(problems[:5]) + (
            f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))


def manifest_fingerprint(manifest_or_path):
    """The sha256 (hex) of a dataset's manifest content: equal only for the same data.

    Every shard's sha256, the counts, class names and conversion settings are part of
    the manifest, so a re-converted or edited dataset has another fingerprint. For a
    manifest written by `kmedimg convert` it equals the file's `checksum` field.

    Args:
        manifest_or_path: a `schema.Manifest`, a dataset directory or its
            `dataset.json` (local or gs://).

    Returns:
        64 hex digits.

    Example:

    ```python
    recorded = manifest_fingerprint("data/phantoms")
    ...
    if manifest_fingerprint("data/phantoms") != recorded:
        raise ValueError("the dataset changed since this run started")
    ```
    """
    if not isinstance(manifest_or_path, schema.Manifest):
        manifest_or_path = read_manifest(manifest_or_path)
    return schema.manifest_checksum(manifest_or_path)


def verify(path_or_manifest, splits=None):
    """Checks `dataset.json` against its checksum and every shard's sha256 against it.

    Args:
        path_or_manifest: dataset directory, `dataset.json` path or Manifest (its
            `dataset.json` is read again: the file on disk is what is verified).
        splits: split names to check. Defaults to `None` (all).

    Returns:
        The manifest, when it and every shard match.

    Raises:
        ValueError: when the manifest was edited or has no checksum, or naming the
            first shard whose size or checksum does not match.
    """
    manifest = read_manifest(as_manifest(path_or_manifest).directory)
    manifest_path = join(manifest.directory, schema.MANIFEST_NAME)
    if not manifest.checksum:
        raise ValueError(
            f"{manifest_path} has no `checksum`: it was not written by `kmedimg convert` "
            "(or the field was removed), so its counts, shapes and class names cannot be "
            "verified. Re-run `kmedimg convert`. Received: checksum=''"
        )
    for name in splits or list(manifest.splits):
        info = split_info(manifest, name)
        check_shard_sizes(manifest, info.shards)
        for shard in info.shards:
            shard_path = join(manifest.directory, shard.path)
            actual = sha256_of(shard_path)
            if actual != shard.sha256:
                raise ValueError(
                    f"shard {shard_path}: sha256 {actual} does not match the "
                    f"manifest's {shard.sha256}; the file is corrupt or was replaced."
                )
    return manifest
