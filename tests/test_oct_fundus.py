"""OCT and en-face retinal adapters: B-scan order, frame resampling, DICOM/array/vendor readers, fundus."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import medfm.modalities.fundus  # noqa: F401  (registers "fundus")
import medfm.modalities.oct  # noqa: F401  (registers "oct")
from medfm.errors import ConfigError, DataError
from medfm.registry import get_modality

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VOL = SHARED / "oct" / "device_files" / "retimat_onh_heidelberg.vol"


def test_bscan_folder_natural_order(tmp_path):
    for k in range(12):  # lexicographic order would put oct_10, oct_11 after oct_1
        Image.fromarray(np.full((6, 8), 10 * k, np.uint8)).save(tmp_path / f"oct_{k}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    rec = get_modality("oct").read(tmp_path)
    assert rec.data.shape == (12, 6, 8)
    np.testing.assert_array_equal(rec.data[:, 0, 0], 10 * np.arange(12))


def test_frame_resampling_keeps_order_and_values(tmp_path):
    vol = np.repeat(np.arange(20, dtype=np.float32)[:, None, None], 16, 1).repeat(16, 2)
    np.save(tmp_path / "v.npy", vol)
    oct_ = get_modality("oct", frames=10, size=[8, 8], normalize="none")
    x = oct_.load(tmp_path / "v.npy")["x"]
    assert x.shape == (1, 10, 8, 8)
    # linear resampling (align_corners=False) of a ramp 0..19 onto 10 frames: frame i = 2i + 0.5, / 19 after min-max
    ref = (2 * np.arange(10) + 0.5) / 19.0
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), ref, atol=1e-5)
    x2 = get_modality("oct", frames=10, size=[8, 8]).load(tmp_path / "v.npy")["x"]
    torch.testing.assert_close(x2, (x - 0.5) / 0.5)


def test_npz_key_and_bad_arrays(tmp_path):
    np.savez(tmp_path / "v.npz", other=np.zeros(3), volume=np.ones((4, 5, 6), np.float32))
    rec = get_modality("oct", npz_key="volume").read(tmp_path / "v.npz")
    assert rec.data.shape == (4, 5, 6)
    np.save(tmp_path / "bad4d.npy", np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(DataError, match="3D"):
        get_modality("oct").load(tmp_path / "bad4d.npy")
    bad = np.ones((3, 4, 4), np.float32)
    bad[1, 1, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DataError, match="NaN"):
        get_modality("oct").load(tmp_path / "nan.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 4, 4), np.float32))
    with pytest.raises(DataError, match="empty"):
        get_modality("oct").load(tmp_path / "empty.npy")


def test_multiframe_dicom(tmp_path):
    frames = np.stack([np.full((8, 10), 100 * k, np.uint16) for k in range(5)])
    frames[:, 2, 3] += 7
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.4"  # Ophthalmic Tomography Image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OPT"
    ds.PatientName = "Poe^Edgar"
    ds.set_pixel_data(frames, photometric_interpretation="MONOCHROME2", bits_stored=16)
    ds.save_as(tmp_path / "oct.dcm", enforce_file_format=True)
    rec = get_modality("oct").read(tmp_path / "oct.dcm")
    np.testing.assert_array_equal(rec.data, frames)
    assert rec.meta["Modality"] == "OPT" and "Poe" not in repr(rec.meta)


def test_oct_tower_defaults_match_octcube():
    cfg = get_modality("oct").tower_config()
    assert cfg["embedder"] == {"type": "patch3d", "in_chans": 1, "input_size": [60, 256, 256], "patch_size": [3, 16, 16]}
    assert cfg["masked"] == {"kind": "mae", "mask_ratio": 0.9, "norm_pix_loss": False}
    with pytest.raises(ConfigError):
        get_modality("oct", size=[256])


def test_mae_with_high_mask_ratio_runs_on_oct_tower():
    import medfm

    torch.manual_seed(0)
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {"oct": {"frames": 6, "size": [32, 32]}}})
    x = torch.rand(1, 1, 6, 32, 32)
    out = model.masked_loss("oct", x)
    n_tokens = (6 // 3) * (32 // 16) ** 2
    assert int(out["token_mask"].sum()) == round(0.9 * n_tokens)
    assert torch.isfinite(out["loss"])


def test_fundus_rgb_normalisation(tmp_path):
    img = np.zeros((10, 10, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 200, 100, 50
    Image.fromarray(img).save(tmp_path / "f.png")
    fu = get_modality("fundus", size=10, hflip=0.0, jitter=0.0)
    x = fu.load(tmp_path / "f.png")["x"]
    assert x.shape == (3, 10, 10)
    scaled = (np.array([200, 100, 50]) - 50) / 150
    ref = (scaled - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x[:, 5, 5].numpy(), ref, atol=1e-5)
    gray = get_modality("fundus", channels=1, mean=[0.5], std=[0.5], size=10).load(tmp_path / "f.png")["x"]
    assert gray.shape == (1, 10, 10)
    # horizontal flip in training (p=1) mirrors the image
    Image.fromarray(np.tile(np.arange(10, dtype=np.uint8)[None, :, None] * 20, (10, 1, 3))).save(tmp_path / "g.png")
    ev = get_modality("fundus", size=10).load(tmp_path / "g.png")["x"]
    tr = get_modality("fundus", size=10, hflip=1.0, jitter=0.0).load(tmp_path / "g.png", train=True, rng=np.random.default_rng(0))["x"]
    torch.testing.assert_close(tr, ev.flip(-1))


def test_vendor_extra_missing_is_named(tmp_path, monkeypatch):
    f = tmp_path / "scan.vol"
    f.write_bytes(b"HSF-OCT-103 nothing else")
    monkeypatch.setitem(sys.modules, "eyepy.io.he.vol_reader", None)  # import now raises ImportError
    with pytest.raises(DataError) as ei:
        get_modality("oct").load(f)
    assert "medfm[oct-vendor]" in str(ei.value) and "scan.vol" in str(ei.value)
    with pytest.raises(DataError, match=r"medfm\[oct-vendor\]"):
        get_modality("fundus").load(f)


@pytest.mark.skipif(not VOL.is_file(), reason="shared real data (../shared/data/oct) not present")
def test_heidelberg_vol_oct_and_slo():
    pytest.importorskip("eyepy", reason="optional extra medfm[oct-vendor] not installed")
    from eyepy.io.he.vol_reader import HeVolReader

    pf = HeVolReader(str(VOL)).parsed_file
    rec = get_modality("oct").read(VOL)
    assert rec.data.shape == (1, 496, 768)
    np.testing.assert_array_equal(rec.data[0], np.asarray(pf.bscans[0].data, np.float32))
    slo = get_modality("fundus").read(VOL)
    assert slo.data.shape == (768, 768, 3)
    np.testing.assert_array_equal(slo.data[..., 0], np.asarray(pf.localizer, np.float32))
    for field in ("patient_id", "pid", "dob"):
        val = str(pf.get(field, ""))
        if len(val) > 3:
            assert val not in repr(rec.meta) and val not in repr(slo.meta)
    x = get_modality("oct", frames=4, size=[64, 64]).load(VOL)["x"]
    z = get_modality("fundus", size=64).load(VOL)["x"]
    assert x.shape == (1, 4, 64, 64) and z.shape == (3, 64, 64)


@pytest.mark.skipif(not VOL.is_file(), reason="shared real data (../shared/data/oct) not present")
@pytest.mark.parametrize("name", ["e2e_minimized.E2E", "fds_minimized.fds"])
def test_unparseable_vendor_files_name_the_file(name):
    path = VOL.parent / name
    try:
        out = get_modality("oct", frames=4, size=[32, 32]).load(path)
    except DataError as e:
        assert name in str(e)
    else:  # a future reader version may parse the minimised file
        assert out["x"].shape == (1, 4, 32, 32)
