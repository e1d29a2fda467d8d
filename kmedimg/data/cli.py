"""`kmedimg convert` (any source -> TFRecords) and `kmedimg inspect` (print a manifest).

Format-specific flags: each format has one function, registered with
`@source_arguments("name")`, that adds its flags to the convert parser and returns
`{dest: constructor_parameter}`. A flag given for another format than the one being
converted is an error (nothing is ignored silently). To add a format's flags (DICOM,
NIfTI, ...), add one such function below.
"""

import collections
import inspect
import os
import sys

SOURCE_ARGUMENTS = {}


def source_arguments(format_name):
    """Registers `function(parser) -> {dest: parameter}` adding a format's convert flags.

    Raises:
        ValueError: when `format_name` already has a function.
    """

    def decorator(function):
        if format_name in SOURCE_ARGUMENTS:
            raise ValueError(
                f"Convert flags for format {format_name!r} are already registered by "
                f"{SOURCE_ARGUMENTS[format_name].__name__}. Received: {function.__name__}"
            )
        SOURCE_ARGUMENTS[format_name] = function
        return function

    return decorator


def _comma_list(text):
    return [part.strip() for part in text.split(",") if part.strip()]


# ---- per-format flags -----------------------------------------------------------------


@source_arguments("folder")
def _folder_arguments(parser):
    group = parser.add_argument_group("folder sources (root/<class>/<images>)")
    group.add_argument(
        "--classes", type=_comma_list, default=None,
        help="comma-separated class folders to read, in label order (default: all, sorted)",
    )
    group.add_argument(
        "--grey-tolerance", type=float, default=None,
        help="mean channel deviation (0..255) up to which colour counts as grey for "
        "--channels auto (default 8)",
    )
    return {"classes": "classes", "grey_tolerance": "grey_tolerance"}


@source_arguments("csv")
def _csv_arguments(parser):
    group = parser.add_argument_group("CSV sources (path,label[,patient_id][,split])")
    group.add_argument("--root", default=None, help="folder the CSV paths are relative to")
    group.add_argument(
        "--task", choices=("binary", "multiclass", "multilabel"), default=None,
        help="override the task inferred from the labels",
    )
    group.add_argument(
        "--label-separator", default=None, help="separator of multi-label cells (default |)"
    )
    group.add_argument(
        "--ignore-extra-columns", action="store_true", default=None,
        help="accept (and skip) columns other than path,label,patient_id,split",
    )
    return {
        "root": "root",
        "task": "task",
        "label_separator": "label_separator",
        "ignore_extra_columns": "ignore_extra_columns",
    }


@source_arguments("npz")
def _npz_arguments(parser):
    group = parser.add_argument_group("MedMNIST .npz sources")
    group.add_argument(
        "--splits", type=_comma_list, default=None,
        help="comma-separated splits to read from the file (default: all present)",
    )
    return {"splits": "splits"}


@source_arguments("tfds")
def _tfds_arguments(parser):
    group = parser.add_argument_group("TFDS sources (tfds:NAME; needs kmedimg[tfds])")
    group.add_argument("--tfds-data-dir", default=None, help="TFDS data directory")
    group.add_argument(
        "--tfds-download", action="store_true", default=None,
        help="download and prepare the dataset if missing (never done otherwise)",
    )
    group.add_argument("--image-key", default=None, help="image feature (default image)")
    group.add_argument("--label-key", default=None, help="label feature (default label)")
    return {
        "tfds_data_dir": "data_dir",
        "tfds_download": "download",
        "image_key": "image_key",
        "label_key": "label_key",
    }


@source_arguments("synthetic")
def _synthetic_arguments(parser):
    group = parser.add_argument_group("synthetic phantoms (SRC = synthetic:N)")
    group.add_argument(
        "--opacity-fraction", type=float, default=None,
        help="share of images with a focal opacity (default 0.5)",
    )
    return {"opacity_fraction": "opacity_fraction"}


