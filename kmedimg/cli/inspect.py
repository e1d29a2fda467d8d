"""`kmedimg inspect OUT`: print a converted dataset's manifest as tables.

`--show N` also writes a PNG grid of N training images per class as the model sees
them (decoded, scaled, augmented).
"""

import os

from kmedimg.config import load_config
from kmedimg.data.manifest_files import read_manifest, verify
from kmedimg.data.preview import preview_images, write_preview
from kmedimg.data.summary import manifest_table


def add_parser(subparsers):
    """Adds `kmedimg inspect OUT`."""
    parser = subparsers.add_parser(
        "inspect", help="print a converted dataset's manifest as a table",
        description="Print dataset.json of a converted dataset as tables.",
    )
    parser.add_argument("path", metavar="OUT", help="dataset directory or dataset.json")
    parser.add_argument("--json", action="store_true", help="print the raw manifest JSON")
    parser.add_argument("--verify", action="store_true",
                        help="also recompute every shard's sha256 against the manifest")
    parser.add_argument("--show", type=int, metavar="N",
                        help="write a PNG grid of N augmented training images per class")
    parser.add_argument("--recipe", metavar="FILE",
                        help="with --show: take image size, channels and augmentation from "
                        "this recipe (default: the stored size, default augmentation)")
    parser.add_argument("--split", help="with --show: the split to show. Defaults to train")
    parser.add_argument("--out", metavar="PNG",
                        help="with --show: the grid's path. Defaults to "
                        "./<dataset>-preview.png")
    parser.set_defaults(handler=run)
    return parser


def run(args):
    """Handler of `kmedimg inspect`; returns the exit code."""
    manifest = read_manifest(args.path)
    if args.verify:
        verify(manifest)
    if args.json:
        print(manifest.to_json(), end="")
        return 0
    print(manifest_table(manifest))
    if args.verify:
        print("\nAll shard checksums match the manifest.")
    if args.show is not None:
        _show(args, manifest)
    return 0


def _show(args, manifest):
    """Writes the `--show` grid and says where."""
    settings = {}
    if args.recipe:
        config = load_config(args.recipe)
        settings = {"image_size": config.data.image_size, "channels": config.data.channels,
                    "augmentation": config.model.augmentation,
                    "pixel_dtype": config.model.input_dtype}
    name = os.path.basename(os.path.normpath(manifest.directory)) or "dataset"
    out = args.out or f"{name}-preview.png"
    preview = preview_images(manifest, args.show, split=args.split, **settings)
    write_preview(preview, out)
    counts = ", ".join(f"{class_name}: {0 if images is None else len(images)}"
                       for class_name, images in zip(preview.class_names, preview.augmented))
    print(f"\npreview ({counts} images; {preview.augmentation}) written to "
          f"{os.path.abspath(out) if '://' not in out else out}")
