"""The optional tensorflow-io DICOM decoder: refused clearly where tfio cannot load, and
pixel-for-pixel against pydicom on pydicom-data's files where it can (TensorFlow 2.16)."""

import os
import sys
import types

import numpy as np
import pydicom
import pytest
import tensorflow as tf
from pydicom.data import get_testdata_file, get_testdata_files

from kmedimg.data.sources import dicom_tfio

# Measured with TensorFlow 2.16.2, tensorflow-io 0.37.1, pydicom 3.0.2, pydicom-data 1.0.0,
# pylibjpeg 2.1 (openjpeg 2.3, libjpeg 2.2, rle 2.0), numpy 1.26.4: the files whose
# decode_frames output equals pydicom's pixel_array bit for bit (dtype, shape, values).
BIT_FOR_BIT = {
    "JPEG-LL.dcm", "JPEG2000_UNC.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "SC_rgb.dcm",
    "SC_rgb_16bit.dcm", "SC_rgb_16bit_2frame.dcm", "SC_rgb_2frame.dcm",
    "SC_rgb_dcmtk_ebcr_dcmd.dcm", "SC_rgb_dcmtk_ebcyn1_dcmd.dcm",
    "SC_rgb_dcmtk_ebcyn2_dcmd.dcm", "SC_rgb_dcmtk_ebcynp_dcmd.dcm",
    "SC_rgb_dcmtk_ebcys2_dcmd.dcm", "SC_rgb_dcmtk_ebcys4_dcmd.dcm", "SC_rgb_expb.dcm",
    "SC_rgb_expb_16bit.dcm", "SC_rgb_expb_16bit_2frame.dcm", "SC_rgb_expb_2frame.dcm",
    "SC_rgb_gdcm2k_uncompressed.dcm", "US1_UNCI.dcm", "US1_UNCR.dcm", "color-pl.dcm",
    "color-px.dcm", "emri_small.dcm", "emri_small_RLE.dcm", "emri_small_big_endian.dcm",
    "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm",
    "explicit_VR-UN.dcm", "vlut_04.dcm", "ExplVR_BigEnd.dcm", "J2K_pixelrep_mismatch.dcm",
    "JPEG2000.dcm", "JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm", "MR_small.dcm",
    "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
    "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm", "SC_rgb_gdcm_KY.dcm", "SC_rgb_jls_lossy_line.dcm",
    "SC_rgb_jls_lossy_sample.dcm", "SC_rgb_jpeg_dcmd.dcm", "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_rle.dcm", "SC_rgb_rle_16bit.dcm", "SC_rgb_rle_16bit_2frame.dcm",
    "SC_rgb_rle_2frame.dcm", "SC_rgb_rle_32bit.dcm", "SC_rgb_rle_32bit_2frame.dcm",
    "SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm",
    "dicomdirtests/98892003/MR1/15820", "dicomdirtests/98892003/MR1/4919",
    "dicomdirtests/98892003/MR1/5641", "dicomdirtests/98892003/MR2/15970",
    "dicomdirtests/98892003/MR2/4950", "dicomdirtests/98892003/MR2/4981",
    "dicomdirtests/98892003/MR2/5011", "dicomdirtests/98892003/MR2/6273",
    "dicomdirtests/98892003/MR2/6605", "dicomdirtests/98892003/MR2/6935",
    "dicomdirtests/98892003/MR700/4467", "dicomdirtests/98892003/MR700/4528",
    "dicomdirtests/98892003/MR700/4558", "dicomdirtests/98892003/MR700/4588",
    "dicomdirtests/98892003/MR700/4618", "dicomdirtests/98892003/MR700/4648",
    "dicomdirtests/98892003/MR700/4678", "examples_rgb_color.dcm", "image_dfl.dcm",
    "rtdose.dcm", "rtdose_1frame.dcm", "rtdose_rle.dcm", "rtdose_rle_1frame.dcm",
}
# Lossy JPEG: DCMTK's IJG decoder and pylibjpeg's libjpeg round a few pixels differently.
OFF_BY_ONE = {"JPGExtended.dcm", "SC_jpeg_no_color_transform.dcm",
              "SC_jpeg_no_color_transform_2.dcm", "SC_rgb_dcmtk_+eb+cr.dcm",
              "SC_rgb_jpeg_app14_dcmd.dcm"}
