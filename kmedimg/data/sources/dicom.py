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
- `constant image`: a frame whose stored pixels are all equal (a blank image must
  not be trained on under a label); only that frame is rejected.

Pixel handling is documented in `kmedimg.data.sources.dicom_pixels` (modality
rescale to real units, MONOCHROME1 inversion, YBR/palette -> RGB, windows and presets,
full-depth uint16 storage as `HU + 1024` by default). The storage convention is
repeated in `describe()` (the manifest's `source` field) so it can be undone.

Privacy (see `kmedimg.data.sources.privacy`): records carry a salted hash of
PatientID, never names, IDs, dates, accession numbers, institutions or free text;
record ids, `Item.source` and rejected.csv use salted hashes of the relative path
unless `keep_filenames=True`; error reasons are scrubbed of paths and of the file's
text values, and echo a code value (photometric interpretation, modality, transfer
syntax, SOP class) only when the standard defines it (`dicom_objects.describe_code`).

Pixels are decoded by pydicom, or with `decoder="tfio"` (`--dicom-decoder tfio`) by
tensorflow-io where it loads (`kmedimg.data.sources.dicom_tfio`); a file tfio cannot
decode exactly falls back to pydicom, noted as `tfio_fallback` in its items.

Walking the tree, labels, privacy of names and decoding in `workers` processes (an
ordered, bounded map, so the output is identical for any worker count) are shared
with the NIfTI importer (`kmedimg.data.sources.file_tree.FileTreeSource`).
"""

import os

import numpy as np

from kmedimg.data.sources import dicom_pixels, dicom_tfio, privacy
from kmedimg.data.sources.base import Item, Rejected
from kmedimg.data.sources.dicom_objects import (
    MODALITIES,
    check_transfer_syntax,
    describe_code,
    object_problem,
    phi_values,
    pixel_problem,
    uid_name,
)
from kmedimg.data.sources.file_tree import (
    FileTreeSource,
    item_name,
    no_label_reason,
    printable,
    reject,
    walk_files,
)
from kmedimg.data.sources.label_table import KEY_COLUMNS
from kmedimg.data.sources.registry import register_source

FRAME_CHOICES = ("first", "middle", "all")
DTYPE_CHOICES = (None, "auto", "uint16")


def _frame_indices(count, frames):
    if frames == "all":
        return list(range(count))
    return [0] if frames == "first" else [count // 2]


def _decode(ds, indices, count, path, decoder, facts):
    """The chosen frames: by tensorflow-io when asked and exact, else by pydicom."""
    from pydicom.pixels import iter_pixels, pixel_array

    facts["decoder"] = "pydicom"
    if decoder == "tfio":
        try:
            frames = dicom_tfio.decode_frames(path, ds, indices)
            facts["decoder"] = "tfio"
            return frames
        except dicom_tfio.TfioDecodeError as error:  # our own text: no file values
            facts["tfio_fallback"] = f"refused: {error}"
        except RuntimeError:  # DCMTK's message may quote the file: not kept
            facts["tfio_fallback"] = "tfio (DCMTK) cannot decode the file"
    if len(indices) == count and count > 1:
        return [np.asarray(frame) for frame in iter_pixels(ds)]
    return [np.asarray(pixel_array(ds, index=index if count > 1 else None)) for index in indices]


def convert_file(job):
    """Worker: one file -> list of `Item`/`Rejected`. `job` = (path, relative, options)."""
    import pydicom

    path, relative, options = job
    name = item_name(options, relative)
    masks = [path, relative, os.path.basename(path)]
    stem = os.path.splitext(os.path.basename(path))[0]
    masks.append(stem)

    def rejected(reason, ds=None):
        extra = phi_values(ds) if ds is not None else []
        return reject(name, reason, masks + extra, one_line=True)

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
            return _convert_dataset(ds, has_preamble, path, relative, options, rejected)
        except Exception as error:  # noqa: BLE001 - a damaged file must not stop the run
            return rejected(f"unreadable DICOM: {type(error).__name__}: {error}", ds)


def _has_preamble_safe(path):
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
        return head[128:132] == b"DICM"
    except OSError:
        return False


def _patient_key(ds, salt, relative, facts):
    """Salted hash of PatientID, else StudyInstanceUID, else the file."""
    patient_id = str(ds.get("PatientID", "") or "").strip()
    study = str(ds.get("StudyInstanceUID", "") or "").strip()
    if patient_id:
        facts["patient_key_from"] = "PatientID"
        return privacy.salted_hash(salt, "PatientID", patient_id)
    if study:
        facts["patient_key_from"] = "StudyInstanceUID"
        return privacy.salted_hash(salt, "StudyInstanceUID", study)
    facts["patient_key_from"] = "file"
    return privacy.salted_hash(salt, "file", relative)


def _convert_dataset(ds, has_preamble, path, relative, options, rejected):
    from pydicom.pixels.utils import get_nr_frames
    from pydicom.uid import UID

    facts = {"forced_read": not has_preamble}
    problem = object_problem(ds, has_preamble, options["salt"])
    if problem:
        return rejected(problem)
    labels = options["labels"].lookup(
        relative,
        {
            "StudyInstanceUID": ds.get("StudyInstanceUID"),
            "SOPInstanceUID": ds.get("SOPInstanceUID"),
        },
    )
    if labels is None:
        return rejected(no_label_reason(options["labels"]))
    transfer_syntax, problem = check_transfer_syntax(ds, facts, options["salt"])
    if problem:
        return rejected(problem)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    problem = pixel_problem(ds, photometric, options["window"], options["salt"])
    if problem:
        return rejected(problem)
    count = get_nr_frames(ds, warn=False)
    indices = _frame_indices(count, options["frames"])
    try:
        decoded = _decode(ds, indices, count, path, options["decoder"], facts)
    except Exception as error:  # noqa: BLE001 - decoders raise many types
        text = str(error)
        if "less than expected" in text or "truncated" in text.lower():
            return rejected(f"truncated Pixel Data: {text}", ds)
        return rejected(
            f"cannot decode Pixel Data: {UID(transfer_syntax).name}: "
            f"{type(error).__name__}: {text}",
            ds,
        )
    patient = _patient_key(ds, options["salt"], relative, facts)
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    facts.update(
        modality=describe_code(ds.get("Modality", ""), MODALITIES, options["salt"]),
        sop_class=uid_name(sop_class) if sop_class else "",
        photometric=photometric,
        transfer_syntax=UID(transfer_syntax).name,
        num_frames=count,
    )
    return _frame_items(ds, zip(indices, decoded), count, photometric, labels, patient,
                        relative, options, facts, rejected)


def _frame_items(ds, frames, count, photometric, labels, patient, relative, options,
                 facts, rejected):
    """One `Item` per decoded frame (or one rejection for the file); a constant frame
    (a blank image: nothing to learn, whatever its label) is rejected alone."""
    results = []
    for index, frame in frames:
        identifier = privacy.salted_hash(options["salt"], "record", relative, index)
        if options["keep_filenames"]:
            shown = printable(relative)
            source = shown if count == 1 else f"{shown}#frame{index}"
        else:
            source = identifier
        if frame.size and frame.min() == frame.max():
            reason = f"constant image: every stored pixel is {frame.flat[0].item()}"
            results.append(Rejected(source, reason))
            continue
        try:
            if photometric.startswith("MONOCHROME"):
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
class DicomSource(FileTreeSource):
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
        decoder: `"pydicom"` or `"tfio"` (tensorflow-io's DCMTK decoder; loads only
            with TensorFlow 2.16, refused here otherwise; files it cannot decode
            exactly fall back to pydicom, noted as `tfio_fallback` in the item's
            metadata; see `kmedimg.data.sources.dicom_tfio`). Defaults to `"pydicom"`.

    Example:

    ```python
    from kmedimg.data.writer import write_dataset
    source = DicomSource("exports/chest_ct", window="lung", frames="middle",
                         salt_file="/secure/kmedimg_salt")
    write_dataset(source, "datasets/chest_ct", val_fraction=0.1, test_fraction=0.1)
    ```
    """

    title = "DICOM"
    crash_reason = "decoder crashed: the worker process died while decoding this file"
    convert = staticmethod(convert_file)

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
        decoder="pydicom",
    ):
        if decoder not in dicom_tfio.DECODERS:
            raise ValueError(
                f"`decoder` must be one of {dicom_tfio.DECODERS}. Received: decoder={decoder!r}"
            )
        if decoder == "tfio":
            try:  # refused here, before any file is read or written
                dicom_tfio.load_tfio()
            except ImportError as error:
                raise ValueError(
                    f"decoder='tfio' (--dicom-decoder tfio) is not available: {error}"
                ) from None
        self.decoder = decoder
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
        self.frames = frames
        self.window = dicom_pixels.parse_window(window)
        self.offset = int(offset)
        self.scale = float(scale)
        self.dtype = None if dtype == "auto" else dtype
        super().__init__(
            root, labels=labels, class_names=class_names, task=task,
            label_keys=KEY_COLUMNS, salt=salt, salt_file=salt_file,
            keep_filenames=keep_filenames, workers=workers, prefetch=prefetch,
        )

    @staticmethod
    def sniff(spec):
        """5 for a folder whose first files include DICOM (beats the image folder's 1)."""
        if not os.path.isdir(spec):
            return 0
        for path, _ in walk_files(spec, limit=20):
            if path.lower().endswith(".dcm") or _has_preamble_safe(path):
                return 5
        return 0

    def worker_options(self):
        return {
            **super().worker_options(),
            "frames": self.frames,
            "window": self.window,
            "offset": self.offset,
            "scale": self.scale,
            "dtype": self.dtype,
            "decoder": self.decoder,
        }

    def _count_item(self, item):
        stats, meta = self._stats, item.metadata
        modality = meta.get("modality") or "unknown"
        if modality.startswith("not a defined term"):
            modality = "not a defined term"  # one count, not one per value hash
        stats[f"modality:{'unknown' if modality == 'missing' else modality}"] += 1
        if self.decoder != "pydicom":
            stats[f"decoder:{meta.get('decoder')}"] += 1
            stats["tfio_fallback"] += bool(meta.get("tfio_fallback"))
        for flag in ("forced_read", "transfer_syntax_inferred", "inverted"):
            if meta.get(flag):
                stats[flag] += 1
        if meta.get("clipped_pixels"):
            stats["items_with_clipped_pixels"] += 1

    def describe(self):
        window = self._described_window()
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
            "privacy": self._describe_privacy(
                "salted sha256 of PatientID (else StudyInstanceUID, else file)"),
            "decoder": self.decoder,
            "workers": self.workers,
            "stats": dict(sorted(self._stats.items())),
        }

    def __repr__(self):
        root = self.root if self.keep_filenames else "<root>"
        return f"DicomSource({root!r}, frames={self.frames!r}, window={self.window!r})"
