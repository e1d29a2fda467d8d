"""Optional DICOM pixel decoder on tensorflow-io (`tfio.image.decode_dicom_image`, DCMTK).

kmedimg decodes DICOM with pydicom + pylibjpeg (the `[dicom]` extra): they install and
load next to every TensorFlow kmedimg supports. tensorflow-io does not: its newest
release, 0.37.1, declares `tensorflow>=2.16,<2.17` and its kernels are built against
TensorFlow 2.16. Measured on Linux x86-64, Python 3.11:

- TensorFlow 2.16.2 + tensorflow-io 0.37.1 (numpy 1.26.4): installs, loads, decodes.
- TensorFlow 2.21.0 + tensorflow-io 0.37.1: pip installs it (the TensorFlow bound is
  only in an extra), `import tensorflow_io` only warns, and the first op raises
  `NotImplementedError: unable to open file: libtensorflow_io.so ... undefined symbol:
  _ZNK10tensorflow4data11DatasetBase8Finalize...`.

So this decoder is offered where it loads (TensorFlow 2.16.x) as
`DicomSource(decoder="tfio")` / `kmedimg convert --dicom-decoder tfio`, and refused
with a clear error elsewhere, when the source is created (before any file is read).
What DCMTK returns is a rendering, not pydicom's `pixel_array`:

- signed data (Pixel Representation 1) comes out shifted by `2**(BitsStored - 1)`;
  `decode_frames` shifts it back and returns pydicom's signed dtype;
- refused (`TfioDecodeError`) because DCMTK's output differs from pydicom's on
  pydicom-data: a modality rescale or Modality LUT (applied in DCMTK's own
  representation, e.g. CT_small.dcm comes out as `2 * stored + 65536`), MONOCHROME1
  (inverted), PALETTE COLOR (rendered to RGB), YBR colour (7 of 12 decodable files off
  by 1-5), burnt-in overlay planes, 32-bit Explicit VR Big Endian (misread).

On pydicom-data (pydicom 3.0.2 + pylibjpeg, TF 2.16.2, tensorflow-io 0.37.1) 78 files
match pydicom bit for bit, 5 lossy JPEG files differ by 1 (DCMTK's IJG decoder rounds
differently), 3 fail in DCMTK, 69 are refused: `compare_with_pydicom` and
`python -m kmedimg.data.sources.dicom_tfio` print that table.
"""

import numpy as np

#: The tensorflow-io release this decoder was measured with, and the TensorFlow it needs.
TFIO_VERSION = "0.37.1"
TFIO_TENSORFLOW = "2.16"
INSTALL_HINT = (
    f"pip install 'tensorflow-cpu=={TFIO_TENSORFLOW}.*' 'tensorflow-io=={TFIO_VERSION}' "
    "'numpy<2' (pylibjpeg-openjpeg<=2.3 and pylibjpeg-libjpeg<=2.2 for numpy 1)"
)
DECODERS = ("pydicom", "tfio")
_IDENTITY_RESCALE = ((None, None), (1.0, 0.0))


class TfioDecodeError(Exception):
    """A frame tensorflow-io cannot give exactly as pydicom would; `str()` says why."""


def load_tfio():
    """Imports tensorflow-io and loads its kernels, or raises ImportError naming versions.

    Returns:
        the `tensorflow_io` module.

    Raises:
        ImportError: tensorflow-io is missing, or its kernels do not load with the
            installed TensorFlow (e.g. TensorFlow 2.21: undefined symbol).
    """
    import tensorflow as tf

    try:
        import tensorflow_io as tfio
    except ImportError as error:
        raise ImportError(
            f"The tfio DICOM decoder needs tensorflow-io {TFIO_VERSION}, which only loads "
            f"with TensorFlow {TFIO_TENSORFLOW}.x (installed: TensorFlow {tf.__version__}). "
            f"Install: {INSTALL_HINT}; otherwise use the default pydicom decoder. "
            f"Received: {error}"
        ) from error
    try:
        # tensorflow_io loads libtensorflow_io.so lazily: touch an op to load it now.
        from tensorflow_io.python.ops import core_ops

        core_ops.io_decode_dicom_image  # noqa: B018
    except (NotImplementedError, OSError, tf.errors.NotFoundError) as error:
        version = getattr(tfio, "__version__", "?")
        raise ImportError(
            f"tensorflow-io {version} does not load with TensorFlow {tf.__version__}: it is "
            f"built for TensorFlow {TFIO_TENSORFLOW}.x (tensorflow-io {TFIO_VERSION} declares "
            f"tensorflow<2.17). Use the default pydicom decoder, or a TensorFlow "
            f"{TFIO_TENSORFLOW} environment ({INSTALL_HINT}). Received: "
            f"{str(error).splitlines()[-1][:300]}"
        ) from error
    return tfio