ROOTS = ("data_store/data/", "pydicom/data/test_files/")


def _name(file):
    for root in ROOTS:
        if file.startswith(root):
            return file[len(root):]
    return file


def _tfio_or_skip():
    try:
        return dicom_tfio.load_tfio()
    except ImportError as error:
        # CI runs TensorFlow 2.21, where tensorflow-io 0.37.1 cannot load: measured, not
        # a missing install (see the module docstring).
        pytest.skip(f"tensorflow-io does not load here: {error}")


def test_refused_with_versions_when_tensorflow_io_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_io", None)
    with pytest.raises(ImportError) as caught:
        dicom_tfio.load_tfio()
    message = str(caught.value)
    assert "tensorflow-io 0.37.1" in message and "TensorFlow 2.16" in message
    assert f"TensorFlow {tf.__version__}" in message and "pydicom decoder" in message


def test_refused_with_versions_when_the_kernels_do_not_load(monkeypatch):
    # What tensorflow-io 0.37.1 does under TensorFlow 2.21: import works, ops raise.
    symbol = "libtensorflow_io.so: undefined symbol: _ZNK10tensorflow4data11DatasetBase8Final"

    class Ops(types.ModuleType):
        def __getattr__(self, name):
            raise NotImplementedError(f"unable to open file: libtensorflow_io.so\n{symbol}")

    fake = types.ModuleType("tensorflow_io")
    fake.__version__ = "0.37.1"
    fake.__path__ = []
    ops = types.ModuleType("tensorflow_io.python.ops")
    ops.core_ops = Ops("tensorflow_io.python.ops.core_ops")
    monkeypatch.setitem(sys.modules, "tensorflow_io", fake)
    monkeypatch.setitem(sys.modules, "tensorflow_io.python", types.ModuleType("python"))
    monkeypatch.setitem(sys.modules, "tensorflow_io.python.ops", ops)
    with pytest.raises(ImportError) as caught:
        dicom_tfio.decode_frames(b"", None)
    message = str(caught.value)
    assert f"tensorflow-io 0.37.1 does not load with TensorFlow {tf.__version__}" in message
    assert "tensorflow<2.17" in message and "undefined symbol" in message


@pytest.mark.parametrize("name,reason", [
    ("CT_small.dcm", "modality rescale"),
    ("OBXXXX1A.dcm", "PALETTE COLOR"),
    ("SC_ybr_full_uncompressed.dcm", "YBR_FULL"),
    ("RG1_UNCR.dcm", "MONOCHROME1"),
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", "overlay"),
    ("rtdose_expb.dcm", "Big Endian"),
    ("eCT_Supplemental.dcm", "per-frame"),
])
def test_files_tfio_would_decode_differently_are_refused(name, reason):
    ds = pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True)
    with pytest.raises(dicom_tfio.TfioDecodeError, match=reason):
        dicom_tfio.check_supported(ds)


@pytest.mark.parametrize("name", ["MR_small.dcm", "emri_small.dcm", "SC_rgb.dcm", "rtdose.dcm"])
def test_files_tfio_decodes_exactly_are_accepted(name):
    dicom_tfio.check_supported(pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True))


def test_decode_frames_matches_pixel_array():
    _tfio_or_skip()
    path = get_testdata_file("emri_small.dcm")
    ds = pydicom.dcmread(path)
    frames = dicom_tfio.decode_frames(path, ds, indices=[0, 9])
    np.testing.assert_array_equal(np.stack(frames), ds.pixel_array[[0, 9]])
    signed = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    (frame,) = dicom_tfio.decode_frames(get_testdata_file("MR_small.dcm"), signed)
    assert frame.dtype == np.int16
    np.testing.assert_array_equal(frame, signed.pixel_array)


def test_every_pydicom_data_file_against_pydicom():
    _tfio_or_skip()
    paths = sorted(p for p in get_testdata_files() if os.path.isfile(p))
    results = dicom_tfio.compare_with_pydicom(paths, root=os.path.commonpath(paths))
    by_status = {}
    for row in results:
        by_status.setdefault(row["status"], set()).add(_name(row["file"]))
    assert by_status["match"] == BIT_FOR_BIT
    assert by_status.get("differ", set()) <= OFF_BY_ONE
    for row in results:
        if row["status"] == "differ":
            assert row["detail"].endswith("max |diff| 1"), row
