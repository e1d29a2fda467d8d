"""Reading 2D image files (PNG/JPEG/BMP/TIFF) into uint8/uint16 arrays with one channel policy.

Shared by the folder and CSV importers so both treat files the same way:

- Formats: PNG, JPEG (incl. MPO), BMP, TIFF, recognised by content, not by extension
  (real trees hold PNGs named `.jpg`). Anything else is rejected with the reason.
- EXIF orientation is applied, so the stored pixels look like the picture a viewer shows.
- Channels: `1` converts colour to grey (ITU-R 601-2 luma, Pillow's `convert("L")`);
  `3` replicates grey into RGB; `"auto"` picks 1 when every image is grey-ish (grey modes,
  or colour images whose channels differ by at most `grey_tolerance` on average, as
  screenshots and JPEG-saved MRI slices do) and 3 otherwise.
- Alpha (RGBA, LA, palette with transparency) is composited onto black, the background
  of medical images; fully opaque alpha therefore changes nothing.
- Palette (P) images are expanded to RGB (or RGBA when they have transparency) first.
- Bit depth: 16-bit grey (`I;16*`, or 32-bit `I` with values in 0..65535) stays uint16
  when `dtype` is `"uint16"` or `"auto"` and every image is 16-bit; 8-bit images become
  uint16 by `x * 257` (exact: 255 -> 65535) and 16-bit become uint8 by rounding `x / 257`
  when the other dtype is asked for.
- Multi-frame files, float (`F`) images and unreadable or truncated files are rejected
  (`ImageFileError` with the reason); the importers turn that into a `Rejected` line.
"""

import numpy as np

SUPPORTED_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "TIFF")
CHANNEL_POLICIES = ("auto", 1, 3)
DTYPE_POLICIES = ("auto", "uint8", "uint16")
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N")
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_EXIF_ORIENTATION = 0x0112
# Decode JPEGs at reduced size (DCT scaling) when only checking grey-ishness.
_SCAN_DRAFT_SIZE = (128, 128)


class ImageFileError(Exception):
    """A file that cannot become an image item; `str(error)` is the reason."""


def check_channels(channels):
    """Validates a channel policy (`"auto"`, 1 or 3; the strings "1"/"3" are accepted)."""
    if isinstance(channels, str) and channels.isdigit():
        channels = int(channels)
    if channels not in CHANNEL_POLICIES:
        raise ValueError(
            f"`channels` must be one of {CHANNEL_POLICIES}. Received: channels={channels!r}"
        )
    return channels


def check_dtype(dtype):
    """Validates a dtype policy (`"auto"`, `"uint8"` or `"uint16"`)."""
    if dtype not in DTYPE_POLICIES:
        raise ValueError(f"`dtype` must be one of {DTYPE_POLICIES}. Received: dtype={dtype!r}")
    return dtype


def _open(path):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
    except Image.DecompressionBombError as error:
        raise ImageFileError(f"decompression bomb refused: {error}") from None
    except UnidentifiedImageError:
        raise ImageFileError("not an image file Pillow can identify") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageFileError(f"cannot open image: {error}") from None
    if image.format not in SUPPORTED_FORMATS:
        format_name = image.format
        image.close()
        raise ImageFileError(
            f"unsupported image format {format_name}; supported: {list(SUPPORTED_FORMATS)}"
        )
    frames = getattr(image, "n_frames", 1)
    # MPO (multi-picture JPEG from cameras) keeps its first frame, the main picture.
    if frames > 1 and image.format != "MPO":
        image.close()
        raise ImageFileError(f"multi-frame {image.format} ({frames} frames); expected one 2D image")
    return image


def _is_sixteen_bit(image):
    return image.mode in SIXTEEN_BIT_MODES


def probe(path, grey_tolerance=8.0):
    """Returns `(is_grey, is_sixteen_bit)` for one file (cheap: reduced JPEG decode).

    Raises:
        ImageFileError: when the file cannot be read.
    """
    from PIL import Image

    image = _open(path)
    try:
        sixteen_bit = _is_sixteen_bit(image)
        if image.mode in GREY_MODES:
            return True, sixteen_bit
        if image.format in ("JPEG", "MPO"):
            image.draft("RGB", _SCAN_DRAFT_SIZE)  # DCT-domain downscale while decoding
        image.thumbnail(_SCAN_DRAFT_SIZE, Image.Resampling.NEAREST)
        rgb = _to_rgb(image)
        return _is_greyish(np.asarray(rgb), grey_tolerance), sixteen_bit
    except ImageFileError:
        raise
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, ...
        raise ImageFileError(f"cannot decode image: {error}") from None
    finally:
        image.close()


