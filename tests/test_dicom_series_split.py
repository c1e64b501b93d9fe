"""A folder holding several DICOM series: one manifest row per series (``FOLDER#UID``), read and inspected by UID.

The slices are the shared real CT series; half of them are rewritten with a second SeriesInstanceUID.
"""
from pathlib import Path

import numpy as np
import pydicom
import pytest

import medfm
from medfm.cli import main
from medfm.data import read_manifest
from medfm.errors import DataError
from medfm.modalities.dicom_series import split_series_reference
from medfm.modalities.inspect import inspect_source

from conftest import shared_data


@pytest.fixture()
def two_series(tmp_path):
    src = sorted(shared_data("ct", "ct_dicom_series_20_slices").iterdir())
    folder = tmp_path / "data" / "exam"
    folder.mkdir(parents=True)
    uid_a = "1.2.826.0.1.3680043.8.498.4141"  # the shared series carries a blank UID (anonymised)
    uid_b = "1.2.826.0.1.3680043.8.498.4242"
    order = sorted(src, key=lambda p: float(pydicom.dcmread(str(p), stop_before_pixels=True).ImagePositionPatient[2]))
    for i, p in enumerate(order[:4]):  # series A: 4 consecutive slices
        ds = pydicom.dcmread(str(p))
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid_a, f"{uid_a}.{i}"
        ds.save_as(str(folder / f"a{i}.dcm"))
    hand_b = []
    for i, p in enumerate(order[10:13]):  # series B: 3 other slices, a new series UID
        ds = pydicom.dcmread(str(p))
        ds.SeriesInstanceUID = uid_b
        ds.SOPInstanceUID = f"{uid_b}.{i}"
        ds.save_as(str(folder / f"b{i}.dcm"))
        hand_b.append(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    return tmp_path / "data", folder, uid_a, uid_b, np.stack(hand_b)


def test_manifest_splits_a_multi_series_folder_and_each_cell_reads_its_series(two_series, tmp_path):
    root, folder, uid_a, uid_b, hand_b = two_series
    out = tmp_path / "out" / "cohort.csv"
    assert main(["manifest", str(root), "--out", str(out), "--salt", "a salt of sixteen chars or more"]) == 0
    df = read_manifest(out)
    cells = sorted(df["ct"].dropna())
    assert cells == sorted(f"../data/exam#{u}" for u in (uid_a, uid_b))  # one row per series, none unreadable
    ct = medfm.get_modality("ct", orient=False)
    by_uid = {c.rpartition("#")[2]: ct.read(str(out.parent / c)) for c in cells}
    assert by_uid[uid_a].data.shape == (4, 512, 512) and by_uid[uid_b].data.shape == (3, 512, 512)
    assert by_uid[uid_b].meta["SeriesInstanceUID"] == uid_b
    np.testing.assert_allclose(np.sort(by_uid[uid_b].data.ravel()), np.sort(hand_b.ravel().astype(np.float32)))


def test_plain_folder_refuses_with_the_list_and_inspect_picks_by_uid(two_series):
    _, folder, uid_a, uid_b, _ = two_series
    with pytest.raises(DataError) as e:
        medfm.get_modality("ct").read(folder)
    assert uid_a in str(e.value) and uid_b in str(e.value)
    info = inspect_source(f"{folder}#{uid_a}")["info"]
    assert info["modality"] == "ct" and info["meta"]["SeriesInstanceUID"] == uid_a and info["read"]["shape"][0] == 4
    with pytest.raises(DataError, match="not in folder"):
        medfm.get_modality("ct").read(f"{folder}#1.2.3.999")


def test_split_series_reference_only_splits_a_folder_and_a_uid(tmp_path):
    assert split_series_reference(f"{tmp_path}#1.2.840.10008") == (str(tmp_path), "1.2.840.10008")
    assert split_series_reference(f"{tmp_path}#not-a-uid") == (f"{tmp_path}#not-a-uid", None)
    f = tmp_path / "x.dcm"
    f.write_bytes(b"")
    assert split_series_reference(f"{f}#1.2") == (f"{f}#1.2", None)  # a file is never split
