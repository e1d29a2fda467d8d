"""`NiftiSource`: NIfTI volumes -> 2D slice items (nibabel).

Every regular file under the root is an input. `.nii`, `.nii.gz` and NIfTI pair
headers (`.hdr`, `.hdr.gz`, whose `.img` data file is read with it and is not a
separate input) are volumes; anything else is rejected as `not a NIfTI file`.
Analyze 7.5 headers (no orientation), CIFTI-2 files, headers whose data file is
missing, volumes whose header declares more than `max_voxels` voxels (refused
before reading: a tiny `.nii.gz` can expand to gigabytes), and volumes whose voxels
are all NaN/inf or all equal are rejected with the reason; so is each chosen slice
that is all NaN/inf (`non-finite slice`) or constant (`constant slice`): an image
with nothing in it must not be trained on under a label.

The documented transforms, per volume:

1. Orientation: `nibabel.as_closest_canonical` (RAS+), so axis 0 runs left->right,
   1 posterior->anterior, 2 inferior->superior, and `axis="axial"` always means axial.
   Data are the scaled voxel values (`scl_slope`/`scl_inter` applied by nibabel).
   A 4D+ volume gives its first 3D volume (`volume=0`, reported in metadata).
2. Slices along `axis` (`"sagittal"`=0, `"coronal"`=1, `"axial"`=2): `"middle"`
   (index n // 2), `"all"`, or an int N = N evenly spaced slices, the centres of N
   equal bins (`floor((k + 0.5) * n / N)`, k = 0..N-1; all slices when N >= n).
   A slice becomes an image by `np.rot90` (the slice's second axis points up):
   axial = anterior up, patient's right on the image's right (neurological view);
   coronal and sagittal = superior up.
3. Intensity, in this order of precedence:
   - `window` (preset name, `(center, width)` or `"C,W"`): uint8 by the DICOM
     LINEAR window (see `dicom_pixels.apply_window`); `"file"` uses the header's
     `cal_min`/`cal_max` as the display range (center = (min+max)/2, width = max-min).
   - `scale` given: `uint16 stored = rint(real / scale) + offset`, clipped (fixed for
     the whole dataset, e.g. `scale=1, offset=1024` for CT in HU).
   - default: integer-valued volumes whose values fit are stored exactly as
     `real + offset` (uint16; `offset` defaults to 1024, the DICOM importer's
     convention); other volumes (float, or out of range) are mapped per volume
     linearly onto 0..65535: `stored = rint((real - minimum) / step)` with
     `step = (maximum - minimum) / 65535`, and `real = stored * step + minimum` is
     recorded per volume in `Item.metadata` and in `describe()["intensity"]["per_volume"]`
     (the manifest). Non-finite voxels become `minimum` and are counted.
4. One patient key per volume (salted hash of its relative path), record ids and
   sources as in the DICOM importer (`keep_filenames` keeps relative paths); the
   tree walk, labels, privacy and worker processes are the DICOM importer's too
   (`kmedimg.data.sources.file_tree.FileTreeSource`).
"""

import functools
import math
import os

import numpy as np

from kmedimg.data.sources import dicom_pixels, privacy
from kmedimg.data.sources.base import Item, Rejected
from kmedimg.data.sources.file_tree import (
    FileTreeSource,
    item_name,
    no_label_reason,
    printable,
    reject,
    walk_files,
)
from kmedimg.data.sources.registry import register_source

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".hdr.gz")
PAIR_DATA_SUFFIXES = {".hdr": ".img", ".hdr.gz": ".img.gz"}
UINT16_MAX = 65535
#: Voxels of one 3D volume above which a file is refused from its header (512**3).
DEFAULT_MAX_VOXELS = 2**27


def _suffix(name):
    lower = name.lower()
    longest_first = sorted(VOLUME_SUFFIXES, key=len, reverse=True)
    return next((suffix for suffix in longest_first if lower.endswith(suffix)), None)


