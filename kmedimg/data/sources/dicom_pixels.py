"""DICOM pixel handling: decoded frame -> the array kmedimg stores.

The documented transforms, in order (PS3.3 C.7.6.3, C.11.1, C.11.2):

1. Decode with pydicom >= 3 (pylibjpeg plugins for compressed transfer syntaxes).
   YBR_FULL / YBR_FULL_422 are converted to RGB by pydicom (`as_rgb=True`); JPEG 2000
   YBR_ICT / YBR_RCT come out of the decoder as RGB. Big-endian arrays become native.
2. Colour (3 samples): stored as RGB, uint8 (8 bits) or uint16 (9-16 bits).
   PALETTE COLOR: the palette LUTs are applied (pydicom `apply_color_lut`) -> RGB,
   uint8 for 8-bit palettes, uint16 for 16-bit ones. No window is applied to colour.
3. Monochrome, modality transform: the Modality LUT Sequence when present (pydicom
   `apply_modality_lut`), else `real = stored * RescaleSlope + RescaleIntercept`
   (HU for CT; enhanced multi-frame files take the slope/intercept of the frame from
   the Per-frame or Shared Functional Groups).
4. Monochrome, output:
   - full bit depth (default): `value = rint(real' / scale) + offset`, clipped to
     0..65535 and stored as uint16, where `real'` is `real` for MONOCHROME2 and, for
     MONOCHROME1, `real_min + real_max - real` (inverted within the range the file's
     Bits Stored / Pixel Representation can hold, after the modality transform).
     With the defaults `offset=1024, scale=1`: `HU = stored - 1024`, so air (-1000 HU)
     is 24 and every HU >= -1024 is kept exactly; values below -1024 (the padding
     outside a CT's field of view) and above 64511 are clipped, and the number of
     clipped pixels is reported. Undo with `real = (stored - offset) * scale`.
   - windowed (`window=(center, width)`, a named preset, or `"file"` for the file's
     own VOI LUT / Window Center & Width): uint8 by the DICOM window formula with
     output range 0..255 (LINEAR, LINEAR_EXACT or SIGMOID, as the file's VOI LUT
     Function says for "file"; LINEAR otherwise), rounded half to even; a VOI LUT
     Sequence (preferred over a window in the file) is applied by pydicom and its
     output scaled from 0..2**bits-1 to 0..255. MONOCHROME1 images are inverted
     after windowing (`255 - value`), so bright always means dense.
"""

import numpy as np

#: Named CT windows as (center, width) in HU (Radiopaedia, "Windowing (CT)").
WINDOW_PRESETS = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "temporal_bone": (600.0, 2800.0),
    "head_soft_tissue": (40.0, 380.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (50.0, 400.0),
    "liver": (30.0, 150.0),
    "spine_soft_tissue": (50.0, 250.0),
    "bone": (400.0, 1800.0),
}
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
DEFAULT_OFFSET = 1024
UINT16_MAX = 65535


class PixelError(Exception):
    """A frame that cannot become an image; `str(error)` is the reason (no PHI)."""


def parse_window(window):
    """Normalises a window request.

    Args:
        window: None (full bit depth), `"file"` (the file's VOI LUT or window), a
            preset name from `WINDOW_PRESETS`, a `(center, width)` pair, or a string
            `"C,W"` (e.g. `"-600,1500"`).

    Returns:
        None, `"file"`, or `(name, center, width)` with name the preset or `"explicit"`.

    Raises:
        ValueError: for an unknown preset or a malformed window.
    """
    if window is None or window == "file":
        return window
    if isinstance(window, str):
        key = window.strip().lower()
        if key in WINDOW_PRESETS:
            return (key, *WINDOW_PRESETS[key])
        parts = key.split(",")
        if len(parts) != 2:
            raise ValueError(
                "`window` must be None, 'file', a preset of "
                f"{sorted(WINDOW_PRESETS)} or 'CENTER,WIDTH'. Received: window={window!r}"
            )
        try:
            window = (float(parts[0]), float(parts[1]))
        except ValueError:
            raise ValueError(
                f"`window` 'CENTER,WIDTH' must hold two numbers. Received: window={window!r}"
            ) from None
    try:
        center, width = (float(value) for value in window)
    except (TypeError, ValueError):
        raise ValueError(
            "`window` must be None, 'file', a preset name or a (center, width) pair. "
            f"Received: window={window!r}"
        ) from None
    if not width >= 1:
        raise ValueError(f"`window` width must be >= 1. Received: window={window!r}")
    return ("explicit", center, width)


def apply_window(values, center, width, function="LINEAR"):
    """The DICOM VOI window (PS3.3 C.11.2.1.2) with output range 0..255 as uint8.

    Args:
        values: real-valued (modality) array.
        center: window center.
        width: window width.
        function: `"LINEAR"`, `"LINEAR_EXACT"` or `"SIGMOID"`. Defaults to `"LINEAR"`.
    """
    values = np.asarray(values, dtype=np.float64)
    function = (function or "LINEAR").upper()
    if function == "LINEAR":
        if width < 1:
            raise PixelError(f"window: LINEAR window width must be >= 1, got {width}")
        center, width = center - 0.5, width - 1.0
    elif function in ("LINEAR_EXACT", "SIGMOID"):
        if width <= 0:
            raise PixelError(f"window: {function} window width must be > 0, got {width}")
    else:
        raise PixelError(  # a value outside the defined terms may be free text: not echoed
            f"window: unsupported VOI LUT Function (not a defined term, {len(function)} "
            f"characters); supported {list(VOI_FUNCTIONS)}"
        )
    if function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif width == 0:  # LINEAR with width 1: a threshold
        out = np.where(values <= center, 0.0, 255.0)
    else:
        out = np.where(
            values <= center - width / 2,
            0.0,
            np.where(values > center + width / 2, 255.0, ((values - center) / width + 0.5) * 255.0),
        )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_uint16(real, offset=DEFAULT_OFFSET, scale=1.0):
    """`rint(real / scale) + offset` clipped to 0..65535; returns (uint16 array, clipped count)."""
    values = np.rint(np.asarray(real, dtype=np.float64) / scale) + offset
    clipped = int(np.count_nonzero((values < 0) | (values > UINT16_MAX)))
    return np.clip(values, 0, UINT16_MAX).astype(np.uint16), clipped


