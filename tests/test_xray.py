"""X-ray adapter: DICOM LUTs on values, MONOCHROME1, 8/16-bit images, resize+pad, CLAHE, PHI."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

import medfm.modalities.xray  # noqa: F401  (registers "xray")
from medfm.errors import ConfigError, DataError
from medfm.registry import get_modality

from conftest import dicom_as

PHI_NAME = "Roe^Richard"


def write_dicom(path: Path, arr: np.ndarray, *, photometric: str = "MONOCHROME2", window=None, patient=None,
                spacing=(0.14, 0.14)) -> Path:
    ds = copy.deepcopy(pydicom.dcmread(get_testdata_file("MR_small.dcm")))
    for kw in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
        if kw in ds:
            delattr(ds, kw)
    ds.set_pixel_data(arr.astype(np.uint16), photometric_interpretation=photometric, bits_stored=16)
    ds.Modality = "DX"
    ds.ImagerPixelSpacing = list(spacing)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if patient is not None:
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient, "ID-998877", "19500101"
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(h=16, w=16, hi=4000):
    return np.linspace(0, hi, h * w).reshape(h, w).round()


def test_dicom_modality_lut_values(tmp_path):
    rec = get_modality("xray").read(dicom_as(get_testdata_file("CT_small.dcm"), "DX", tmp_path))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    np.testing.assert_allclose(rec.data, ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    assert rec.meta["pixel_spacing"] == pytest.approx([float(v) for v in ds.PixelSpacing])


def test_voi_window_matches_dicom_formula(tmp_path):
    x = ramp()
    c, w = 2000.0, 1000.0
    path = write_dicom(tmp_path / "win.dcm", x, window=(c, w))
    xr = get_modality("xray", size=16, normalize="none")
    rec = xr.read(path)
    assert rec.meta["voi_applied"]
    # DICOM PS3.3 C.11.2.1.2 linear window, as a fraction of the output range
    ref = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    out = xr.preprocess(rec)["x"][0].numpy()
    np.testing.assert_allclose(out, ref, atol=2e-4)


def test_monochrome1_is_inverted(tmp_path):
    x = ramp(hi=1000)
    p1 = write_dicom(tmp_path / "m1.dcm", x, photometric="MONOCHROME1")
    p2 = write_dicom(tmp_path / "m2.dcm", x.max() + x.min() - x, photometric="MONOCHROME2")
    xr = get_modality("xray", size=16)
    a, b = xr.load(p1)["x"], xr.load(p2)["x"]
    torch.testing.assert_close(a, b)
    # the lowest stored value (dense bone in MONOCHROME1) is the brightest output pixel
    assert a.flatten().argmax() == int(np.argmin(x))
    assert xr.read(p1).meta["inverted"] and not xr.read(p2).meta["inverted"]


def test_png_8_and_16_bit_values(tmp_path):
    a8 = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    a16 = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(a8).save(tmp_path / "a8.png")
    Image.fromarray(a16).save(tmp_path / "a16.png")
    Image.fromarray(a16).save(tmp_path / "a16.tif")
    xr = get_modality("xray", size=8, normalize="none")
    np.testing.assert_array_equal(xr.read(tmp_path / "a8.png").data, a8)
    np.testing.assert_array_equal(xr.read(tmp_path / "a16.png").data, a16)
    np.testing.assert_array_equal(xr.read(tmp_path / "a16.tif").data, a16)
    np.testing.assert_allclose(xr.load(tmp_path / "a16.png")["x"][0].numpy(), a16 / a16.max(), atol=1e-6)


def test_aspect_preserving_resize_and_padding(tmp_path):
    img = np.full((20, 40), 200, np.uint8)
    img[:, :20] = 50
    Image.fromarray(img).save(tmp_path / "wide.png")
    x = get_modality("xray", size=32, normalize="none").load(tmp_path / "wide.png")["x"][0]
    assert x.shape == (32, 32)
    # 20x40 → 16x32 content, padded by 8 rows above and below
    assert float(x[:8].abs().max()) == 0.0 and float(x[24:].abs().max()) == 0.0
    assert float(x[8:24, 20:].min()) == pytest.approx(1.0) and float(x[8:24, :12].max()) == pytest.approx(0.0)


def test_meanstd_normalisation_and_tower(tmp_path):
    xr = get_modality("xray", size=32)
    src = dicom_as(get_testdata_file("MR_small.dcm"), "DX", tmp_path)
    x = xr.load(src)["x"]
    raw = get_modality("xray", size=32, normalize="none").load(src)["x"]
    torch.testing.assert_close(x, (raw - 0.5) / 0.5)
    cfg = xr.tower_config()
    assert cfg["embedder"] == {"type": "patch2d", "in_chans": 1, "input_size": [32, 32], "patch_size": [16, 16]}


def test_clahe_increases_local_contrast(tmp_path):
    pytest.importorskip("skimage", reason="CLAHE needs scikit-image or opencv (medfm[oct-vendor])")
    rng = np.random.default_rng(0)
    img = (100 + 10 * rng.random((64, 64))).astype(np.uint8)
    img[:, 32:] += 100
    Image.fromarray(img).save(tmp_path / "flat.png")
    plain = get_modality("xray", size=64, normalize="none").load(tmp_path / "flat.png")["x"][0]
    eq = get_modality("xray", size=64, normalize="none", clahe=True).load(tmp_path / "flat.png")["x"][0]
    assert float(eq[:, :32].std()) > 1.5 * float(plain[:, :32].std())


def test_phi_not_in_meta_or_errors(tmp_path):
    p = write_dicom(tmp_path / "phi.dcm", ramp(), patient=PHI_NAME)
    rec = get_modality("xray").read(p)
    text = repr(rec.meta)
    assert PHI_NAME not in text and "ID-998877" not in text and "19500101" not in text
    ds = pydicom.dcmread(p)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    with pytest.raises(DataError) as ei:
        get_modality("xray").load(tmp_path / "nopix.dcm", sample_id="case-1")
    assert "no pixel data" in str(ei.value) and PHI_NAME not in str(ei.value)


def test_bad_inputs(tmp_path):
    xr = get_modality("xray")
    cut = dicom_as(get_testdata_file("MR_small.dcm"), "DX", tmp_path, "DX_truncated.dcm")
    cut.write_bytes(cut.read_bytes()[: int(cut.stat().st_size * 0.6)])
    with pytest.raises(DataError, match=r"DX_truncated.dcm.*(truncated|pixel data holds)"):
        xr.load(cut)
    with pytest.raises(DataError, match=r"MR_truncated.dcm.*DICOM Modality 'MR' is not read by the xray adapter"):
        xr.load(get_testdata_file("MR_truncated.dcm"))
    with pytest.raises(DataError, match="not found"):
        xr.load("/nonexistent/file.png")
    with pytest.raises(ConfigError):
        get_modality("xray", channels=2)
