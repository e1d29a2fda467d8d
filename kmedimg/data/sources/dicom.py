"""`DicomSource`: a folder of DICOM files -> kmedimg items, with no PHI leaving it.

Every regular file under the root is an input (DICOM files often have no extension);
each becomes one item per chosen frame or one `Rejected` line with the reason:

- `not a DICOM file`: no DICM preamble and a forced read finds no DICOM image.
  Files without the preamble that do hold a DICOM dataset (old ACR-NEMA style
  exports) are read with `force=True` and converted; their items say
  `forced_read: True` in `metadata`, and the missing transfer syntax is inferred
  from the encoding pydicom detected (`transfer_syntax_inferred: True`).
- `non-image object`: SEG, SR/KOS, RTSTRUCT/RT Plan/RT Dose, presentation states,
  waveforms, encapsulated documents, raw data, registrations, DICOMDIR.
- `no Pixel Data`, `truncated Pixel Data`, `cannot decode Pixel Data`,
  `unsupported transfer syntax` (no installed decoder), `unsupported photometric
  interpretation`, `bit depth`, `no label`, `no window in file`.

Pixel handling is documented in `kmedimg.data.sources.dicom_pixels` (modality
rescale to real units, MONOCHROME1 inversion, YBR/palette -> RGB, windows and presets,
full-depth uint16 storage as `HU + 1024` by default). The storage convention is
repeated in `describe()` (the manifest's `source` field) so it can be undone.

Privacy (see `kmedimg.data.sources.privacy`): records carry a salted hash of
PatientID, never names, IDs, dates, accession numbers, institutions or free text;
record ids, `Item.source` and rejected.csv use salted hashes of the relative path
unless `keep_filenames=True`; error reasons are scrubbed of paths and of the file's
text values.

Decoding runs in `workers` processes (an ordered, bounded map), so the output is
identical for any worker count.
"""

import collections
import logging
import os

import numpy as np

from kmedimg.data.sources import dicom_pixels, privacy
from kmedimg.data.sources.base import Item, Rejected
from kmedimg.data.sources.file_tree import walk_files
from kmedimg.data.sources.label_table import LabelTable
from kmedimg.data.sources.parallel import check_workers, ordered_map
from kmedimg.data.sources.registry import register_source

logger = logging.getLogger(__name__)

FRAME_CHOICES = ("first", "middle", "all")
DTYPE_CHOICES = (None, "auto", "uint16")
#: SOP Class UID prefixes of objects that are not images to classify.
NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.1.3.10",  # Media Storage Directory (DICOMDIR)
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, registrations, fiducials, SEG, surface SEG
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, key object selection
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms (ECG, audio, ...)
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF / CDA / STL
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose (a dose grid)
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.481.4",  # RT Beams Treatment Record
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT Plan
    "1.2.840.10008.5.1.4.1.1.481.6",  # RT Brachy Treatment Record
    "1.2.840.10008.5.1.4.1.1.481.7",  # RT Treatment Summary Record
    "1.2.840.10008.5.1.4.1.1.481.8",  # RT Ion Plan
    "1.2.840.10008.5.1.4.1.1.481.9",  # RT Ion Beams Treatment Record
    "1.2.840.10008.5.1.4.1.1.67",  # real world value mapping
    "1.2.840.10008.5.1.4.1.1.68.",  # surface objects
)
PHOTOMETRICS = (
    "MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT",
    "PALETTE COLOR",
)
#: Value representations whose values may be PHI; masked in any error reason.
PHI_VRS = ("PN", "DA", "DT", "TM", "LO", "SH", "LT", "ST", "UT", "AS", "UC", "UR", "AE")


def _is_non_image(sop_class):
    sop_class = str(sop_class)
    return any(
        sop_class == prefix.rstrip(".") or sop_class.startswith(prefix)
        for prefix in NON_IMAGE_SOP_PREFIXES
    )


def _uid_name(uid):
    from pydicom.uid import UID

    name = UID(str(uid)).name
    return name if name and name != str(uid) else "unknown SOP class"


