"""`convert_source`: open a source by spec and write it as a dataset (what `kmedimg convert` does).

The command line's per-format options are plain data here: `FORMAT_OPTIONS` maps
each format to `{option: constructor parameter}`, and `source_options` turns the
options a user gave into the keyword arguments of the format's class, refusing an
option of another format (nothing is ignored silently). `kmedimg.cli.convert`
defines the matching flags (option `salt_file` is the flag `--salt-file`).
"""

import dataclasses
import inspect
import sys

from kmedimg.data.sources import Item, detect_format, get_source_class, open_source
from kmedimg.data.paths import check_not_inside, check_output_directory
from kmedimg.data.writer import check_image_size, write_dataset

_MEDICAL_OPTIONS = {
    "labels_csv": "labels", "window": "window", "offset": "offset", "scale": "scale",
    "salt_file": "salt_file", "keep_filenames": "keep_filenames", "workers": "workers",
    "task": "task",
}

#: format -> {option: constructor parameter} of the options only that format takes.
FORMAT_OPTIONS = {
    "folder": {"classes": "classes", "grey_tolerance": "grey_tolerance"},
    "csv": {"root": "root", "task": "task", "label_separator": "label_separator",
            "ignore_extra_columns": "ignore_extra_columns", "salt_file": "salt_file"},
    "npz": {"splits": "splits"},
    "tfds": {"tfds_data_dir": "data_dir", "tfds_download": "download",
             "image_key": "image_key", "label_key": "label_key"},
    "synthetic": {"opacity_fraction": "opacity_fraction"},
    "dicom": {**_MEDICAL_OPTIONS, "frames": "frames", "dicom_decoder": "decoder"},
    "nifti": {**_MEDICAL_OPTIONS, "axis": "axis", "slices": "slices"},
}

#: Options several formats share; passed to a source only when its class takes them.
COMMON_OPTIONS = {"dtype": "dtype", "class_names": "class_names"}


def _flag(option):
    return "--" + option.replace("_", "-")


def source_options(given, format_name, source_class):
    """Keyword arguments for `source_class` from the options the user gave.

    Args:
        given: option -> value (None = not given), e.g. parsed command-line flags;
            may also hold `channels` ("auto", "1", "3") and `image_size`.
        format_name: the format being converted.
        source_class: its registered class.

    Raises:
        ValueError: an option of another format, or one the format does not take,
            was given.
    """
    accepted = set(inspect.signature(source_class.__init__).parameters)
    own = FORMAT_OPTIONS.get(format_name, {})
    for other, options in FORMAT_OPTIONS.items():
        if other == format_name:
            continue
        for option in options:
            if given.get(option) is not None and option not in own:
                raise ValueError(
                    f"{_flag(option)} applies to --format {other}, not "
                    f"{format_name}. Received: {_flag(option)}={given[option]!r}"
                )
    result = {}
    for option, parameter in {**COMMON_OPTIONS, **own}.items():
        if given.get(option) is None:
            continue
        if parameter not in accepted:
            raise ValueError(
                f"{_flag(option)} does not apply to --format {format_name}. "
                f"Received: {_flag(option)}={given[option]!r}"
            )
        result[parameter] = given[option]
    channels = given.get("channels")
    if channels is not None and "channels" in accepted:
        result["channels"] = channels if channels == "auto" else int(channels)
    if format_name == "synthetic" and given.get("image_size") is not None:
        result["image_size"] = given["image_size"]  # draw at the size asked, no resampling
    return result


class RecordingSource:
    """Passes a source through to the writer, remembering each item's labels and split.

    Args:
        source: the wrapped `Source`.
        progress: draw a "reading" bar (tqdm) during the first pass. Defaults to `False`.
    """

    def __init__(self, source, progress=False):
        self.source = source
        self.task = source.task
        self.class_names = source.class_names
        self.items = {}  # source name -> (labels, split given by the source)
        self.progress = progress
        self.passes = 0

    def __iter__(self):
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


class TqdmProgress:
    """A `write_dataset(progress=...)` callable drawing a "writing" bar (tqdm)."""

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


@dataclasses.dataclass
class Conversion:
    """What `convert_source` did.

    Attributes:
        manifest: the written `Manifest`.
        format: the source format.
        items: `{source name: (labels, split given by the source or None)}`.
    """

    manifest: object
    format: str
    items: dict


def convert_source(spec, out_dir, *, format=None, options=None, channels=None,
                   progress=True, command=None, **writer_kwargs):
    """Opens the source `spec` and writes it to `out_dir` (`kmedimg convert`).

    Args:
        spec: the source (a folder, a `.csv`, a `.npz`, `tfds:NAME`, `synthetic:N`, ...).
        out_dir: output directory (local or gs://).
        format: the source format; detected from `spec` when None. Defaults to `None`.
        options: option -> value for `source_options` (unset options None).
            Defaults to `None`.
        channels: `"auto"`, `"1"`, `"3"` or None; 1/3 also fix the writer's channel
            count. Defaults to `None`.
        progress: draw reading and writing bars on stderr. Defaults to `True`.
        command: the command recorded in the manifest. Defaults to `None`.
        **writer_kwargs: forwarded to `write_dataset` (encoding, num_shards, ...).

    Returns:
        A `Conversion`.

    Raises:
        ValueError: bad options, an `out_dir` that is a file, lies inside the source
            folder, or is not empty without `overwrite=True`.
        ConversionError: another conversion holds `out_dir`, or a write failed (the
            previous dataset in `out_dir` is kept).
    """
    # Output checks come first: they are cheap, and opening a source may not be.
    check_image_size(writer_kwargs.get("image_size"))
    check_output_directory(str(out_dir))
    check_not_inside(str(out_dir), str(spec))
    format_name = format or detect_format(spec)
    source_class = get_source_class(format_name)
    given = dict(options or {}, channels=channels,
                 image_size=writer_kwargs.get("image_size"))
    kwargs = source_options(given, format_name, source_class)
    check_options = getattr(source_class, "check_options", None)
    if check_options is not None:  # e.g. the DICOM salt must live outside OUT
        check_options(kwargs, out_dir)
    source = RecordingSource(open_source(spec, format=format_name, **kwargs),
                             progress=progress)
    bar = TqdmProgress() if progress else False
    conversion_args = {"command": command, "src": spec, "format": format_name,
                       "source_options": dict(kwargs)}
    if command is None:
        conversion_args.pop("command")
    redact = getattr(source.source, "redact_conversion_args", None)
    if redact is not None:  # DICOM/NIfTI: paths may hold PHI
        conversion_args = redact(conversion_args)
    try:
        manifest = write_dataset(
            source, out_dir, progress=bar, conversion_args=conversion_args,
            channels=int(channels) if channels in ("1", "3") else None, **writer_kwargs)
    finally:
        if bar:
            bar.close()
    return Conversion(manifest=manifest, format=format_name, items=source.items)
