"""Reading loose inputs (image files, .npy arrays, DICOM files) into a model's input shape.

`kmedimg predict` and `kmedimg explain` take files a user points at, not TFRecords.
They are read losslessly in their stored intensity range (uint8 0..255 or uint16
0..65535) and resized/channel-matched exactly as `kmedimg.data.pipeline` does for
records (bilinear resize in float32, grey tiled to RGB, RGB to grey by luma), so a
model sees the same numbers either way.
"""

import os

import numpy as np
import tensorflow as tf

from kmedimg.core.errors import InputFileError
from kmedimg.data import schema
from kmedimg.data.sources import dicom_objects, dicom_pixels, image_files, privacy

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npy",)
DICOM_SUFFIXES = (".dcm", ".dicom")
# Salt of the value hashes in DICOM error messages (values outside the allow-lists are
# never echoed); per process, so a message's hash cannot be looked up in a table.
_MESSAGE_SALT = os.urandom(16)


def model_input_spec(model):
    """`(height, width, channels)` of a model's image input.

    Raises:
        ValueError: when the model has no single fixed-size image input.
    """
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else None
    if shape is None or len(shape) != 4 or None in shape[1:]:
        raise ValueError(
            "The model must take one image input of fixed shape [batch, H, W, C]. "
            f"Received: input shape={shape}"
        )
    return int(shape[1]), int(shape[2]), int(shape[3])


def read_pixels(path, dtype="auto", dicom=None):
    """Reads one input file as an HxWxC uint8/uint16 array in its stored range.

    Args:
        path: a PNG/JPEG/BMP/TIFF image, a `.npy` array (HxW or HxWxC, uint8/uint16) or
            a DICOM file (read with the DICOM importer's pixel rules; needs pydicom).
        dtype: "uint8", "uint16" or "auto" (16-bit files stay 16-bit). Defaults to
            `"auto"`.
        dicom: DICOM settings of the training dataset, `{"window", "offset", "scale"}`
            (see `DicomSource`). Defaults to `None` (full bit depth, offset 1024).

    Returns:
        `np.ndarray` [H, W, C].

    Raises:
        FileNotFoundError: when `path` is not a file.
        InputFileError: (a `ValueError`) naming the file and the reason, for an
            unreadable, unsafe or unsupported input.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if dtype not in ("auto", "uint8", "uint16"):
        raise ValueError(
            f"`dtype` must be one of ('auto', 'uint8', 'uint16'). Received: dtype={dtype!r}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such input file: {path}")
    if suffix in ARRAY_SUFFIXES:
        pixels = _read_array(path)
    elif suffix in DICOM_SUFFIXES or _is_dicom(path):
        pixels = _read_dicom(path, **(dicom or {}))
    elif suffix in IMAGE_SUFFIXES:
        pixels = _read_image(path, dtype)
    else:
        raise InputFileError(path, (
            f"unsupported input type. Allowed suffixes: "
            f"{IMAGE_SUFFIXES + ARRAY_SUFFIXES + DICOM_SUFFIXES}. Received: suffix={suffix!r}"))
    try:
        pixels = schema.check_pixels(pixels, where="pixels")
    except ValueError as error:
        raise InputFileError(path, str(error).removeprefix("pixels: ")) from None
    if dtype != "auto" and pixels.dtype.name != dtype:
        if dtype == "uint16":
            pixels = pixels.astype(np.uint16) * np.uint16(257)
        else:
            pixels = np.clip(np.rint(pixels / 257.0), 0, 255).astype(np.uint8)
    return pixels


def _read_image(path, dtype):
    from PIL import Image

    try:
        is_grey, sixteen_bit = image_files.probe(path)
        stored = "uint16" if sixteen_bit else "uint8"
        return image_files.load(path, 1 if is_grey else 3, stored if dtype == "auto" else dtype)
    except image_files.ImageFileError as error:
        raise InputFileError(path, f"{error}.") from None
    except Image.DecompressionBombError as error:
        raise InputFileError(path, (
            f"refused as a possible decompression bomb: {error} Downscale the image "
            "before passing it.")) from None


def _read_array(path):
    """A `.npy` file's array, after checking its header: numeric, image-shaped, not pickled."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(handle)
    except Exception as error:  # noqa: BLE001 - numpy's header parser raises many types
        raise InputFileError(
            path, f"not a readable .npy file ({type(error).__name__}: {error}).") from None
    if dtype.hasobject:
        raise InputFileError(path, (
            "holds an object array (pickled Python objects), which is refused as unsafe; "
            "save the image as a numeric uint8/uint16 array. Received: dtype=object"))
    if len(shape) not in (2, 3) or dtype.name not in schema.DTYPES:
        raise InputFileError(path, (
            f"expected a uint8/uint16 image array of shape (H, W) or (H, W, C). "
            f"Received: shape={shape}, dtype={dtype}"))
    if int(np.prod(shape)) * dtype.itemsize > os.path.getsize(path):
        raise InputFileError(path, (
            f"truncated .npy file: its header declares shape {shape} ({dtype}), more "
            f"than the file holds. Received: {os.path.getsize(path)} bytes"))
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputFileError(path, f"not a readable .npy file (truncated?): {error}.") from None


