"""What a DICOM dataset is before its pixels are decoded: an image to convert or not.

The checks `DicomSource` runs on each file, in order, each giving the reason a file
is rejected: not an image object (SEG, SR, RT objects, presentation states, ...),
no Pixel Data, no available decoder for its transfer syntax (a missing one is
inferred from the encoding pydicom detected), an unsupported photometric
interpretation or bit depth. `phi_values` lists the text values that may be PHI,
which are masked in any rejection reason.

A code value read from a file (Photometric Interpretation, Modality, a transfer
syntax or SOP class UID) reaches a reason, a record or the manifest only when it is a
term the standard defines (`PHOTOMETRIC_TERMS`, `MODALITIES`, pydicom's UID
dictionary); any other value is described by its kind and a salted hash
(`describe_code`), since a malformed export may hold a name or an ID there.
"""

import re

from kmedimg.data.sources import privacy

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
#: Every Photometric Interpretation the standard defines (PS3.3 C.7.6.3.1.2), also
#: the retired ones: values that may be echoed in a reason.
PHOTOMETRIC_TERMS = PHOTOMETRICS + (
    "YBR_PARTIAL_422", "YBR_PARTIAL_420", "HSV", "ARGB", "CMYK", "XYB",
)
#: Modality defined terms (PS3.3 C.7.3.1.1.1, current and retired).
MODALITIES = frozenset("""
    ANN AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DMS DG DOC DX ECG EEG EMG EOG EPS ES
    FID GM HC HD IO IOL IVOCT IVUS KER KO LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV
    OPTENF OPV OSS OT PA PLAN POS PR PT PX REG RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN
    RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA
    XAPROTOCOL XC
    AS CD CF CP CS DD DF DM DS EC FA FS LP MA MS OPR ST VF
""".split())
#: Value representations whose values may be PHI; masked in any error reason.
PHI_VRS = ("PN", "DA", "DT", "TM", "LO", "SH", "LT", "ST", "UT", "AS", "UC", "UR", "AE")
_VALID = {"CS": re.compile(r"[A-Z0-9_ ]{0,16}"), "UI": re.compile(r"[0-9.]{0,64}")}


def describe_code(value, known, salt):
    """`value` when it is in `known`, else what it is without saying it.

    Args:
        value: a code read from a file (str).
        known: the values that may be echoed (a container).
        salt: the salt of the value's hash (bytes).

    Returns:
        `value`, `"missing"`, or e.g. `"not a defined term (text of 18 characters,
        value hash 1a2b3c4d5e6f7a8b)"`; the hash lets files with the same value be
        grouped by whoever holds the salt and the file.
    """
    value = str(value or "").strip()
    if not value:
        return "missing"
    if value in known:
        return value
    if _VALID["UI"].fullmatch(value):
        kind = f"a UID of {len(value)} characters"
    else:
        kind = f"text of {len(value)} characters"
    return f"not a defined term ({kind}, value hash {privacy.salted_hash(salt, 'code', value)})"


def describe_uid(uid, salt):
    """A UID's name and value when pydicom knows it, else `describe_code`'s text."""
    from pydicom.uid import UID_dictionary

    uid = str(uid or "").strip()
    if uid in UID_dictionary:
        return f"{UID_dictionary[uid][0]} ({uid})"
    return describe_code(uid, (), salt).replace("not a defined term", "not a known UID")


def is_non_image(sop_class):
    sop_class = str(sop_class)
    return any(
        sop_class == prefix.rstrip(".") or sop_class.startswith(prefix)
        for prefix in NON_IMAGE_SOP_PREFIXES
    )


def uid_name(uid):
    from pydicom.uid import UID

    name = UID(str(uid)).name
    return name if name and name != str(uid) else "unknown SOP class"


def phi_values(ds):
    """Text values of the dataset that may be PHI (used to scrub error reasons)."""
    from pydicom.multival import MultiValue

    values = []
    try:
        for element in ds.iterall():
            if element.VR not in PHI_VRS + tuple(_VALID) or element.value in (None, ""):
                continue
            value = element.value
            items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
            for item in items:
                # A CS/UI value outside its character set is free text: mask it too.
                if element.VR in _VALID and _VALID[element.VR].fullmatch(str(item).strip()):
                    continue
                values.append(str(item))
                if element.VR == "PN":
                    values.extend(part for part in str(item).replace("=", "^").split("^") if part)
    except Exception:  # noqa: BLE001 - a damaged dataset: mask what was collected
        pass
    return values


def infer_transfer_syntax(ds):
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


def object_problem(ds, has_preamble, salt):
    """Why the dataset is not an image to convert, or None (`salt`: of value hashes)."""
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    media_class = str(meta.get("MediaStorageSOPClassUID", "") or "").strip() if meta else ""
    has_pixels = "PixelData" in ds
    if not has_preamble and not (sop_class or has_pixels):
        return (
            "not a DICOM file: no DICM preamble, and a forced read found no DICOM image "
            "(no SOP Class UID, no Pixel Data)"
        )
    for uid in (sop_class, media_class):
        if uid and is_non_image(uid):
            return f"non-image object: {describe_uid(uid, salt)}"
    if not has_pixels:
        kind = next((k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds), None)
        if kind:
            return f"unsupported pixel data: {kind} (float images) is not supported"
        return (
            "no Pixel Data: the file holds no image"
            + (" (the file may be truncated)" if sop_class and not is_non_image(sop_class) else "")
        )
    return None


def check_transfer_syntax(ds, facts, salt):
    """`(transfer syntax UID, None)` with an available decoder, or `(None, reason)`."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import UID, UID_dictionary

    meta = getattr(ds, "file_meta", None)
    transfer_syntax = str(meta.get("TransferSyntaxUID", "") or "") if meta else ""
    if not transfer_syntax:
        if not infer_transfer_syntax(ds):
            return None, "unsupported transfer syntax: missing, and cannot be inferred"
        facts["transfer_syntax_inferred"] = True
        transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
    if transfer_syntax not in UID_dictionary:
        return None, (
            f"unsupported transfer syntax: {describe_uid(transfer_syntax, salt)} has no "
            "pixel data decoder"
        )
    try:
        decoder = get_decoder(UID(transfer_syntax))
    except NotImplementedError:
        return None, (
            f"unsupported transfer syntax: {describe_uid(transfer_syntax, salt)} has no "
            "pixel data decoder"
        )
    if not decoder.is_available:
        return None, (
            f"unsupported transfer syntax: {UID(transfer_syntax).name} ({transfer_syntax}) "
            f"needs one of {decoder.missing_dependencies} (pip install 'kmedimg[dicom]')"
        )
    return transfer_syntax, None


def pixel_problem(ds, photometric, window, salt):
    """Why the pixels cannot be stored (photometric, bit depth), or None."""
    if photometric not in PHOTOMETRICS:
        return (
            "unsupported photometric interpretation: "
            f"{describe_code(photometric, PHOTOMETRIC_TERMS, salt)}; "
            f"supported {list(PHOTOMETRICS)}"
        )
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 0)) or 0)
    if photometric.startswith("MONOCHROME") and bits > 16 and window is None:
        return (
            f"bit depth: Bits Stored {bits} > 16 cannot be stored losslessly in uint16; "
            "pass a window (window=, CLI --window/--window-preset) to store 8 bits"
        )
    return None
