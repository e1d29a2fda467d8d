"""The weights bank applications: list, import, verify and add (`kmedimg weights ...`).

ImageNet files are those `keras.applications` downloads (read from Keras itself,
`kmedimg.models.imagenet_files`); bank entries are backbones of finished kmedimg
runs (`kmedimg.models.bank`), named in a recipe as `model.weights: bank:NAME`.
"""

import hashlib
import os

import keras

from kmedimg.core.run_directory import RunDirectory
from kmedimg.models import bank, get_backbone, get_backbone_model, list_backbones
from kmedimg.models import imagenet_files


def _records(backbone=None):
    names = [backbone] if backbone else list_backbones()
    return [get_backbone(name) for name in names if get_backbone(name).has_imagenet]


def imagenet_rows(backbone=None):
    """One dict per (backbone, ImageNet file): file name, URL, hash, cached.

    A backbone whose file Keras does not name gets `file_name=None`.
    """
    rows = []
    for record in _records(backbone):
        files = imagenet_files.load_file_names(record)
        if not files:
            rows.append({"backbone": record.name, "file_name": None, "url": "cannot be derived",
                         "file_hash": None, "cached": False})
        for info, size in files.values():
            rows.append(dict(info, backbone=record.name, size=size))
    return rows


def import_file(path, backbone=None):
    """Checks a brought-in ImageNet file and copies it into the Keras cache.

    The file is matched by its name to the file Keras expects for a registered
    backbone, then checked against Keras' hash, or (no hash published) loaded
    into the backbone built with `weights=None`.

    Returns:
        `(destination, backbone name, "hash" | "architecture")`.

    Raises:
        ValueError: for an unknown file name, a hash mismatch (both hashes named)
            or an architecture mismatch (the first one named).
    """
    if not os.path.isfile(path):
        raise ValueError(f"Argument `FILE` must be an existing file. Received: file={path!r}")
    name = os.path.basename(path)
    for record in _records(backbone):
        files = imagenet_files.load_file_names(record)
        if name in files:
            info, size = files[name]
            how = imagenet_files.import_imagenet_file(record, info, path, size)
            return info["path"], record.name, how
    raise ValueError(
        f"{name!r} is not a file Keras expects for "
        f"{'backbone ' + repr(backbone) if backbone else 'any registered backbone'}; keep the "
        "name it was downloaded under (see `kmedimg weights list`). "
        f"Received: file={path!r}"
    )


def verify():
    """`[(kind, name, ok, message)]` for every cached ImageNet file and bank entry."""
    results = []
    cache = imagenet_files.keras_cache_dir()
    # Deriving every backbone's file name builds each model: skip it for an empty cache.
    rows = imagenet_rows() if os.path.isdir(cache) and os.listdir(cache) else []
    for row in rows:
        if not row.get("cached"):
            continue
        record = get_backbone(row["backbone"])
        try:
            how = imagenet_files.check_imagenet_file(record, row, row["path"], row["size"])
            results.append(("imagenet", row["file_name"], True, f"{how} ok"))
        except ValueError as error:
            results.append(("imagenet", row["file_name"], False, str(error)))
    for entry in bank.list_entries():
        ok, message = bank.verify_entry(entry)
        results.append(("bank", entry["name"], ok, message))
    return results


def _fingerprint(config):
    path = (config.get("data") or {}).get("path")
    manifest = os.path.join(str(path), "dataset.json") if path else ""
    if manifest and os.path.exists(manifest):
        with open(manifest, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    return ""


def add_run(run_dir, name):
    """Stores the backbone of a finished run as bank entry `name`; returns its record.

    Raises:
        ValueError: for a directory without `model.keras` or a taken name.
    """
    directory = RunDirectory(run_dir)
    model_path = os.path.join(os.fspath(run_dir), "model.keras")
    if not os.path.exists(model_path):
        raise ValueError(
            f"{run_dir!r} is not a finished run directory (no model.keras); train it first. "
            f"Received: run_dir={run_dir!r}"
        )
    config = directory.read_config() if directory.exists(RunDirectory.CONFIG) else {}
    model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    return bank.add_entry(get_backbone_model(model), name, os.path.abspath(run_dir),
                          _fingerprint(config))