def check_axis(axis):
    """`"sagittal"|"coronal"|"axial"` or 0/1/2 -> int."""
    if isinstance(axis, str) and axis.lower() in AXES:
        return AXES[axis.lower()]
    if isinstance(axis, str) and axis.isdigit():
        axis = int(axis)
    if isinstance(axis, int) and not isinstance(axis, bool) and axis in (0, 1, 2):
        return axis
    raise ValueError(
        f"`axis` must be one of {list(AXES)} or 0, 1, 2. Received: axis={axis!r}"
    )


def check_slices(slices):
    """`"middle"`, `"all"` or a positive int N (also as a string)."""
    if isinstance(slices, str) and slices.isdigit():
        slices = int(slices)
    if slices in ("middle", "all"):
        return slices
    if isinstance(slices, int) and not isinstance(slices, bool) and slices >= 1:
        return slices
    raise ValueError(
        "`slices` must be 'middle', 'all' or a positive int N (N evenly spaced slices). "
        f"Received: slices={slices!r}"
    )


def slice_indices(count, slices):
    """Indices of the chosen slices among `count` (see the module docstring)."""
    if slices == "middle":
        return [count // 2]
    if slices == "all" or slices >= count:
        return list(range(count))
    return [int(math.floor((k + 0.5) * count / slices)) for k in range(slices)]


def slice_image(volume, axis, index):
    """The 2D image of slice `index` along `axis` of a canonical (RAS+) 3D volume."""
    return np.rot90(np.take(volume, index, axis=axis))


def _fixed(data, offset, scale):
    return dicom_pixels.to_uint16(data, offset, scale)[0]


def _min_max(data, minimum, step):
    return np.clip(np.rint((data - minimum) / step), 0, UINT16_MAX).astype(np.uint16)


def volume_intensity(volume, window, offset, scale, header_range=None):
    """Chooses a volume's intensity mapping (see the module docstring).

    Returns:
        `(volume, to_image, facts)`: the volume with non-finite voxels replaced by its
        finite minimum, a function slice -> stored array, and the facts to record.

    Raises:
        PixelError: every voxel is NaN/inf, or all voxels are equal.
    """
    finite = np.isfinite(volume)
    non_finite = int(volume.size - np.count_nonzero(finite))
    if non_finite == volume.size:
        raise dicom_pixels.PixelError(
            f"non-finite volume: all {volume.size} voxels are NaN or infinite"
        )
    if non_finite:
        volume = np.where(finite, volume, float(volume[finite].min()))
    if volume.min() == volume.max():
        raise dicom_pixels.PixelError(
            f"constant volume: every voxel is {float(volume.flat[0]):g} (no image to learn from)"
        )
    facts = {"non_finite_voxels": non_finite}
    if window is not None:
        if window == "file":
            low, high = header_range or (0.0, 0.0)
            if not high > low:
                raise dicom_pixels.PixelError(
                    "no window in file: window='file' uses the header's cal_min/cal_max, "
                    "which are unset; pass a preset or C,W"
                )
            name, function = "file cal_min/cal_max", "LINEAR_EXACT"
            center, width = (low + high) / 2, high - low
        else:
            (name, center, width), function = window, "LINEAR"
        facts.update(intensity="window", window_source=name, window=[center, width])
        return volume, functools.partial(
            dicom_pixels.apply_window, center=center, width=width, function=function
        ), facts
    if scale is not None:
        clipped = dicom_pixels.to_uint16(volume, offset, scale)[1]
        facts.update(intensity="fixed", offset=offset, scale=scale, clipped_voxels=clipped)
        return volume, functools.partial(_fixed, offset=offset, scale=scale), facts
    minimum = float(volume.min()) if volume.size else 0.0
    maximum = float(volume.max()) if volume.size else 0.0
    integral = bool(np.all(np.mod(volume, 1) == 0))
    if integral and minimum + offset >= 0 and maximum + offset <= UINT16_MAX:
        facts.update(intensity="fixed", offset=offset, scale=1.0, clipped_voxels=0)
        return volume, functools.partial(_fixed, offset=offset, scale=1.0), facts
    step = (maximum - minimum) / UINT16_MAX if maximum > minimum else 1.0
    facts.update(intensity="per_volume", minimum=minimum, step=step)
    return volume, functools.partial(_min_max, minimum=minimum, step=step), facts


def _check_size(shape, max_voxels):
    """Refuses a volume whose header's 3D shape exceeds `max_voxels` (before any read)."""
    shape3 = [int(n) for n in shape[:3]]
    voxels = int(np.prod(shape3, dtype=np.int64))
    if voxels > max_voxels:
        raise dicom_pixels.PixelError(
            f"volume too large: {' x '.join(map(str, shape3))} = {voxels:,} voxels in the "
            f"header ({voxels * 8 / 2**30:.1f} GiB as float64) exceed max_voxels="
            f"{max_voxels:,} (a small compressed file declaring this is a decompression "
            "bomb); raise NiftiSource(max_voxels=...) only with the memory for it"
        )


def _load_canonical(path, max_voxels):
    """(canonical 3D float64 array, facts, header cal range) or raises PixelError."""
    import nibabel as nib

    try:
        image = nib.load(path)
    except Exception as error:  # noqa: BLE001 - nibabel raises many types
        raise dicom_pixels.PixelError(
            f"unreadable NIfTI: {type(error).__name__}: {error}"
        ) from None
    kinds = (nib.Nifti1Image, nib.Nifti2Image, nib.Nifti1Pair, nib.Nifti2Pair)
    if not isinstance(image, kinds) or type(image).__name__.startswith("Cifti"):
        raise dicom_pixels.PixelError(
            f"not a NIfTI volume: nibabel reads it as {type(image).__name__}"
            + (" (Analyze 7.5 has no orientation)" if "Analyze" in type(image).__name__ else "")
        )
    dtype = image.get_data_dtype()
    if dtype.kind not in "uif" or dtype.fields is not None:
        raise dicom_pixels.PixelError(f"unsupported data type: {dtype} (complex/RGB volumes)")
    facts = {"shape": list(image.shape), "data_dtype": str(dtype)}
    _check_size(image.shape, max_voxels)
    if len(image.shape) > 3:
        volumes = int(np.prod(image.shape[3:]))
        if volumes > 1:
            facts.update(volumes=volumes, volume=0)
        image = image.slicer[(slice(None),) * 3 + (0,) * (len(image.shape) - 3)]
    try:
        canonical = nib.as_closest_canonical(image)
        data = np.asarray(canonical.get_fdata(dtype=np.float64))
    except FileNotFoundError:
        raise dicom_pixels.PixelError(
            "missing data file: the pair's .img file is not there"
        ) from None
    except Exception as error:  # noqa: BLE001
        raise dicom_pixels.PixelError(
            f"cannot read voxel data: {type(error).__name__}: {error}"
        ) from None
    while data.ndim < 3:
        data = data[..., np.newaxis]
    header = image.header
    cal = (float(header.get("cal_min", 0) or 0), float(header.get("cal_max", 0) or 0))
    facts["orientation"] = "".join(nib.aff2axcodes(image.affine))
    return data, facts, cal


def _slice_problem(volume, finite, axis, index):
    """Why slice `index` is no image (all NaN/inf, or constant), or None."""
    mask = np.take(finite, index, axis=axis)
    if not mask.any():
        return f"non-finite slice: all {mask.size} voxels are NaN or infinite"
    values = np.take(volume, index, axis=axis)[mask]
    if values.min() == values.max():
        return f"constant slice: every voxel is {float(values[0]):g} (no image to learn from)"
    return None


def convert_volume(job):
    """Worker: one file -> list of `Item`/`Rejected`. `job` = (path, relative, options)."""
    path, relative, options = job
    salt = options["salt"]
    name = item_name(options, relative)
    masks = [path, relative, os.path.basename(path)]
    if _suffix(os.path.basename(path)) is None:
        return reject(name, "not a NIfTI file: expected .nii, .nii.gz or a .hdr/.img pair",
                      masks)
    labels = options["labels"].lookup(relative)
    if labels is None:
        return reject(name, no_label_reason(options["labels"]), masks)
    with privacy.silenced("nibabel"):
        try:
            volume, facts, cal = _load_canonical(path, options["max_voxels"])
            finite = np.isfinite(volume)
            volume, to_image, intensity = volume_intensity(
                volume, options["window"], options["offset"], options["scale"], cal
            )
        except dicom_pixels.PixelError as error:
            return reject(name, str(error), masks)
    axis = options["axis"]
    indices = slice_indices(volume.shape[axis], options["slices"])
    patient = privacy.salted_hash(salt, "volume", relative)
    results = []
    for index in indices:
        identifier = privacy.salted_hash(salt, "record", relative, axis, index)
        source = (f"{printable(relative)}#{axis}:{index}" if options["keep_filenames"]
                  else identifier)
        problem = _slice_problem(volume, finite, axis, index)
        if problem:
            results.append(Rejected(source, problem))
            continue
        pixels = to_image(slice_image(volume, axis, index))
        results.append(
            Item(
                source=source,
                pixels=np.ascontiguousarray(pixels),
                labels=tuple(labels),
                patient=patient,
                record_id=identifier,
                metadata={**facts, **intensity, "axis": axis, "slice": index,
                          "num_slices": int(volume.shape[axis]),
                          "volume_id": privacy.salted_hash(salt, "file", relative)},
            )
        )
    return results


@register_source("nifti")
class NiftiSource(FileTreeSource):
    """NIfTI volumes under a folder -> 2D slice items (see the module docstring).

    Args:
        root: folder searched recursively; every regular file is an input (a pair's
            `.img` belongs to its `.hdr`).
        labels: `"folders"` or the path of a CSV with `path,label` columns.
            Defaults to `"folders"`.
        class_names: class order; defaults to sorted names found. Defaults to `None`.
        task: inferred when None. Defaults to `None`.
        axis: `"axial"`, `"coronal"`, `"sagittal"` or 0/1/2 of the RAS+ volume.
            Defaults to `"axial"`.
        slices: `"middle"`, `"all"` or an int N (N evenly spaced). Defaults to `"middle"`.
        window: None, `"file"` (header cal_min/cal_max), a preset name (`"brain"`,
            `"lung"`, ... for CT volumes in HU) or `(center, width)`. Defaults to `None`.
        offset: uint16 storage offset for fixed mappings. Defaults to `1024`.
        scale: fixed `stored = rint(real / scale) + offset` for every volume; None
            chooses per volume (exact when integral and in range, else min-max).
            Defaults to `None`.
        salt: salt of the patient-key and id hashes. Defaults to `None` (`salt_file`).
        salt_file: where the salt is kept (outside the dataset). Defaults to `None`
            (`~/.kmedimg/patient_salt`).
        keep_filenames: use relative paths as sources instead of hash ids.
            Defaults to `False`.
        workers: decoding processes; None/0 = all CPUs. Defaults to `None`.
        prefetch: files in flight per worker. Defaults to `4`.
        max_voxels: a volume whose header declares more voxels (of its first 3D
            volume) is rejected before it is read: decoding holds ~3 float64 copies
            per worker, and a 0.5 MB `.nii.gz` can declare gigabytes.
            Defaults to `2**27` (512 x 512 x 512; ~1 GiB as float64).

    Example:

    ```python
    source = NiftiSource("brats/", axis="axial", slices=8, salt_file="/secure/salt")
    ```
    """

    title = "NIfTI"
    convert = staticmethod(convert_volume)

    def __init__(
        self,
        root,
        *,
        labels="folders",
        class_names=None,
        task=None,
        axis="axial",
        slices="middle",
        window=None,
        offset=dicom_pixels.DEFAULT_OFFSET,
        scale=None,
        salt=None,
        salt_file=None,
        keep_filenames=False,
        workers=None,
        prefetch=4,
        max_voxels=DEFAULT_MAX_VOXELS,
    ):
        if not isinstance(max_voxels, int) or isinstance(max_voxels, bool) or max_voxels < 1:
            raise ValueError(
                "`max_voxels` must be a positive int (voxels of one 3D volume). "
                f"Received: max_voxels={max_voxels!r}"
            )
        self.max_voxels = max_voxels
        self.axis = check_axis(axis)
        self.slices = check_slices(slices)
        self.window = dicom_pixels.parse_window(window)
        if not 0 <= int(offset) <= UINT16_MAX:
            raise ValueError(f"`offset` must be in 0..65535. Received: offset={offset!r}")
        if scale is not None and not float(scale) > 0:
            raise ValueError(f"`scale` must be None or > 0. Received: scale={scale!r}")
        self.offset = int(offset)
        self.scale = None if scale is None else float(scale)
        self._per_volume = {}
        super().__init__(
            root, labels=labels, class_names=class_names, task=task,
            label_keys=("path",), salt=salt, salt_file=salt_file,
            keep_filenames=keep_filenames, workers=workers, prefetch=prefetch,
        )

    @staticmethod
    def sniff(spec):
        """5 for a folder whose first files include .nii/.nii.gz (beats the folder's 1)."""
        if not os.path.isdir(spec):
            return 0
        for path, _ in walk_files(spec, limit=200):
            if path.lower().endswith((".nii", ".nii.gz")):
                return 5
        return 0

    def files(self):
        """Sorted `(absolute, relative)` inputs; a pair's `.img` is part of its `.hdr`."""
        found = []
        for path, relative in walk_files(self.root):
            directory, filename = os.path.split(path)
            lower = filename.lower()
            paired = False
            for header_suffix, data_suffix in PAIR_DATA_SUFFIXES.items():
                if lower.endswith(data_suffix):
                    stem = filename[: -len(data_suffix)]
                    paired = any(os.path.isfile(os.path.join(directory, stem + suffix))
                                 for suffix in (header_suffix, header_suffix.upper()))
            if not paired:
                found.append((path, relative))
        return found

    def worker_options(self):
        return {
            **super().worker_options(),
            "axis": self.axis,
            "slices": self.slices,
            "window": self.window,
            "offset": self.offset,
            "scale": self.scale,
            "max_voxels": self.max_voxels,
        }

    def _start_pass(self):
        super()._start_pass()
        self._per_volume = {}

    def _count_item(self, item):
        meta = item.metadata
        if meta.get("intensity") == "per_volume":
            self._per_volume[meta["volume_id"]] = {
                "minimum": meta["minimum"], "step": meta["step"]
            }

    def describe(self):
        return {
            "format": "nifti",
            "root": self.root if self.keep_filenames else None,
            "labels": self.label_table.describe(),
            "axis": {v: k for k, v in AXES.items()}[self.axis],
            "slices": self.slices,
            "orientation": "RAS+ (nibabel.as_closest_canonical); image = rot90(slice)",
            "window": self._described_window(),
            "intensity": {
                "fixed": "uint16 stored = rint(real / scale) + offset; "
                "real = (stored - offset) * scale",
                "offset": self.offset,
                "scale": self.scale,
                "per_volume_rule": "real = stored * step + minimum (float or out-of-range volumes)",
                "per_volume": dict(sorted(self._per_volume.items())),
            },
            "privacy": self._describe_privacy("salted sha256 of the volume's relative path"),
            "workers": self.workers,
            "max_voxels": self.max_voxels,
            "stats": dict(sorted(self._stats.items())),
        }

    def __repr__(self):
        root = self.root if self.keep_filenames else "<root>"
        return f"NiftiSource({root!r}, axis={self.axis}, slices={self.slices!r})"
