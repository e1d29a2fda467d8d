"""`kmedimg inspect OUT`: print a converted dataset's manifest as tables."""

from kmedimg.data.manifest_files import read_manifest, verify
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
    return 0