def native(array):
    """The array in native byte order (pydicom returns big-endian data as `>u2`)."""
    if array.dtype.byteorder not in ("=", "|") and array.dtype.byteorder != (
        "<" if np.little_endian else ">"
    ):
        return array.astype(array.dtype.newbyteorder("="))
    return array


def functional_group_item(ds, index, keyword):
    """First item of `keyword` for frame `index` from the Per-frame, then Shared, groups."""
    for group_keyword, position in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = ds.get(group_keyword)
        if groups and len(groups) > position:
            sequence = groups[position].get(keyword)
            if sequence:
                return sequence[0]
    return None


def rescale_parameters(ds, index):
    """`(slope, intercept)` of frame `index` (top level, else the functional groups)."""
    source = ds if "RescaleSlope" in ds or "RescaleIntercept" in ds else None
    if source is None:
        source = functional_group_item(ds, index, "PixelValueTransformationSequence")
    if source is None:
        return 1.0, 0.0
    slope = source.get("RescaleSlope", 1.0)
    intercept = source.get("RescaleIntercept", 0.0)
    slope = 1.0 if slope in (None, "") else float(slope)
    intercept = 0.0 if intercept in (None, "") else float(intercept)
    return slope, intercept


def file_window(ds, index):
    """`(center, width, function)` of the file's first window for frame `index`, or None."""
    source = ds if "WindowCenter" in ds and "WindowWidth" in ds else None
    if source is None:
        source = functional_group_item(ds, index, "FrameVOILUTSequence")
    if source is None or source.get("WindowCenter") in (None, "") or source.get(
        "WindowWidth"
    ) in (None, ""):
        return None

    def first(value):
        try:
            return float(value[0])
        except TypeError:
            return float(value)

    function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    return first(source.WindowCenter), first(source.WindowWidth), function


def modality_range(ds, slope, intercept):
    """(low, high) of the real values the file's stored bits can hold."""
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        low, high = 0, 2**bits - 1
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return float(ends[0]), float(ends[1])


def monochrome_frame(ds, frame, index, window, offset=DEFAULT_OFFSET, scale=1.0):
    """One decoded monochrome frame -> (uint16 or uint8 HxW array, facts dict).

    Args:
        ds: the pydicom Dataset.
        frame: the decoded HxW frame (stored values).
        index: frame index (for functional-group rescale / window).
        window: result of `parse_window`.
        offset: full-depth storage offset. Defaults to `1024`.
        scale: full-depth storage scale. Defaults to `1.0`.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi

    facts = {}
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if ds.get("ModalityLUTSequence"):
        real = apply_modality_lut(frame, ds).astype(np.float64)
        slope, intercept = 1.0, 0.0
        facts["modality_lut"] = "sequence"
    else:
        slope, intercept = rescale_parameters(ds, index)
        real = frame.astype(np.float64) * slope + intercept
        facts["rescale"] = [slope, intercept]
    inverted = photometric == "MONOCHROME1"
    facts["inverted"] = inverted
    if window is None:
        if inverted:
            low, high = modality_range(ds, slope, intercept)
            real = (low + high) - real
        stored, clipped = to_uint16(real, offset, scale)
        facts.update(intensity="full", offset=offset, scale=scale, clipped_pixels=clipped)
        return stored, facts
    if window == "file":
        if ds.get("VOILUTSequence") and ds.VOILUTSequence[0].get("LUTData") is not None:
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            looked_up = apply_voi(np.rint(real).astype(np.int64), ds, 0)
            out = np.clip(np.rint(looked_up * (255.0 / (2**bits - 1))), 0, 255).astype(np.uint8)
            facts.update(intensity="window", window_source="file VOI LUT Sequence")
        else:
            found = file_window(ds, index)
            if found is None:
                raise PixelError(
                    "no window in file: window='file' asked for the file's VOI LUT or "
                    "Window Center/Width, and the file has neither; pass a preset or C,W"
                )
            center, width, function = found
            out = apply_window(real, center, width, function)
            facts.update(intensity="window", window_source="file", window=[center, width],
                         voi_function=function)
    else:
        name, center, width = window
        out = apply_window(real, center, width)
        facts.update(intensity="window", window_source=name, window=[center, width])
    if inverted:
        out = 255 - out
    return out, facts


def colour_frame(ds, frame):
    """One decoded colour or palette frame -> (RGB uint8/uint16 array, facts dict)."""
    from pydicom.pixels import apply_color_lut

    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if photometric == "PALETTE COLOR":
        rgb = native(apply_color_lut(frame, ds))
        return rgb.astype(np.uint8 if rgb.dtype.itemsize == 1 else np.uint16), {
            "intensity": "palette"
        }
    frame = native(frame)
    if frame.dtype.itemsize > 2 or frame.dtype.kind not in "ui":
        raise PixelError(
            f"bit depth: {frame.dtype.itemsize * 8}-bit colour cannot be stored losslessly "
            "in uint16"
        )
    return frame.astype(np.uint8 if frame.dtype.itemsize == 1 else np.uint16), {
        "intensity": "rgb"
    }
