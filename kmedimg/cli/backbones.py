"""`kmedimg backbones`: print the backbone registry as a table."""

from kmedimg.models import get_backbone, list_backbones

COLUMNS = (
    ("name", "backbone"),
    ("family", "family"),
    ("parameters", "params"),
    ("min_size", "min"),
    ("default_size", "default"),
    ("imagenet_sizes", "imagenet sizes"),
    ("preprocessing", "preprocess"),
    ("feature_width", "features"),
    ("blocks", "blocks"),
    ("last_conv_layer", "Grad-CAM layer"),
)


def format_table(family=None):
    """The registry as a fixed-width text table, one row per backbone, by family and size.

    Raises:
        ValueError: when `family` has no registered backbone.
    """
    rows = [get_backbone(name).describe() for name in list_backbones(family)]
    if not rows:
        families = sorted({get_backbone(name).family for name in list_backbones()})
        raise ValueError(f"No backbones of family {family!r}; families: {families}. Received: family={family!r}")
    rows.sort(key=lambda row: (row["family"], row["parameters"]))
    table = [[title for _, title in COLUMNS]]
    for row in rows:
        table.append([f"{row[key] / 1e6:.1f}M" if key == "parameters" else str(row[key]) for key, _ in COLUMNS])
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table)


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "backbones",
        help="list the registered backbones",
        description="List the registered backbones: size limits, ImageNet weights, "
        "preprocessing, blocks for freeze_depth and the Grad-CAM layer.",
    )
    parser.add_argument("--family", default=None, help="only this family (e.g. ResNet)")
    parser.set_defaults(handler=_run)


def _run(args):
    print(format_table(args.family))
    return 0
