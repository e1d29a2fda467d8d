"""Importers, one per source format; each yields `Item`s and `Rejected`s.

The registry is explicit: each format module below registers its class with
`@register_source("name")` (into `registry.SOURCES`, a `kmedimg.core.Registry`), and
this list of imports is the one place to add a format.
"""

from kmedimg.data.sources.base import Item, Rejected, Source
from kmedimg.data.sources.registry import (
    detect_format,
    get_source_class,
    list_sources,
    open_source,
    register_source,
)

# Format modules, imported for their @register_source classes.
from kmedimg.data.sources import folder  # noqa: E402,F401  "folder"
from kmedimg.data.sources import csv_source  # noqa: E402,F401  "csv"
from kmedimg.data.sources import npz  # noqa: E402,F401  "npz"
from kmedimg.data.sources import tfds  # noqa: E402,F401  "tfds"
from kmedimg.data.sources import synthetic  # noqa: E402,F401  "synthetic"
from kmedimg.data.sources import dicom  # noqa: E402,F401  "dicom"
from kmedimg.data.sources import nifti  # noqa: E402,F401  "nifti"

from kmedimg.data.sources.csv_source import CsvSource  # noqa: E402
from kmedimg.data.sources.dicom import DicomSource  # noqa: E402
from kmedimg.data.sources.folder import FolderSource  # noqa: E402
from kmedimg.data.sources.nifti import NiftiSource  # noqa: E402
from kmedimg.data.sources.npz import NpzSource  # noqa: E402
from kmedimg.data.sources.tfds import TfdsSource  # noqa: E402
