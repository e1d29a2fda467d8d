"""`finalize`: the last step of a conversion — checksums, `rejected.csv`, the manifest.

Runs after `write_shards` has written every shard under a temporary directory inside
the output directory. Each shard is hashed, and `rejected.csv` and `dataset.json` are
written next to the shards; only when the new dataset is complete is it renamed into
place (renames only, so a full disk cannot stop it halfway): the old manifest is
removed first and the new one renamed last, so the directory only looks like a
dataset once everything it lists is there. Shards of a replaced dataset that the new
manifest does not list are removed at the end.
"""

import collections
import csv
import io

import tensorflow as tf

from kmedimg import __version__
from kmedimg.core.run_directory import join
from kmedimg.data import schema
from kmedimg.data.paths import sha256_of, writing

_MAX_LISTED_DUPLICATE_GROUPS = 1000


def _describe_shards(plan, temp_dir, records_in_shard):
    """Hashes each shard written in `temp_dir`; returns split name -> `SplitInfo`."""
    splits = {}
    for name, entries in plan.splits.items():
        class_counts = collections.Counter()
        for entry in entries:
            for label in entry.labels:
                class_counts[plan.class_names[label]] += 1
        shards = []
        count = plan.shard_counts[name]
        for index in range(count):
            file_name = schema.shard_name(name, index, count)
            temp_path = join(temp_dir, file_name)
            shards.append(
                schema.ShardInfo(
                    path=file_name,
                    records=records_in_shard[(name, index)],
                    sha256=sha256_of(temp_path),
                    bytes=tf.io.gfile.stat(temp_path).length,
                )
            )
        splits[name] = schema.SplitInfo(
            count=len(entries),
            class_counts={n: class_counts[n] for n in plan.class_names},
            shards=shards,
        )
    return splits


def _write_rejected(rows, temp_dir):
    buffer = io.StringIO()
    csv_writer = csv.writer(buffer, lineterminator="\n")
    csv_writer.writerow(["source", "reason"])
    csv_writer.writerows(rows)
    with tf.io.gfile.GFile(join(temp_dir, schema.REJECTED_NAME), "w") as handle:
        handle.write(buffer.getvalue())


def _move_into_place(manifest, out_dir, temp_dir):
    """Renames the complete new dataset from `temp_dir` into `out_dir`, manifest last.

    Only renames happen here (no new bytes are written), and the old manifest goes
    first, so `out_dir` never pairs a manifest with shards it does not list.
    """
    manifest_path = join(out_dir, schema.MANIFEST_NAME)
    if tf.io.gfile.exists(manifest_path):
        tf.io.gfile.remove(manifest_path)
    names = [shard.path for split in manifest.splits.values() for shard in split.shards]
    for name in names + [schema.REJECTED_NAME, schema.MANIFEST_NAME]:
        tf.io.gfile.rename(join(temp_dir, name), join(out_dir, name), overwrite=True)


def duplicates_report(plan):
    """The manifest's `duplicates` field: group counts and the first 1000 groups."""
    groups = plan.duplicate_groups

    def describe_group(group):
        return {
            "sha256": group[0].digest,
            "sources": [entry.source for entry in group],
            "splits": sorted({entry.split for entry in group
                              if entry.position not in plan.rejections}),
        }

    return {
        "groups": len(groups),
        "items": sum(len(group) for group in groups),
        "dropped": plan.dropped,
        "straddling": len(plan.straddling),
        # Identical images under different labels: every copy is rejected (rejected.csv).
        "label_conflicts": len(plan.label_conflicts),
        "list": [describe_group(group) for group in groups[:_MAX_LISTED_DUPLICATE_GROUPS]],
        "list_truncated": len(groups) > _MAX_LISTED_DUPLICATE_GROUPS,
    }