def _is_dicom(path):
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _read_dicom(path, window=None, offset=None, scale=None):
    try:
        import pydicom  # noqa: F401 - optional extra
    except ImportError as error:
        raise InputFileError(
            path, "reading DICOM needs pydicom: pip install 'kmedimg[dicom]'.") from error
    # pydicom's warnings and logs may quote the file's values (names, IDs): silenced.
    with privacy.silenced("pydicom"):
        return _decode_dicom(path, window, offset, scale)


def _decode_dicom(path, window, offset, scale):
    """The DICOM importer's checks and pixel rules on one file (first frame)."""
    import pydicom

    has_preamble = _is_dicom(path)
    try:
        dataset = pydicom.dcmread(path, force=True)
    except Exception as error:  # noqa: BLE001 - pydicom raises many types
        raise InputFileError(path, (
            f"unreadable DICOM{'' if has_preamble else ' (no DICM preamble)'}: "
            f"{type(error).__name__}.")) from None
    try:
        problem = dicom_objects.object_problem(dataset, has_preamble, _MESSAGE_SALT)
        if not problem:
            problem = dicom_objects.check_transfer_syntax(dataset, {}, _MESSAGE_SALT)[1]
        photometric = str(dataset.get("PhotometricInterpretation", "") or "").strip().upper()
        if not problem:
            problem = dicom_objects.pixel_problem(dataset, photometric, window, _MESSAGE_SALT)
    except Exception as error:  # noqa: BLE001 - a damaged header: any element may fail
        problem = f"unreadable DICOM header: {type(error).__name__}"
    if problem:
        raise InputFileError(path, f"{problem}.")
    try:
        frame = np.asarray(dataset.pixel_array)
        if getattr(dataset, "NumberOfFrames", 1) not in (None, 1, "1"):
            frame = frame[0]
        if photometric.startswith("MONOCHROME"):
            return dicom_pixels.monochrome_frame(
                dataset, dicom_pixels.native(frame), 0, window,
                dicom_pixels.DEFAULT_OFFSET if offset is None else offset,
                1.0 if scale is None else scale)[0]
        return dicom_pixels.colour_frame(dataset, frame)[0]
    except dicom_pixels.PixelError as error:
        raise InputFileError(path, f"{error}.") from None
    except Exception as error:  # noqa: BLE001 - decoders raise many types
        text = str(error)
        truncated = "less than expected" in text or "truncated" in text
        kind = "truncated" if truncated else "cannot decode"
        raise InputFileError(path, f"{kind} Pixel Data: {type(error).__name__}: {text}") from None


def fit_to_model(pixels, input_spec):
    """Resizes/channel-matches stored pixels to the model input as float32 [H, W, C].

    Same rules as the record pipeline: bilinear resize in float32 (intensity range
    kept), grey tiled to RGB, RGB to grey by luma.
    """
    height, width, channels = input_spec
    image = tf.cast(pixels, tf.float32)
    if tuple(image.shape[:2]) != (height, width):
        image = tf.image.resize(image, (height, width), method="bilinear")
    if image.shape[-1] != channels:
        image = tf.tile(image, [1, 1, channels]) if image.shape[-1] == 1 else (
            tf.image.rgb_to_grayscale(image))
    return image.numpy()


def expand_inputs(paths):
    """Expands folders into the supported files they hold (sorted), keeping file order."""
    files = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            found = []
            for root, _, names in os.walk(path):
                for name in names:
                    if name.lower().endswith(IMAGE_SUFFIXES + ARRAY_SUFFIXES + DICOM_SUFFIXES) or (
                            "." not in name and _is_dicom(os.path.join(root, name))):
                        found.append(os.path.join(root, name))
            if not found:
                raise ValueError(f"{path}: folder holds no supported inputs. Received: {path}")
            files.extend(sorted(found))
        else:
            files.append(path)
    return files
