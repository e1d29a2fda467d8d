"""`kmedimg convert SRC OUT`: any source -> sharded TFRecords + dataset.json + rejected.csv.

Argument parsing and printing only: `kmedimg.data.conversion.convert_source` does the
work and `kmedimg.data.summary.conversion_summary` the closing table. Each format's
flags are one argument group below; which constructor parameter each flag sets is
`kmedimg.data.conversion.FORMAT_OPTIONS` (a flag of another format is an error).
"""

from kmedimg.core.vocabulary import TASKS
from kmedimg.data.conversion import FORMAT_OPTIONS, convert_source
from kmedimg.data.sources import list_sources
from kmedimg.data.summary import conversion_summary


def _comma_list(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def _folder_flags(parser):
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


def _csv_flags(parser):
    group = parser.add_argument_group("CSV sources (path,label[,patient_id][,split])")
    group.add_argument("--root", default=None, help="folder the CSV paths are relative to")
    group.add_argument("--task", choices=TASKS, default=None,
                       help="override the task inferred from the labels")
    group.add_argument(
        "--label-separator", default=None, help="separator of multi-label cells (default |)"
    )
    group.add_argument(
        "--ignore-extra-columns", action="store_true", default=None,
        help="accept (and skip) columns other than path,label,patient_id,split",
    )


def _npz_flags(parser):
    group = parser.add_argument_group("MedMNIST .npz sources")
    group.add_argument(
        "--splits", type=_comma_list, default=None,
        help="comma-separated splits to read from the file (default: all present)",
    )


def _tfds_flags(parser):
    group = parser.add_argument_group("TFDS sources (tfds:NAME; needs kmedimg[tfds])")
    group.add_argument("--tfds-data-dir", default=None, help="TFDS data directory")
    group.add_argument(
        "--tfds-download", action="store_true", default=None,
        help="download and prepare the dataset if missing (never done otherwise)",
    )
    group.add_argument("--image-key", default=None, help="image feature (default image)")
    group.add_argument("--label-key", default=None, help="label feature (default label)")


def _synthetic_flags(parser):
    group = parser.add_argument_group("synthetic phantoms (SRC = synthetic:N)")
    group.add_argument(
        "--opacity-fraction", type=float, default=None,
        help="share of images with a focal opacity (default 0.5)",
    )


def _medical_flags(parser):
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
        help="file with the secret salt of patient keys and ids (DICOM, NIfTI, CSV patient_id), "
        "created if missing; must be "
        "outside OUT (default ~/.kmedimg/patient_salt)",
    )
    group.add_argument("--keep-filenames", action="store_true", default=None,
                       help="keep relative paths as item names (file names may hold PHI)")
    group.add_argument("--workers", type=int, default=None,
                       help="decoding processes (default: all CPUs; 1 = no pool)")
    group.add_argument("--frames", choices=("first", "middle", "all"), default=None,
                       help="DICOM multi-frame files: which frames become images (default first)")
    group.add_argument(
        "--dicom-decoder", choices=("pydicom", "tfio"), default=None,
        help="DICOM pixel decoder: pydicom (default) or tfio (tensorflow-io; loads only "
        "with TensorFlow 2.16; files it cannot decode exactly fall back to pydicom)",
    )
    group = parser.add_argument_group("NIfTI sources (also: the DICOM and NIfTI flags above)")
    group.add_argument("--axis", choices=("axial", "coronal", "sagittal"), default=None,
                       help="slice axis of the RAS+ volume (default axial)")
    group.add_argument("--slices", default=None,
                       help="middle, all, or N evenly spaced slices per volume (default middle)")


_FORMAT_FLAGS = (_folder_flags, _csv_flags, _npz_flags, _tfds_flags, _synthetic_flags,
                 _medical_flags)


def add_parser(subparsers):
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
                        help="replace the dataset in OUT, or write into a non-empty OUT "
                        "(other files are kept; the old dataset stays until the new one is "
                        "complete)")
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
    for add_flags in _FORMAT_FLAGS:
        add_flags(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args):
    """Handler of `kmedimg convert`; returns the exit code."""
    names = {"dtype", "class_names"}.union(*FORMAT_OPTIONS.values())
    options = {name: getattr(args, name, None) for name in sorted(names)}
    conversion = convert_source(
        args.src, args.out, format=args.format, options=options,
        channels=args.channels, progress=not args.no_progress, command="kmedimg convert",
        encoding=args.encoding, compression=args.compression, num_shards=args.shards,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        seed=args.seed, drop_duplicates=args.drop_duplicates,
        image_size=args.image_size, overwrite=args.overwrite,
    )
    print(conversion_summary(conversion.manifest, args.out, conversion.items))
    return 0
