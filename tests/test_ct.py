"""CT adapter: DICOM series order/HU/gaps/series choice, NIfTI orientation, arrays, windows, PHI."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

import medfm.modalities.ct  # noqa: F401  (registers "ct")
from medfm.errors import ConfigError, DataError
from medfm.registry import get_modality

from conftest import dicom_as

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHI_NAME = "Doe^Janet"
PHI_ID = "PHI-7731-XYZ"


def write_series(folder: Path, n: int = 6, dz: float = 2.5, *, uid: str | None = None, seed: int = 0,
                 skip: tuple = (), name_prefix: str = "") -> np.ndarray:
    """Write ``n`` slices of CT_small at shuffled positions under shuffled names.

    Slice k (in position order) holds CT_small's stored values + 7*k. Returns the
    expected HU volume ``(n - len(skip), H, W)`` in ascending position order.
    """
    rng = np.random.default_rng(seed)
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    raw = base.pixel_array.astype(np.int16)
    uid = uid or pydicom.uid.generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    order = rng.permutation(n)  # write order and file names unrelated to position
    z0 = float(base.ImagePositionPatient[2])
    expected = {}
    for w, k in enumerate(order):
        if k in skip:
            continue
        ds = copy.deepcopy(base)
        px = raw + 7 * int(k)
        ds.PixelData = px.astype(np.int16).tobytes()
        ds.ImagePositionPatient = [base.ImagePositionPatient[0], base.ImagePositionPatient[1], z0 + dz * int(k)]
        ds.InstanceNumber = int(n - k)  # deliberately the reverse of the true order
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.PatientName = PHI_NAME
        ds.PatientID = PHI_ID
        ds.save_as(folder / f"{name_prefix}img_{rng.integers(1e9):09d}", enforce_file_format=True)
        expected[int(k)] = apply_modality_lut(px, ds).astype(np.float32)
    return np.stack([expected[k] for k in sorted(expected)])


def test_series_order_and_hu_values(tmp_path):
    expected = write_series(tmp_path / "s", n=6)
    ct = get_modality("ct", orient=False, target_spacing=None)
    rec = ct.read(tmp_path / "s")
    assert rec.data.shape == expected.shape
    np.testing.assert_array_equal(rec.data, expected)
    assert rec.meta["spacing"][0] == pytest.approx(2.5)
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert rec.meta["spacing"][1:] == pytest.approx([float(v) for v in base.PixelSpacing])


def test_series_reoriented_to_ras(tmp_path):
    expected = write_series(tmp_path / "s", n=4)
    rec = get_modality("ct", target_spacing=None).read(tmp_path / "s")
    # CT_small is axial with IOP (1,0,0,0,1,0) in LPS: columns run R→L and rows A→P, so RAS flips both.
    np.testing.assert_array_equal(rec.data, expected[:, ::-1, ::-1])
    aff = np.asarray(rec.meta["affine"])
    assert (np.diag(aff)[:3] > 0).all()


def test_gap_in_series_is_detected(tmp_path):
    write_series(tmp_path / "s", n=6, skip=(3,))
    with pytest.raises(DataError) as ei:
        get_modality("ct").read(tmp_path / "s")
    msg = str(ei.value)
    assert "inconsistent slice spacing" in msg and str(tmp_path / "s") in msg
    assert PHI_NAME not in msg and PHI_ID not in msg


def test_several_series_need_a_choice(tmp_path):
    uid_a, uid_b = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    exp_a = write_series(tmp_path / "mix", n=3, uid=uid_a, seed=1, name_prefix="a")
    write_series(tmp_path / "mix", n=5, uid=uid_b, seed=2, name_prefix="b")
    with pytest.raises(DataError) as ei:
        get_modality("ct").read(tmp_path / "mix")
    assert uid_a in str(ei.value) and uid_b in str(ei.value)
    rec = get_modality("ct", series_uid=uid_a, orient=False, target_spacing=None).read(tmp_path / "mix")
    np.testing.assert_array_equal(rec.data, exp_a)
    with pytest.raises(DataError, match="not in folder"):
        get_modality("ct", series_uid="1.2.3.4").read(tmp_path / "mix")


def test_phi_never_in_metadata(tmp_path):
    write_series(tmp_path / "s", n=3)
    ct = get_modality("ct", size=[4, 32, 32], target_spacing=None)
    rec = ct.read(tmp_path / "s")
    out = ct.preprocess(rec)
    text = repr(rec.meta) + repr({k: v for k, v in out.items() if k != "x"})
    assert PHI_NAME not in text and "Doe" not in text and PHI_ID not in text
    assert rec.meta["Modality"] == "CT"  # whitelisted fields are kept


def test_truncated_and_undecodable_dicom_raise_data_error(tmp_path):
    ct = get_modality("ct")
    path = dicom_as(get_testdata_file("MR_small.dcm"), "CT", tmp_path, "CT_truncated.dcm")
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
    with pytest.raises(DataError) as ei:
        ct.load(path)
    assert "CT_truncated.dcm" in str(ei.value)
    # 12-bit JPEG: no installed decoder handles it; the error names the packages that would
    jpeg = dicom_as(get_testdata_file("JPEG-lossy.dcm"), "CT", tmp_path, "JPEG-lossy.dcm")
    with pytest.raises(DataError, match="JPEG-lossy.dcm.*cannot decode pixel data.*pip install pylibjpeg pylibjpeg-libjpeg"):
        ct.read(jpeg)
    # the original, an NM image, is refused for what it is before any decoding
    with pytest.raises(DataError, match="JPEG-lossy.dcm.*DICOM Modality 'NM' is not read by the ct adapter"):
        ct.read(get_testdata_file("JPEG-lossy.dcm"))


def test_rle_compressed_equals_uncompressed(tmp_path):
    ct = get_modality("ct", orient=False, target_spacing=None)
    a = ct.read(dicom_as(get_testdata_file("MR_small.dcm"), "CT", tmp_path)).data
    b = ct.read(dicom_as(get_testdata_file("MR_small_RLE.dcm"), "CT", tmp_path)).data
    ref = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.float32)
    np.testing.assert_array_equal(a[0], ref)
    np.testing.assert_array_equal(a, b)


def test_single_ct_file_in_hu():
    rec = get_modality("ct", orient=False).read(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    np.testing.assert_allclose(rec.data[0], ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))


def test_nifti_matches_nibabel_canonical():
    import nibabel as nib
    from nibabel.testing import data_path

    path = Path(data_path) / "anatomical.nii"
    rec = get_modality("ct", target_spacing=None).read(path)
    ref = nib.as_closest_canonical(nib.load(str(path))).get_fdata().astype(np.float32)
    if ref.ndim == 4:
        ref = ref[..., 0]
    np.testing.assert_allclose(rec.data, ref.transpose(2, 1, 0), rtol=1e-5)


def test_npy_needs_spacing_column(tmp_path):
    vol = np.random.default_rng(0).normal(0, 300, (8, 12, 10)).astype(np.float32)
    np.save(tmp_path / "v.npy", vol)
    ct = get_modality("ct", target_spacing=None)
    with pytest.raises(DataError) as ei:
        ct.read(tmp_path / "v.npy", sample_id="s1", row={"id": "s1"})
    assert ei.value.field == "ct_spacing" and "s1" in str(ei.value)
    rec = ct.read(tmp_path / "v.npy", row={"ct_spacing": "2,1,1"})
    np.testing.assert_array_equal(rec.data, vol)
    assert rec.meta["spacing"] == (2.0, 1.0, 1.0)
    # resampling to twice the spacing halves every axis
    out = get_modality("ct", target_spacing=[4, 2, 2], size=[4, 6, 5], windows=[]).preprocess(rec)
    assert out["x"].shape == (1, 4, 6, 5) and out["spacing"] == pytest.approx((4.0, 2.0, 2.0))


def test_windows_are_clipped_linear_maps(tmp_path):
    vol = np.linspace(-1200, 1500, 4 * 6 * 6, dtype=np.float32).reshape(4, 6, 6)
    np.save(tmp_path / "v.npy", vol)
    ct = get_modality("ct", target_spacing=None, size=[4, 6, 6], windows=["lung", [40, 400]])
    out = ct.load(tmp_path / "v.npy", row={"ct_spacing": 1.0})
    assert out["x"].shape == (2, 4, 6, 6)
    for ch, (c, w) in enumerate([(-600, 1500), (40, 400)]):
        ref = np.clip((vol - (c - w / 2)) / w, 0, 1)
        np.testing.assert_allclose(out["x"][ch].numpy(), ref, atol=1e-6)


def test_crop_pad_and_augmentation(tmp_path):
    vol = np.random.default_rng(1).normal(0, 200, (6, 20, 20)).astype(np.float32)
    np.save(tmp_path / "v.npy", vol)
    row = {"ct_spacing": "1 1 1"}
    ct = get_modality("ct", target_spacing=None, size=[8, 16, 16], windows=["soft_tissue"], jitter=0.0)
    ev = ct.load(tmp_path / "v.npy", row=row)["x"]
    # depth padded with air (window → 0) by 1 on each side, H/W centre-cropped by 2
    assert ev.shape == (1, 8, 16, 16)
    assert float(ev[0, 0].abs().max()) == 0.0 and float(ev[0, -1].abs().max()) == 0.0
    ref = np.clip((vol[:, 2:18, 2:18] - (40 - 200)) / 400, 0, 1)
    np.testing.assert_allclose(ev[0, 1:7].numpy(), ref, atol=1e-6)
    a = ct.load(tmp_path / "v.npy", row=row, train=True, rng=np.random.default_rng(5))["x"]
    b = ct.load(tmp_path / "v.npy", row=row, train=True, rng=np.random.default_rng(5))["x"]
    torch.testing.assert_close(a, b)  # augmentation is driven by the given generator
    views = {round(float(ct.load(tmp_path / "v.npy", row=row, train=True, rng=np.random.default_rng(s))["x"].sum()), 3)
             for s in range(6)}
    assert len(views) > 1


def test_tower_config_and_bad_options():
    cfg = get_modality("ct", windows=["lung", "bone"], size=[32, 64, 64]).tower_config()
    emb = cfg["embedder"]
    assert emb["type"] == "patch3d" and emb["in_chans"] == 2 and emb["input_size"] == [32, 64, 64]
    assert cfg["masked"]["kind"] == "mae"
    with pytest.raises(ConfigError):
        get_modality("ct", windows=["nonsense"])
    with pytest.raises(ConfigError):
        get_modality("ct", not_an_option=1)


def test_model_encodes_ct():
    import medfm

    torch.manual_seed(0)
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {"ct": {"size": [8, 32, 32], "patch_size": [4, 16, 16]}}})
    x = torch.rand(2, 3, 8, 32, 32)
    z = model.encode("ct", x)
    assert z.shape == (2, model.embed_dim)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2))
    assert torch.isfinite(model.masked_loss("ct", x)["loss"])


@pytest.mark.skipif(not (SHARED / "ct").is_dir(), reason="shared real data (../shared/data/ct) not present")
def test_real_series_and_nifti():
    folder = SHARED / "ct" / "ct_dicom_series_20_slices"
    rec = get_modality("ct").read(folder)
    assert rec.data.shape == (20, 512, 512)
    assert rec.meta["spacing"] == pytest.approx((2.0, 0.9765625, 0.9765625))
    headers = [(float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]), p) for p in folder.iterdir()]
    lowest = min(headers)[1]
    ds = pydicom.dcmread(lowest)
    np.testing.assert_allclose(rec.data[0], apply_modality_lut(ds.pixel_array, ds)[::-1, ::-1])
    assert rec.data.min() >= -1100  # air near -1000 HU: the modality LUT is applied
    nii = get_modality("ct", target_spacing=None).read(SHARED / "ct" / "ct_30_slices.nii.gz")
    assert nii.data.shape[0] == 30 and nii.meta["spacing"][0] == pytest.approx(3.0)
    out = get_modality("ct", size=[16, 64, 64], target_spacing=[3, 3, 3]).load(SHARED / "ct" / "ct_30_slices.nii.gz")
    assert out["x"].shape == (3, 16, 64, 64) and 0.0 <= float(out["x"].min()) and float(out["x"].max()) <= 1.0


@pytest.mark.parametrize("name", ["oct_mae", "oct_fundus_clip", "ct_mae", "ct_report_clip", "xray_report_clip"])
def test_imaging_run_configs_build(name):
    """Every imaging config resolves, its objectives build, and its model builds (trunk shrunk for speed)."""
    from medfm.io import deep_merge, load_config_file
    from medfm.objectives import build_objective
    from medfm.train.pretrainer import resolve_run_config

    import medfm

    root = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_config_file(root / f"{name}.yaml")
    run = resolve_run_config(deep_merge(cfg, {"data": {"manifest": "cohort.csv"}}))
    build_objective(run["objectives"])
    small = deep_merge(run["model"], {"trunk": {"width": 32, "depth": 1, "heads": 2}, "embed_dim": 16,
                                      "decoder": {"width": 16, "depth": 1, "heads": 2}})
    model = medfm.create_model(small)
    assert set(model.modalities) == set(cfg["model"]["modalities"])
    for mod in ("oct", "ct"):
        if mod in model.modalities:
            assert model.tower(mod).embedder.ndim == 3


@pytest.mark.parametrize("name", ["tiny_3d", "small_3d", "base_3d"])
def test_model_size_configs(name):
    from medfm.models import resolve_config

    cfg = resolve_config(str(Path(__file__).resolve().parents[1] / "configs" / "models" / f"{name}.yaml"))
    assert cfg["trunk"]["width"] % cfg["trunk"]["heads"] == 0 and cfg["embed_dim"] > 0


def test_multiframe_ct_frames_sorted_by_position(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    n = 5
    order = [3, 0, 4, 1, 2]  # stored frame i lies at position order[i]
    frames = np.stack([np.full((6, 7), 100 * k, np.uint16) for k in order])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.Modality, ds.PatientName = "CT", PHI_NAME
    ds.set_pixel_data(frames, photometric_interpretation="MONOCHROME2", bits_stored=16)
    shared = Dataset()
    orient, measures, trans = Dataset(), Dataset(), Dataset()
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing, measures.SliceThickness = [0.7, 0.8], 1.25
    trans.RescaleSlope, trans.RescaleIntercept = 1, -1024
    shared.PlaneOrientationSequence = [orient]
    shared.PixelMeasuresSequence = [measures]
    shared.PixelValueTransformationSequence = [trans]
    ds.SharedFunctionalGroupsSequence = [shared]
    per = []
    for k in order:
        f, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [0.0, 0.0, 1.25 * k]
        f.PlanePositionSequence = [pos]
        per.append(f)
    ds.PerFrameFunctionalGroupsSequence = per
    ds.save_as(tmp_path / "enh.dcm", enforce_file_format=True)
    rec = get_modality("ct", orient=False).read(tmp_path / "enh.dcm")
    np.testing.assert_array_equal(rec.data[:, 0, 0], 100 * np.arange(n) - 1024)
    assert rec.meta["spacing"] == pytest.approx((1.25, 0.7, 0.8))
    assert PHI_NAME not in repr(rec.meta)