def build_manifest(plan, splits, rejected_rows, source_description, conversion_args=None):
    """The `schema.Manifest` of an executed plan (pure: writes nothing).

    Args:
        plan: the `ConversionPlan`.
        splits: split name -> `schema.SplitInfo` of the written shards.
        rejected_rows: `(source, reason)` of every entry not written.
        source_description: the source's `describe()` (the manifest's `source`).
        conversion_args: JSON-able dict stored under `conversion.args`.
            Defaults to `None`.
    """
    shapes = {entry.shape for entry in plan.kept()}
    height, width = (shapes.pop()[:2] if len(shapes) == 1 else (None, None))
    reason_counts = collections.Counter(reason for _, reason in rejected_rows)
    return schema.Manifest(
        task=plan.task,
        class_names=plan.class_names,
        encoding=plan.encoding,
        dtype=plan.dtype,
        channels=int(plan.stored_channels),
        height=None if height is None else int(height),
        width=None if width is None else int(width),
        compression=plan.compression,
        splits=splits,
        source=source_description,
        conversion={
            "writer": f"kmedimg {__version__}",
            "encoding": plan.encoding,
            "compression": plan.compression,
            "num_shards": plan.num_shards,
            "val_fraction": plan.val_fraction,
            "test_fraction": plan.test_fraction,
            "seed": plan.seed,
            "drop_duplicates": plan.drop_duplicates,
            "image_size": list(plan.image_size) if plan.image_size else None,
            "channels": plan.channels,
            "promoted_grey_to_rgb": plan.promoted,
            "splits_given_by_source": plan.splits_given_by_source,
            "args": dict(conversion_args or {}),
            "patients_in_several_splits": len(plan.patients_in_several_splits),
        },
        counts={
            "seen": len(plan.entries),
            "written": sum(split.count for split in splits.values()),
            "rejected": len(rejected_rows),
            "rejected_by_source": plan.rejected_by_source,
            "rejected_reasons": dict(reason_counts.most_common(20)),
            "per_split": {name: split.count for name, split in splits.items()},
        },
        duplicates=duplicates_report(plan),
    )


def _remove_stale_shards(replaced, manifest, out_dir):
    """Removes the shards of a replaced dataset that the new manifest does not list."""
    new_files = {shard.path for split in manifest.splits.values() for shard in split.shards}
    for split in replaced.splits.values():
        for shard in split.shards:
            path = join(out_dir, shard.path)
            if shard.path not in new_files and tf.io.gfile.exists(path):
                tf.io.gfile.remove(path)


def finalize(plan, source, out_dir, temp_dir, records_in_shard, conversion_args=None,
             replaced=None):
    """Completes the dataset in `temp_dir`, then moves it into `out_dir`.

    Args:
        plan: the executed `ConversionPlan`.
        source: the source (its `describe()` goes into the manifest).
        out_dir: the dataset directory.
        temp_dir: the directory `write_shards` wrote into (inside `out_dir`).
        records_in_shard: `write_shards`' count of records per `(split, index)`.
        conversion_args: JSON-able dict stored in the manifest. Defaults to `None`.
        replaced: the manifest of the dataset this one replaces, whose unlisted
            shards are removed. Defaults to `None`.

    Returns:
        The written `schema.Manifest`, with `.directory` set to `out_dir`.

    Raises:
        ConversionError: when a write fails (disk full, ...) before the new dataset
            is complete; `out_dir` is then untouched.
    """
    with writing(out_dir):
        splits = _describe_shards(plan, temp_dir, records_in_shard)
        rejected_rows = plan.rejected_rows()
        _write_rejected(rejected_rows, temp_dir)
    describe = getattr(source, "describe", None)
    description = describe() if callable(describe) else {"repr": repr(source)}
    manifest = build_manifest(plan, splits, rejected_rows, description, conversion_args)
    manifest.validate(join(out_dir, schema.MANIFEST_NAME))
    with writing(out_dir):
        with tf.io.gfile.GFile(join(temp_dir, schema.MANIFEST_NAME), "w") as handle:
            handle.write(manifest.to_json())
        _move_into_place(manifest, out_dir, temp_dir)
        if replaced is not None:
            _remove_stale_shards(replaced, manifest, out_dir)
    manifest.directory = out_dir
    return manifest
