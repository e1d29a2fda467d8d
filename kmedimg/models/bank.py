"""The local weights bank: named backbones from finished runs, usable as `weights: bank:NAME`.

Each entry is a directory `<bank>/<NAME>/` holding `backbone.keras` (the bare
registered backbone model, loadable by `kmedimg.models.pretrained` like any saved
`.keras`) and `entry.json` (backbone, input shape, channels, source run, dataset
manifest fingerprint, sha256 of `backbone.keras`). The bank is
`$KMEDIMG_HOME/weights`, else `~/.kmedimg/weights`.

A recipe names an entry as `model.weights: bank:NAME` (the `bank:` prefix keeps a
bank name from ever being read as a relative path).
"""

import hashlib
import json
import os
import re

import keras

PREFIX = "bank:"
BACKBONE_FILE = "backbone.keras"
ENTRY_FILE = "entry.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def bank_dir():
    """`$KMEDIMG_HOME/weights`, else `~/.kmedimg/weights`."""
    home = os.environ.get("KMEDIMG_HOME") or os.path.join(os.path.expanduser("~"), ".kmedimg")
    return os.path.join(home, "weights")


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def list_entries():
    """Every bank entry's record (its `entry.json` plus `name`), sorted by name."""
    root = bank_dir()
    if not os.path.isdir(root):
        return []
    entries = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name, ENTRY_FILE)
        if os.path.exists(path):
            with open(path) as handle:
                entries.append(dict(json.load(handle), name=name))
    return entries


def entry_path(name):
    """The `backbone.keras` of bank entry `name` (`bank:` prefix optional).

    Raises:
        ValueError: for an unknown name, listing the bank's entries.
    """
    name = name[len(PREFIX):] if name.startswith(PREFIX) else name
    path = os.path.join(bank_dir(), name, BACKBONE_FILE)
    if not os.path.exists(path):
        known = [entry["name"] for entry in list_entries()]
        raise ValueError(
            f"No weights bank entry {name!r} in {bank_dir()}; entries: {known}. Add one with "
            f"`kmedimg weights add RUN_DIR --name {name}`. Received: weights={PREFIX + name!r}"
        )
    return path


def verify_entry(entry):
    """`(ok, message)`: the entry's file hash matches and the backbone loads."""
    path = os.path.join(bank_dir(), entry["name"], BACKBONE_FILE)
    if not os.path.exists(path):
        return False, f"missing {path}"
    actual = _sha256(path)
    if actual != entry.get("sha256"):
        return False, f"sha256 {actual} differs from the recorded {entry.get('sha256')}"
    try:
        keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - report, do not crash the listing
        return False, f"does not load: {str(error).splitlines()[0] if str(error) else error!r}"
    return True, "sha256 ok, loads"


def add_entry(backbone, name, source_run, fingerprint=""):
    """Stores a registered backbone model as bank entry `name` and returns its record.

    Raises:
        ValueError: for a malformed or already used name.
    """
    if not _NAME.match(str(name)):
        raise ValueError(
            "Argument `--name` must be letters, digits, `_`, `.` or `-` (no `/`). "
            f"Received: name={name!r}"
        )
    target = os.path.join(bank_dir(), name)
    if os.path.exists(target):
        raise ValueError(
            f"The weights bank already has an entry {name!r} ({target}); choose another name. "
            f"Received: name={name!r}"
        )
    os.makedirs(target)
    path = os.path.join(target, BACKBONE_FILE)
    backbone.save(path)
    shape = tuple(int(v) for v in backbone.input.shape[1:])
    record = {
        "backbone": backbone.name, "input_shape": list(shape), "channels": shape[-1],
        "source_run": source_run, "dataset_fingerprint": fingerprint, "sha256": _sha256(path),
    }
    with open(os.path.join(target, ENTRY_FILE), "w") as handle:
        json.dump(record, handle, indent=2)
    return dict(record, name=name)