def _rescale_of(ds):
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is None and intercept is None:
        return (None, None)
    return (float(slope if slope is not None else 1.0),
            float(intercept if intercept is not None else 0.0))


def check_supported(ds):
    """Raises `TfioDecodeError` when DCMTK's output would differ from pydicom's."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        raise TfioDecodeError("tfio renders PALETTE COLOR to RGB; kmedimg needs the indices")
    if photometric.startswith("YBR"):
        raise TfioDecodeError(f"tfio converts {photometric} to RGB with its own rounding")
    if photometric == "MONOCHROME1":
        raise TfioDecodeError("tfio inverts MONOCHROME1 (kmedimg inverts after the modality step)")
    if any((tag >> 16) & 0xFF01 == 0x6000 and tag & 0xFFFF == 0x3000 for tag in ds.keys()):
        raise TfioDecodeError("tfio burns the overlay planes (60xx,3000) into the pixels")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax == "1.2.840.10008.1.2.2" and int(ds.get("BitsAllocated", 0)) == 32:
        raise TfioDecodeError("tfio misreads 32-bit Explicit VR Big Endian pixel data")
    if "ModalityLUTSequence" in ds or _rescale_of(ds) not in _IDENTITY_RESCALE:
        raise TfioDecodeError(
            "tfio applies the modality rescale in DCMTK's representation; stored values "
            "cannot be recovered exactly"
        )
    for keyword in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        for group in ds.get(keyword, None) or []:
            if "PixelValueTransformationSequence" in group:
                raise TfioDecodeError("tfio applies the per-frame modality rescale")


def _pydicom_dtype(ds):
    bits = int(ds.BitsAllocated)
    if bits not in (8, 16, 32):
        raise TfioDecodeError(f"Bits Allocated {bits} is not 8, 16 or 32")
    kind = "int" if int(ds.get("PixelRepresentation", 0)) == 1 else "uint"
    return np.dtype(f"{kind}{bits}")


def decode_frames(data, ds, indices=None):
    """Decodes frames with tensorflow-io, returned as pydicom's `pixel_array` would be.

    Args:
        data: the file's bytes (or a path to read).
        ds: the file's pydicom Dataset (read with the pixel data or without).
        indices: frame indices to return. Defaults to `None` (every frame).

    Returns:
        list of numpy arrays, one per frame: (rows, cols) or (rows, cols, 3), in
        pydicom's dtype (uint8/int8/uint16/int16/uint32/int32).

    Raises:
        ImportError: tensorflow-io does not load (see `load_tfio`).
        TfioDecodeError: a file tfio cannot decode exactly (see `check_supported`).
        RuntimeError: DCMTK cannot decode the file.
    """
    tfio = load_tfio()
    import tensorflow as tf

    check_supported(ds)
    dtype = _pydicom_dtype(ds)
    if not isinstance(data, (bytes, bytearray)):
        with open(data, "rb") as handle:
            data = handle.read()
    out_dtype = tf.uint32 if dtype.itemsize == 4 else tf.uint16
    try:
        frames = tfio.image.decode_dicom_image(
            tf.constant(bytes(data)), color_dim=True, on_error="strict", scale="preserve",
            dtype=out_dtype,
        ).numpy()
    except tf.errors.OpError as error:
        raise RuntimeError(f"tfio cannot decode: {error.message.splitlines()[0]}") from None
    values = frames.astype(np.int64)
    if dtype.kind == "i":
        values -= 2 ** (int(ds.BitsStored) - 1)
    info = np.iinfo(dtype)
    if values.size and (values.min() < info.min or values.max() > info.max):
        raise TfioDecodeError(f"tfio values {values.min()}..{values.max()} do not fit {dtype}")
    values = values.astype(dtype)
    if values.shape[-1] == 1:
        values = values[..., 0]
    count = values.shape[0]
    if indices is None:
        indices = range(count)
    indices = list(indices)
    if any(not 0 <= index < count for index in indices):
        raise ValueError(
            f"`indices` must be frame numbers in 0..{count - 1}. Received: indices={indices}"
        )
    return [values[index] for index in indices]


def compare_with_pydicom(paths, root=None):
    """Decodes each file with pydicom and with tfio; one result dict per file.

    Args:
        paths: DICOM file paths (e.g. `pydicom.data.get_testdata_files()`).
        root: `file` is given relative to this folder. Defaults to `None` (the base name).

    Returns:
        list of dicts: `file`, `transfer_syntax`, `photometric`, `status` (`"match"`
        bit for bit, `"differ"`, `"refused"`, `"tfio error"`, `"pydicom error"` or
        `"no pixel data"`) and `detail`.
    """
    import os

    import pydicom

    results = []
    for path in paths:
        name = os.path.relpath(path, root) if root else os.path.basename(path)
        row = {"file": name, "transfer_syntax": "", "photometric": "",
               "status": "", "detail": ""}
        results.append(row)
        try:
            ds = pydicom.dcmread(path, force=True)
            row["transfer_syntax"] = str(getattr(ds.file_meta, "TransferSyntaxUID", "")
                                         and ds.file_meta.TransferSyntaxUID.name)
        except Exception as error:  # noqa: BLE001 - pydicom-data holds broken files on purpose
            row.update(status="pydicom error", detail=f"{type(error).__name__}: {error}"[:200])
            continue
        row["photometric"] = str(ds.get("PhotometricInterpretation", ""))
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            row.update(status="no pixel data")
            continue
        try:
            expected = np.asarray(ds.pixel_array)
        except Exception as error:  # noqa: BLE001
            row.update(status="pydicom error", detail=f"{type(error).__name__}: {error}"[:200])
            continue
        try:
            check_supported(ds)
            _pydicom_dtype(ds)
        except TfioDecodeError as error:
            row.update(status="refused", detail=str(error))
            continue
        try:
            frames = decode_frames(path, ds)
        except Exception as error:  # noqa: BLE001
            row.update(status="tfio error", detail=f"{type(error).__name__}: {error}"[:200])
            continue
        got = frames[0] if len(frames) == 1 else np.stack(frames)
        expected = expected.astype(expected.dtype.newbyteorder("="))
        if got.shape == expected.shape and got.dtype == expected.dtype and np.array_equal(
                got, expected):
            row.update(status="match", detail=f"{got.dtype} {got.shape}")
        else:
            detail = f"tfio {got.dtype} {got.shape} vs pydicom {expected.dtype} {expected.shape}"
            if got.shape == expected.shape:
                diff = got.astype(np.int64) - expected.astype(np.int64)
                detail += f"; {np.count_nonzero(diff)} pixels differ, max |diff| {abs(diff).max()}"
            row.update(status="differ", detail=detail)
    return results


def main():
    """Prints `compare_with_pydicom` on every pydicom-data file as a table."""
    import collections
    import os

    import tensorflow as tf
    from pydicom.data import get_testdata_files

    tfio = load_tfio()
    print(f"TensorFlow {tf.__version__}, tensorflow-io {tfio.__version__}")
    paths = sorted(p for p in get_testdata_files() if os.path.isfile(p))
    results = compare_with_pydicom(paths, root=os.path.commonpath(paths))
    for row in results:
        print(f"{row['status']:14} {row['file']:52} {row['transfer_syntax'][:40]:40} "
              f"{row['photometric']:14} {row['detail']}")
    print(dict(collections.Counter(row["status"] for row in results)))


if __name__ == "__main__":
    main()
