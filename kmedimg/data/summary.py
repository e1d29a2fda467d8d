"""Plain-text tables of a dataset: `manifest_table` (`kmedimg inspect`) and
`conversion_summary` (the closing table of `kmedimg convert`).

Both return strings; the commands print them.
"""

import collections
import csv
import io

import tensorflow as tf

from kmedimg.core.run_directory import join
from kmedimg.data import schema


def format_table(header, rows, align=None):
    """Plain-text table; numbers right-aligned."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(header)]
    align = align or ["<" if i < 2 else ">" for i in range(len(header))]

    def line(cells):
        return "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(cells, align, widths)).rstrip()

    out = [line([str(h) for h in header]), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    return "\n".join(out)


def read_rejected(directory):
    """The `(source, reason)` rows of a dataset's rejected.csv ([] when absent)."""
    path = join(directory, schema.REJECTED_NAME)
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path, "r") as handle:
        rows = list(csv.reader(io.StringIO(handle.read())))
    return rows[1:]


def conversion_summary(manifest, out_dir, items):
    """The closing table of `convert`: written / rejected / duplicates per split and class.

    Args:
        manifest: the written `Manifest`.
        out_dir: the dataset directory (for rejected.csv).
        items: `{source name: (labels, split given by the source or None)}`.
    """
    rejected_rows = read_rejected(out_dir)
    rejected_sources = {source_name for source_name, _ in rejected_rows}
    duplicates_by = collections.Counter()
    duplicates_in_split = collections.Counter()
    extra_copies = 0
    for group in manifest.duplicates.get("list", []):
        for member in group["sources"]:
            if member in rejected_sources:
                continue  # a dropped copy: counted as rejected
            labels, given_split = items.get(member, (("?",), None))
            split = given_split or (group["splits"][0] if len(group["splits"]) == 1 else "?")
            duplicates_in_split[split] += 1
            for label in labels:
                duplicates_by[(split, label)] += 1
        extra_copies += len(group["sources"]) - 1
    rejected_by_class = collections.Counter()
    for source_name, _ in rejected_rows:
        labels = items[source_name][0] if source_name in items else ("(no label)",)
        for label in labels:
            rejected_by_class[label] += 1

    rows = []
    for split, info in manifest.splits.items():
        for name in manifest.class_names:
            rows.append([split, name, info.class_counts.get(name, 0), "",
                         duplicates_by.get((split, name), 0)])
        rows.append([split, "(all)", info.count, "", duplicates_in_split.get(split, 0)])
    for label, count in sorted(rejected_by_class.items()):
        rows.append(["(rejected)", label, "", count, ""])
    counts = manifest.counts
    rows.append(["total", "", counts.get("written", 0), counts.get("rejected", 0),
                 sum(duplicates_in_split.values())])
    lines = [
        f"Wrote {out_dir}: {counts.get('written', 0)} of {counts.get('seen', 0)} items "
        f"({manifest.task}, {manifest.channels}ch {manifest.dtype}, {manifest.encoding})",
        "",
        format_table(["split", "class", "written", "rejected", "duplicates"], rows),
    ]
    reasons = counts.get("rejected_reasons", {})
    if reasons:
        lines += ["", format_table(
            ["rejected because", "count"],
            [[_shorten(reason, 70), count] for reason, count in reasons.items()],
            align=["<", ">"],
        )]
        lines.append(f"(every rejected item is listed in {join(out_dir, schema.REJECTED_NAME)})")
    groups = manifest.duplicates.get("groups", 0)
    if groups:
        advice = (f"{manifest.duplicates.get('dropped', 0)} copies dropped"
                  if manifest.duplicates.get("dropped")
                  else "kept; --drop-duplicates removes the extra copies")
        lines += ["", f"Exact duplicates: {groups} groups, {manifest.duplicates.get('items', 0)} "
                  f"images, {extra_copies} extra copies ({advice}). "
                  f"Groups straddling splits: {manifest.duplicates.get('straddling', 0)}."]
    conflicts = manifest.duplicates.get("label_conflicts", 0)
    if conflicts:
        lines += ["", f"Identical images under different labels: {conflicts} groups, every copy "
                  "rejected (see rejected.csv); fix the labels and convert again."]
    straddling_patients = (manifest.conversion or {}).get("patients_in_several_splits", 0)
    if straddling_patients:
        lines += ["", f"Patients in several given splits: {straddling_patients} (the splits "
                  "were kept as given; a patient-level evaluation needs them disjoint)."]
    return "\n".join(lines)


def _shorten(text, width):
    return text if len(text) <= width else text[: width - 3] + "..."


def manifest_table(manifest):
    """A readable rendering of a `Manifest`."""
    size = (f"{manifest.height}x{manifest.width}" if manifest.height else "mixed sizes")
    source = manifest.source or {}
    lines = [
        f"dataset   {getattr(manifest, 'directory', '')}",
        f"task      {manifest.task}: {', '.join(manifest.class_names)}",
        f"images    {size}x{manifest.channels} {manifest.dtype}, {manifest.encoding} "
        f"records, compression {manifest.compression}",
        f"source    {source.get('format', '?')} "
        + " ".join(f"{k}={v}" for k, v in source.items()
                   if k in ("root", "csv", "path", "name", "num_images", "seed")),
        "",
    ]
    rows = []
    for split, info in manifest.splits.items():
        size_bytes = sum(shard.bytes for shard in info.shards)
        for name in manifest.class_names:
            rows.append([split, name, info.class_counts.get(name, 0), "", ""])
        rows.append([split, "(all)", info.count, len(info.shards), _human_bytes(size_bytes)])
    lines.append(format_table(["split", "class", "records", "shards", "bytes"], rows))
    counts = manifest.counts or {}
    if counts:
        lines += ["", f"seen {counts.get('seen')}  written {counts.get('written')}  "
                  f"rejected {counts.get('rejected')}"]
        for reason, count in (counts.get("rejected_reasons") or {}).items():
            lines.append(f"  {count:>6}  {_shorten(reason, 90)}")
    duplicates = manifest.duplicates or {}
    if duplicates.get("groups"):
        lines.append(
            f"duplicates {duplicates['groups']} groups, {duplicates.get('items')} images, "
            f"{duplicates.get('dropped', 0)} dropped, {duplicates.get('straddling', 0)} "
            "straddling splits"
        )
    return "\n".join(lines)


def _human_bytes(count):
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)
