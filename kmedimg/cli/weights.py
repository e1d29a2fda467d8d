"""`kmedimg weights`: the ImageNet files Keras expects and the local weights bank."""

from kmedimg.models import bank
from kmedimg.runs import weights as weights_lib


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "weights",
        help="ImageNet weight files and the local weights bank (offline transfer)",
        description="List, import and verify the ImageNet files Keras expects, and add a "
        "finished run's backbone to the local bank (use it as `model.weights: bank:NAME`).",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list",
                                 help="expected ImageNet files, cache state, bank entries")
    listing.add_argument("--backbone", default=None, help="only this backbone")
    importing = actions.add_parser("import",
                                   help="check a brought-in file, copy it to the Keras cache")
    importing.add_argument("file")
    importing.add_argument("--backbone", default=None, help="only match this backbone's files")
    actions.add_parser("verify", help="re-check cached ImageNet files and bank entries")
    adding = actions.add_parser("add", help="store a finished run's backbone in the bank")
    adding.add_argument("run_dir")
    adding.add_argument("--name", required=True)
    parser.set_defaults(handler=_run)


def _table(rows):
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
    return "\n".join(lines)


def _list(backbone):
    rows = [("backbone", "file", "cached", "hash", "url")]
    for row in weights_lib.imagenet_rows(backbone):
        rows.append((row["backbone"], row["file_name"] or "-", "yes" if row["cached"] else "no",
                     row["file_hash"] or "none published", row["url"]))
    print(f"ImageNet files (Keras cache: {weights_lib.imagenet_files.keras_cache_dir()})")
    print(_table(rows))
    entries = bank.list_entries()
    print(f"\nWeights bank ({bank.bank_dir()}): {len(entries)} entries")
    if entries:
        table = [("name", "backbone", "input", "channels", "source run", "sha256")]
        for entry in entries:
            size = "x".join(str(v) for v in entry["input_shape"][:2])
            table.append((entry["name"], entry["backbone"], size, entry["channels"],
                          entry["source_run"], entry["sha256"]))
        print(_table(table))


def _run(args):
    if args.action == "list":
        _list(args.backbone)
        return 0
    if args.action == "import":
        path, backbone, how = weights_lib.import_file(args.file, args.backbone)
        print(f"imported {args.file} -> {path} ({backbone}; {how} checked)")
        return 0
    if args.action == "verify":
        results = weights_lib.verify()
        for kind, name, ok, message in results:
            print(f"{'ok  ' if ok else 'FAIL'} {kind:8} {name}: {message}")
        if not results:
            print("nothing to verify: no cached ImageNet file, no bank entry")
        return 0 if all(ok for _, _, ok, _ in results) else 1
    record = weights_lib.add_run(args.run_dir, args.name)
    print(f"added bank entry {record['name']!r} ({record['backbone']}, "
          f"{record['input_shape']}); use it as `model.weights: bank:{record['name']}`")
    return 0