def _phi_values(ds):
    """Text values of the dataset that may be PHI (used to scrub error reasons)."""
    from pydicom.multival import MultiValue

    values = []
    try:
        for element in ds.iterall():
            if element.VR not in PHI_VRS or element.value in (None, ""):
                continue
            value = element.value
            items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
            for item in items:
                values.append(str(item))
                if element.VR == "PN":
                    values.extend(part for part in str(item).replace("=", "^").split("^") if part)
    except Exception:  # noqa: BLE001 - a damaged dataset: mask what was collected
        pass
    return values


def _infer_transfer_syntax(ds):
    """Sets a missing file_meta Transfer Syntax UID from the encoding pydicom detected."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        return False
    if not isinstance(getattr(ds, "file_meta", None), FileMetaDataset):
        ds.file_meta = FileMetaDataset()
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    return True


def _frame_indices(count, frames):
    if frames == "all":
        return list(range(count))
    return [0] if frames == "first" else [count // 2]


def _decode(ds, indices, count):
    from pydicom.pixels import iter_pixels, pixel_array

    if len(indices) == count and count > 1:
        return [np.asarray(frame) for frame in iter_pixels(ds)]
    return [np.asarray(pixel_array(ds, index=index if count > 1 else None)) for index in indices]


def convert_file(job):
    """Worker: one file -> list of `Item`/`Rejected`. `job` = (path, relative, options)."""
    import pydicom

    path, relative, options = job
    salt = options["salt"]
    file_id = privacy.salted_hash(salt, "file", relative)
    name = relative if options["keep_filenames"] else file_id
    masks = [path, relative, os.path.basename(path)]
    stem = os.path.splitext(os.path.basename(path))[0]
    masks.append(stem)

    def rejected(reason, ds=None):
        extra = _phi_values(ds) if ds is not None else []
        reason = " ".join(privacy.scrub(reason, masks + extra).split())
        logger.debug("rejected %s: %s", name, reason)
        return [Rejected(name, reason)]

    with privacy.silenced("pydicom"):
        try:
            with open(path, "rb") as handle:
                head = handle.read(132)
        except OSError as error:
            return rejected(f"unreadable: {type(error).__name__}: {error.strerror}")
        has_preamble = len(head) == 132 and head[128:132] == b"DICM"
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception as error:  # noqa: BLE001 - pydicom raises many types
            if not has_preamble:
                return rejected(
                    "not a DICOM file: no DICM preamble, and a forced read failed "
                    f"({type(error).__name__})"
                )
            return rejected(f"unreadable DICOM: {type(error).__name__}: {error}")
        try:
            return _convert_dataset(ds, has_preamble, relative, name, options, rejected)
        except Exception as error:  # noqa: BLE001 - a damaged file must not stop the run
            return rejected(f"unreadable DICOM: {type(error).__name__}: {error}", ds)


def crashed_file(job):
    """The result for a file whose worker process died (e.g. a decoder segfault)."""
    path, relative, options = job
    name = relative if options["keep_filenames"] else privacy.salted_hash(
        options["salt"], "file", relative)
    return [Rejected(name, "decoder crashed: the worker process died while decoding this file")]


def _has_preamble_safe(path):
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
        return head[128:132] == b"DICM"
    except OSError:
        return False


def _convert_dataset(ds, has_preamble, relative, name, options, rejected):
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.pixels.utils import get_nr_frames
    from pydicom.uid import UID

    salt = options["salt"]
    facts = {"forced_read": not has_preamble}
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    media_class = str(meta.get("MediaStorageSOPClassUID", "") or "").strip() if meta else ""
    has_pixels = "PixelData" in ds
    if not has_preamble and not (sop_class or has_pixels):
        return rejected(
            "not a DICOM file: no DICM preamble, and a forced read found no DICOM image "
            "(no SOP Class UID, no Pixel Data)"
        )
    for uid in (sop_class, media_class):
        if uid and _is_non_image(uid):
            return rejected(f"non-image object: {_uid_name(uid)} ({uid})")
    if not has_pixels:
        kind = next((k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds), None)
        if kind:
            return rejected(f"unsupported pixel data: {kind} (float images) is not supported")
        return rejected(
            "no Pixel Data: the file holds no image"
            + (" (the file may be truncated)" if sop_class and not _is_non_image(sop_class) else "")
        )
    labels = options["labels"].lookup(
        relative,
        {
            "StudyInstanceUID": ds.get("StudyInstanceUID"),
            "SOPInstanceUID": ds.get("SOPInstanceUID"),
        },
    )
    if labels is None:
        table = options["labels"]
        where = (
            "not inside a class folder" if table.kind == "folders"
            else f"no row for its {table.key_column} in the labels CSV"
        )
        return rejected(f"no label: {where}")
    transfer_syntax = str(meta.get("TransferSyntaxUID", "") or "") if meta else ""
    if not transfer_syntax:
        if not _infer_transfer_syntax(ds):
            return rejected("unsupported transfer syntax: missing, and cannot be inferred")
        facts["transfer_syntax_inferred"] = True
        transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
    try:
        decoder = get_decoder(UID(transfer_syntax))
    except NotImplementedError:
        return rejected(
            f"unsupported transfer syntax: {UID(transfer_syntax).name} ({transfer_syntax}) "
            "has no pixel data decoder"
        )
    if not decoder.is_available:
        return rejected(
            f"unsupported transfer syntax: {UID(transfer_syntax).name} ({transfer_syntax}) "
            f"needs one of {decoder.missing_dependencies} (pip install 'kmedimg[dicom]')"
        )
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric not in PHOTOMETRICS:
        return rejected(
            f"unsupported photometric interpretation: {photometric or 'missing'}; "
            f"supported {list(PHOTOMETRICS)}"
        )
    monochrome = photometric.startswith("MONOCHROME")
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 0)) or 0)
    if monochrome and bits > 16 and options["window"] is None:
        return rejected(
            f"bit depth: Bits Stored {bits} > 16 cannot be stored losslessly in uint16; "
            "pass a window (window=, CLI --window/--window-preset) to store 8 bits"
        )
    count = get_nr_frames(ds, warn=False)
    indices = _frame_indices(count, options["frames"])
    try:
        decoded = _decode(ds, indices, count)
    except Exception as error:  # noqa: BLE001 - decoders raise many types
        text = str(error)
        if "less than expected" in text or "truncated" in text.lower():
            return rejected(f"truncated Pixel Data: {text}", ds)
        return rejected(
            f"cannot decode Pixel Data: {UID(transfer_syntax).name}: "
            f"{type(error).__name__}: {text}",
            ds,
        )
    patient_id = str(ds.get("PatientID", "") or "").strip()
    study = str(ds.get("StudyInstanceUID", "") or "").strip()
    if patient_id:
        patient = privacy.salted_hash(salt, "PatientID", patient_id)
        facts["patient_key_from"] = "PatientID"
    elif study:
        patient = privacy.salted_hash(salt, "StudyInstanceUID", study)
        facts["patient_key_from"] = "StudyInstanceUID"
    else:
        patient = privacy.salted_hash(salt, "file", relative)
        facts["patient_key_from"] = "file"
    facts.update(
        modality=str(ds.get("Modality", "") or ""),
        sop_class=_uid_name(sop_class) if sop_class else "",
        photometric=photometric,
        transfer_syntax=UID(transfer_syntax).name,
        num_frames=count,
    )
    results = []
    for index, frame in zip(indices, decoded):
        try:
            if monochrome:
                if frame.ndim != 2:
                    raise dicom_pixels.PixelError(
                        f"unexpected shape: monochrome frame of shape {frame.shape}"
                    )
                pixels, frame_facts = dicom_pixels.monochrome_frame(
                    ds, dicom_pixels.native(frame), index, options["window"],
                    options["offset"], options["scale"],
                )
            else:
                pixels, frame_facts = dicom_pixels.colour_frame(ds, frame)
        except dicom_pixels.PixelError as error:
            return rejected(str(error))
        if options["dtype"] == "uint16" and pixels.dtype == np.uint8:
            pixels = pixels.astype(np.uint16) * 257
            frame_facts["promoted_uint8_by"] = 257
        identifier = privacy.salted_hash(salt, "record", relative, index)
        if options["keep_filenames"]:
            source = relative if count == 1 else f"{relative}#frame{index}"
        else:
            source = identifier
        results.append(
            Item(
                source=source,
                pixels=pixels,
                labels=tuple(labels),
                patient=patient,
                record_id=identifier,
                metadata={**facts, **frame_facts, "frame": index},
            )
        )
    return results


@register_source("dicom")
class DicomSource:
    """DICOM files under a folder -> items, one per chosen frame, PHI-free.

    Args:
        root: folder searched recursively; every regular file is an input.
        labels: `"folders"` (first directory under `root` = class) or the path of a
            CSV with a `path`, `StudyInstanceUID` or `SOPInstanceUID` column and a
            `label` column (`a|b` for multi-label). Defaults to `"folders"`.
        class_names: class order; defaults to sorted names found. Defaults to `None`.
        task: `"binary"`, `"multiclass"` or `"multilabel"`; inferred when None.
            Defaults to `None`.
        frames: multi-frame files give their `"first"`, `"middle"` or `"all"` frames
            (one item per frame, same patient key). Defaults to `"first"`.
        window: None keeps full bit depth (uint16, `stored = real + offset`);
            `"file"` applies the file's VOI LUT / window; a preset name (`"lung"`,
            `"mediastinum"`, `"bone"`, `"brain"`, `"abdomen"`, ... see
            `dicom_pixels.WINDOW_PRESETS`), a `(center, width)` pair or `"C,W"` string
            gives uint8. Defaults to `None`.
        offset: full-depth storage offset (`stored = rint(real / scale) + offset`).
            Defaults to `1024`.
        scale: full-depth storage scale, e.g. `0.01` for PET SUV-like values.
            Defaults to `1.0`.
        dtype: `"uint16"` promotes uint8 images (colour, windowed) by `x * 257`, so a
            mixed folder becomes one dtype; None or `"auto"` keeps each image's.
            Defaults to `None`.
        salt: salt of the patient-key and record-id hashes (str/bytes). Defaults to
            `None` (read or create `salt_file`).
        salt_file: where the salt is kept; must be outside the dataset. Defaults to
            `None` (`~/.kmedimg/patient_salt`).
        keep_filenames: use relative paths (may hold PHI!) as `Item.source` and in
            rejected.csv instead of hash ids. Defaults to `False`.
        workers: decoding processes; None/0 = all CPUs, 1 = in this process.
            Defaults to `None`.
        prefetch: files in flight per worker (bounds memory). Defaults to `4`.

    Example:

    ```python
    from kmedimg.data.writer import write_dataset
    source = DicomSource("exports/chest_ct", window="lung", frames="middle",
                         salt_file="/secure/kmedimg_salt")
    write_dataset(source, "datasets/chest_ct", val_fraction=0.1, test_fraction=0.1)
    ```
    """

    def __init__(
        self,
        root,
        *,
        labels="folders",
        class_names=None,
        task=None,
        frames="first",
        window=None,
        offset=dicom_pixels.DEFAULT_OFFSET,
        scale=1.0,
        dtype=None,
        salt=None,
        salt_file=None,
        keep_filenames=False,
        workers=None,
        prefetch=4,
    ):
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"DICOM source folder not found: {self.root}")
        if frames not in FRAME_CHOICES:
            raise ValueError(
                f"`frames` must be one of {FRAME_CHOICES}. Received: frames={frames!r}"
            )
        if dtype not in DTYPE_CHOICES:
            raise ValueError(f"`dtype` must be one of {DTYPE_CHOICES}. Received: dtype={dtype!r}")
        if not float(scale) > 0:
            raise ValueError(f"`scale` must be > 0. Received: scale={scale!r}")
        if not 0 <= int(offset) <= dicom_pixels.UINT16_MAX:
            raise ValueError(f"`offset` must be in 0..65535. Received: offset={offset!r}")
        if not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"`prefetch` must be an int >= 1. Received: prefetch={prefetch!r}")
        self.frames = frames
        self.window = dicom_pixels.parse_window(window)
        self.offset = int(offset)
        self.scale = float(scale)
        self.dtype = None if dtype == "auto" else dtype
        self.keep_filenames = bool(keep_filenames)
        self.workers = check_workers(workers)
        self.prefetch = prefetch
        self.salt_file = salt_file
        self._salt = privacy.load_salt(salt, salt_file)
        if labels == "folders":
            self.label_table = LabelTable.from_folders(self.root, class_names, task)
        else:
            self.label_table = LabelTable.from_csv(labels, class_names, task)
        self.task = self.label_table.task
        self.class_names = self.label_table.class_names
        self._stats = collections.Counter()

    @classmethod
    def from_spec(cls, spec, **options):
        return cls(spec, **options)

    # Called by `kmedimg convert` before converting: the salt must live outside OUT.
    check_options = staticmethod(privacy.check_salt_options)

    @staticmethod
    def sniff(spec):
        """5 for a folder whose first files include DICOM (beats the image folder's 1)."""
        if not os.path.isdir(spec):
            return 0
        for path, _ in walk_files(spec, limit=20):
            if path.lower().endswith(".dcm") or _has_preamble_safe(path):
                return 5
        return 0

    def files(self):
        """Sorted `(absolute_path, relative_path)` of every regular file under the root."""
        return walk_files(self.root)

    def _options(self):
        return {
            "salt": self._salt,
            "keep_filenames": self.keep_filenames,
            "labels": self.label_table,
            "frames": self.frames,
            "window": self.window,
            "offset": self.offset,
            "scale": self.scale,
            "dtype": self.dtype,
        }

    def __iter__(self):
        options = self._options()
        jobs = ((path, relative, options) for path, relative in self.files())
        stats = collections.Counter()
        self._stats = stats
        for entries in ordered_map(
            convert_file, jobs, self.workers, self.prefetch, on_crash=crashed_file
        ):
            stats["files"] += 1
            for entry in entries:
                if isinstance(entry, Item):
                    stats["items"] += 1
                    meta = entry.metadata
                    stats[f"modality:{meta.get('modality') or 'unknown'}"] += 1
                    for flag in ("forced_read", "transfer_syntax_inferred", "inverted"):
                        if meta.get(flag):
                            stats[flag] += 1
                    if meta.get("clipped_pixels"):
                        stats["items_with_clipped_pixels"] += 1
                else:
                    stats["rejected_files"] += 1
                yield entry

    def describe(self):
        window = self.window
        if isinstance(window, tuple):
            window = {"name": window[0], "center": window[1], "width": window[2]}
        stats = dict(sorted(self._stats.items()))
        return {
            "format": "dicom",
            "root": self.root if self.keep_filenames else None,
            "labels": self.label_table.describe(),
            "frames": self.frames,
            "window": window,
            "intensity": {
                "monochrome": (
                    "uint8 = DICOM window of the modality values (0..255), MONOCHROME1 "
                    "inverted after windowing"
                    if window
                    else "uint16 stored = rint(real / scale) + offset, clipped to 0..65535; "
                    "real = (stored - offset) * scale = Rescale Slope * pixel + Rescale "
                    "Intercept (HU for CT); MONOCHROME1 inverted within the stored range"
                ),
                "offset": None if window else self.offset,
                "scale": None if window else self.scale,
                "colour": "RGB; YBR converted by pydicom, PALETTE COLOR through its LUTs",
                "uint8_promoted_by": 257 if self.dtype == "uint16" else None,
            },
            "privacy": {
                "patient": "salted sha256 of PatientID (else StudyInstanceUID, else file)",
                "salt_fingerprint": privacy.salt_fingerprint(self._salt),
                "keep_filenames": self.keep_filenames,
            },
            "workers": self.workers,
            "stats": stats,
        }

    def __repr__(self):
        root = self.root if self.keep_filenames else "<root>"
        return f"DicomSource({root!r}, frames={self.frames!r}, window={self.window!r})"