@source_arguments("dicom")
def _dicom_arguments(parser):
    # Flags shared with --format nifti are defined here once (argparse allows one
    # definition per flag); _nifti_arguments maps them too.
    group = parser.add_argument_group(
        "DICOM and NIfTI sources (no PHI leaves the importer; see kmedimg.data.sources.dicom)"
    )
    group.add_argument(
        "--labels-csv", default=None,
        help="CSV with a path (or, for DICOM, StudyInstanceUID / SOPInstanceUID) column and "
        "a label column; default: the class folder under SRC",
    )
    group.add_argument(
        "--window", default=None,
        help="store 8-bit windowed images: 'file' (the file's VOI LUT / window; NIfTI: "
        "cal_min/cal_max), a preset (lung, mediastinum, bone, brain, subdural, stroke, "
        "abdomen, liver, ...) or CENTER,WIDTH (write --window=-600,1500); default: full "
        "bit depth as uint16",
    )
    group.add_argument("--offset", type=int, default=None,
                       help="uint16 storage offset: stored = real / scale + offset (default 1024)")
    group.add_argument("--scale", type=float, default=None,
                       help="uint16 storage scale (DICOM default 1; NIfTI default per volume)")
    group.add_argument(
        "--salt-file", default=None,
        help="file with the secret salt of patient keys and ids, created if missing; must be "
        "outside OUT (default ~/.kmedimg/patient_salt)",
    )
    group.add_argument("--keep-filenames", action="store_true", default=None,
                       help="keep relative paths as item names (file names may hold PHI)")
    group.add_argument("--workers", type=int, default=None,
                       help="decoding processes (default: all CPUs; 1 = no pool)")
    group.add_argument("--frames", choices=("first", "middle", "all"), default=None,
                       help="DICOM multi-frame files: which frames become images (default first)")
    return {
        "labels_csv": "labels", "window": "window", "offset": "offset", "scale": "scale",
        "salt_file": "salt_file", "keep_filenames": "keep_filenames", "workers": "workers",
        "frames": "frames", "task": "task",
    }


@source_arguments("nifti")
def _nifti_arguments(parser):
    group = parser.add_argument_group("NIfTI sources (also: the DICOM and NIfTI flags above)")
    group.add_argument("--axis", choices=("axial", "coronal", "sagittal"), default=None,
                       help="slice axis of the RAS+ volume (default axial)")
    group.add_argument("--slices", default=None,
                       help="middle, all, or N evenly spaced slices per volume (default middle)")
    return {
        "axis": "axis", "slices": "slices", "labels_csv": "labels", "window": "window",
        "offset": "offset", "scale": "scale", "salt_file": "salt_file",
        "keep_filenames": "keep_filenames", "workers": "workers", "task": "task",
    }


# Flags several formats share; passed to a source only when its constructor takes them.
_COMMON_SOURCE_FLAGS = {"dtype": "dtype", "class_names": "class_names"}


# ---- convert ----------------------------------------------------------------------------