def _is_greyish(rgb, grey_tolerance):
    # Largest deviation of a channel from the pixel's channel mean, averaged over pixels
    # (channel planes, not a reduction over the short last axis, which is slow).
    red, green, blue = (rgb[..., k].astype(np.float32) for k in range(3))
    mean = (red + green + blue) / 3.0
    deviation = np.maximum(np.maximum(np.abs(red - mean), np.abs(green - mean)),
                           np.abs(blue - mean))
    return float(deviation.mean()) <= grey_tolerance


def _flatten_alpha(image):
    """RGBA/LA -> RGB/L composited onto black."""
    from PIL import Image

    base_mode = "RGB" if image.mode in ("RGBA", "RGBa") else "L"
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(background, rgba).convert(base_mode)


def _to_rgb(image):
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        image = _flatten_alpha(image.convert("RGBA") if image.mode == "PA" else image)
    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(image).astype(np.float64) / 257.0
        image = _from_array(np.clip(np.rint(grey), 0, 255).astype(np.uint8))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def _from_array(array):
    from PIL import Image

    return Image.fromarray(array)


def _sixteen_bit_array(image, where):
    array = np.asarray(image)
    if array.dtype != np.uint16:
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ImageFileError(
                f"32-bit integer image with values {array.min()}..{array.max()} outside "
                "0..65535 (uint16); convert it to 16-bit first"
            )
        array = array.astype(np.uint16)
    return array


def load(path, channels, dtype):
    """Reads one image file as an HxWxC array.

    Args:
        path: file path.
        channels: 1 or 3 (resolve `"auto"` first with `scan`).
        dtype: `"uint8"` or `"uint16"` (resolve `"auto"` first).

    Returns:
        `np.ndarray` of shape (H, W, channels) and the requested dtype.

    Raises:
        ImageFileError: the file is not a readable supported 2D image (reason in the
            message).
    """
    from PIL import ImageOps

    image = _open(path)
    try:
        image.load()
        if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        if image.mode == "F":
            raise ImageFileError("32-bit float image (mode F); store it as 8 or 16 bit")
        if image.mode in SIXTEEN_BIT_MODES:
            grey16 = _sixteen_bit_array(image, path)
            array = grey16 if dtype == "uint16" else _sixteen_to_eight(grey16)
            array = array[..., np.newaxis]
            if channels == 3:
                array = np.repeat(array, 3, axis=-1)
            return np.ascontiguousarray(array)
        if channels == 1:
            if image.mode in ("RGBA", "RGBa", "LA", "La", "PA", "P", "CMYK", "YCbCr"):
                image = _to_rgb(image)
            array = np.asarray(image.convert("L"))[..., np.newaxis]
        else:
            array = np.asarray(_to_rgb(image))
        if dtype == "uint16":
            array = array.astype(np.uint16) * np.uint16(257)
        return np.ascontiguousarray(array)
    except ImageFileError:
        raise
    except Exception as error:  # truncated data, bad headers, decompression bombs, ...
        raise ImageFileError(f"cannot decode image: {error}") from None
    finally:
        image.close()


def _sixteen_to_eight(array):
    return np.clip(np.rint(array.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def scan(paths, channels, dtype, grey_tolerance=8.0):
    """Resolves `"auto"` channel and dtype policies over all readable files.

    Unreadable files are skipped here (the importer rejects them when it yields).

    Returns:
        `(channels, dtype)` with no `"auto"` left.

    Raises:
        ValueError: `dtype="auto"` and the files mix 8-bit and 16-bit images.
    """
    if channels != "auto" and dtype != "auto":
        return channels, dtype
    all_grey, kinds = True, set()
    example = {}
    for path in paths:
        try:
            if channels == "auto" and all_grey:
                grey, sixteen_bit = probe(path, grey_tolerance)
                all_grey = all_grey and grey
            else:
                image = _open(path)
                sixteen_bit = _is_sixteen_bit(image)
                image.close()
        except ImageFileError:
            continue
        kind = "uint16" if sixteen_bit else "uint8"
        kinds.add(kind)
        example.setdefault(kind, path)
        if channels != "auto" and len(kinds) > 1:
            break
    if dtype == "auto":
        if len(kinds) > 1:
            raise ValueError(
                "the images mix 8-bit and 16-bit files (e.g. "
                f"{example['uint8']} and {example['uint16']}); pass dtype='uint8' or "
                "dtype='uint16' (CLI: --dtype) to convert them all. Received: dtype='auto'"
            )
        dtype = kinds.pop() if kinds else "uint8"
    if channels == "auto":
        channels = 1 if all_grey else 3
    return channels, dtype