def add_convert_command(subparsers):
    """Adds `kmedimg convert SRC OUT ...`."""
    parser = subparsers.add_parser(
        "convert",
        help="convert images (folder, CSV, .npz, tfds:NAME, synthetic:N, ...) to TFRecords",
        description=(
            "Convert a source to sharded TFRecords + dataset.json + rejected.csv. "
            "SRC is a class-per-folder directory, a .csv, a MedMNIST .npz, tfds:NAME or "
            "synthetic:N; the format is detected unless --format is given."
        ),
    )
    parser.add_argument("src", metavar="SRC", help="the source")
    parser.add_argument("out", metavar="OUT", help="output directory (local or gs://)")
    from kmedimg.data.sources import list_sources

    parser.add_argument("--format", choices=list_sources(), default=None,
                        help="source format (default: detected from SRC)")
    parser.add_argument("--shards", type=int, default=None,
                        help="shards per split (default: ~128 MB each, at least 4)")
    parser.add_argument("--encoding", choices=("raw", "png"), default="raw",
                        help="image storage: raw tensor bytes (fastest) or PNG (default raw)")
    parser.add_argument("--compression", choices=("NONE", "ZLIB", "GZIP"), default="NONE",
                        help="TFRecord compression (default NONE)")
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="share for val when the source gives no split (default 0)")
    parser.add_argument("--test-fraction", type=float, default=0.0,
                        help="share for test when the source gives no split (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="resize every image to N x N at conversion (default: keep)")
    parser.add_argument("--drop-duplicates", action="store_true",
                        help="reject all but the first copy of exact-duplicate images")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset in OUT")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    common = parser.add_argument_group("image options (sources that read image files)")
    common.add_argument(
        "--channels", choices=("auto", "1", "3"), default=None,
        help="1 = grey, 3 = RGB, auto = grey when every image is grey-ish (image files); "
        "for array sources 3 promotes grey to RGB",
    )
    common.add_argument("--dtype", choices=("auto", "uint8", "uint16"), default=None,
                        help="stored bit depth (default auto)")
    common.add_argument("--class-names", type=_comma_list, default=None,
                        help="comma-separated class names in label order")
    for function in SOURCE_ARGUMENTS.values():
        function(parser)
    parser.set_defaults(handler=run_convert)
    return parser


def _given(args, dest):
    return getattr(args, dest, None) is not None


def source_options(args, format_name, source_class):
    """Keyword arguments for `source_class` from the parsed flags.

    Raises:
        ValueError: a flag of another format, or one the format does not take, was given.
    """
    accepted = set(inspect.signature(source_class.__init__).parameters)
    own = SOURCE_ARGUMENTS[format_name](_Collector()) if format_name in SOURCE_ARGUMENTS else {}
    options = {}
    for other, function in SOURCE_ARGUMENTS.items():
        if other == format_name:
            continue
        for dest in function(_Collector()):
            if _given(args, dest) and dest not in own:
                raise ValueError(
                    f"--{dest.replace('_', '-')} applies to --format {other}, not "
                    f"{format_name}. Received: --{dest.replace('_', '-')}={getattr(args, dest)!r}"
                )
    for dest, parameter in {**_COMMON_SOURCE_FLAGS, **own}.items():
        if not _given(args, dest):
            continue
        if parameter not in accepted:
            raise ValueError(
                f"--{dest.replace('_', '-')} does not apply to --format {format_name}. "
                f"Received: --{dest.replace('_', '-')}={getattr(args, dest)!r}"
            )
        options[parameter] = getattr(args, dest)
    if args.channels is not None and "channels" in accepted:
        options["channels"] = args.channels if args.channels == "auto" else int(args.channels)
    if format_name == "synthetic" and args.image_size is not None:
        options["image_size"] = args.image_size  # draw at the size asked, no resampling
    return options


class _Collector:
    """Stands in for a parser to learn which dests a format's flag function declares."""

    def add_argument_group(self, *args, **kwargs):
        return self

    def add_argument(self, *args, **kwargs):
        return None


class _RecordingSource:
    """Passes a source through to the writer, remembering each item's labels and split."""

    def __init__(self, source, progress=False):
        self.source = source
        self.task = source.task
        self.class_names = source.class_names
        self.items = {}  # source name -> (labels, split given by the source)
        self.progress = progress
        self.passes = 0

    def __iter__(self):
        from kmedimg.data.sources import Item

        self.passes += 1
        entries = iter(self.source)
        bar = None
        if self.progress and self.passes == 1:
            # The writer's first pass reads and checks everything; the second writes
            # (and draws its own bar).
            from tqdm.auto import tqdm

            total = len(self.source) if hasattr(self.source, "__len__") else None
            bar = tqdm(entries, total=total, unit="img", desc="reading", file=sys.stderr)
            entries = iter(bar)
        try:
            for entry in entries:
                if isinstance(entry, Item):
                    self.items[entry.source] = (tuple(entry.labels), entry.split)
                yield entry
        finally:
            if bar is not None:
                bar.close()

    def describe(self):
        return self.source.describe()


class _TqdmProgress:
    def __init__(self):
        self.bar = None

    def __call__(self, done, total):
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="img", desc="writing", file=sys.stderr)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_convert(args):
    """Handler of `kmedimg convert`; returns the exit code."""
    from kmedimg.data.sources import detect_format, get_source_class, open_source
    from kmedimg.data.writer import write_dataset

    format_name = args.format or detect_format(args.src)
    source_class = get_source_class(format_name)
    options = source_options(args, format_name, source_class)
    check_options = getattr(source_class, "check_options", None)
    if check_options is not None:  # e.g. the DICOM salt must live outside OUT
        check_options(options, args.out)
    source = _RecordingSource(
        open_source(args.src, format=format_name, **options), progress=not args.no_progress
    )
    writer_channels = None
    if args.channels in ("1", "3"):
        writer_channels = int(args.channels)
    progress = False if args.no_progress else _TqdmProgress()
    conversion_args = {
        "command": "kmedimg convert",
        "src": args.src,
        "format": format_name,
        "source_options": {k: v for k, v in options.items()},
    }
    try:
        manifest = write_dataset(
            source,
            args.out,
            encoding=args.encoding,
            compression=args.compression,
            num_shards=args.shards,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
            drop_duplicates=args.drop_duplicates,
            image_size=args.image_size,
            progress=progress,
            conversion_args=conversion_args,
            channels=writer_channels,
            overwrite=args.overwrite,
        )
    finally:
        if progress:
            progress.close()
    print(conversion_summary(manifest, args.out, source.items))
    return 0


# ---- tables -----------------------------------------------------------------------------


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


def _read_rejected(directory):
    import csv
    import io

    import tensorflow as tf

    from kmedimg.data import schema

    path = directory.rstrip("/") + "/" + schema.REJECTED_NAME
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
    rejected_rows = _read_rejected(out_dir)
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
        lines.append(f"(every rejected item is listed in {os.path.join(out_dir, 'rejected.csv')})")
    groups = manifest.duplicates.get("groups", 0)
    if groups:
        advice = (f"{manifest.duplicates.get('dropped', 0)} copies dropped"
                  if manifest.duplicates.get("dropped")
                  else "kept; --drop-duplicates removes the extra copies")
        lines += ["", f"Exact duplicates: {groups} groups, {manifest.duplicates.get('items', 0)} "
                  f"images, {extra_copies} extra copies ({advice}). "
                  f"Groups straddling splits: {manifest.duplicates.get('straddling', 0)}."]
    return "\n".join(lines)


def _shorten(text, width):
    return text if len(text) <= width else text[: width - 3] + "..."


# ---- inspect ----------------------------------------------------------------------------


def add_inspect_command(subparsers):
    """Adds `kmedimg inspect OUT`."""
    parser = subparsers.add_parser(
        "inspect", help="print a converted dataset's manifest as a table",
        description="Print dataset.json of a converted dataset as tables.",
    )
    parser.add_argument("path", metavar="OUT", help="dataset directory or dataset.json")
    parser.add_argument("--json", action="store_true", help="print the raw manifest JSON")
    parser.add_argument("--verify", action="store_true",
                        help="also recompute every shard's sha256 against the manifest")
    parser.set_defaults(handler=run_inspect)
    return parser


def run_inspect(args):
    """Handler of `kmedimg inspect`; returns the exit code."""
    from kmedimg.data import pipeline

    manifest = pipeline.read_manifest(args.path)
    if args.verify:
        pipeline.verify(manifest)
    if args.json:
        print(manifest.to_json(), end="")
        return 0
    print(manifest_table(manifest))
    if args.verify:
        print("\nAll shard checksums match the manifest.")
    return 0


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
