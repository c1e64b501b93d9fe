"""`medfm manifest` on real files: DICOM grouped by study/series with no identifier written, WFDB and
record/barcode tables, image folders, NIfTI; salted patient ids, pairing, split, summary; `medfm inspect`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file

import medfm
from medfm.cli import main
from medfm.data import read_manifest
from medfm.data.cohort import parse_fractions, salted_hash

from conftest import shared_data

SECRET = "PAT-7788-SECRET"
SALT_HEX = "ab" * 32


def _dicom(src: str, dst: Path, *, patient: str, study: str, series: str, instance: int = 1) -> None:
    ds = pydicom.dcmread(get_testdata_file(src))
    if "ImagePositionPatient" in ds:
        ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + \
            [float(ds.ImagePositionPatient[2]) + 5.0 * (instance - 1)]
    ds.PatientID, ds.PatientName = patient, "Doe^Jane"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = f"{series}.{instance}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(dst))


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "data"
    study = "1.2.826.0.1.3680043.8.498.1"
    # one patient, one study: a CT (series folder) and an ECG waveform → one paired row
    for i in (1, 2):
        _dicom("CT_small.dcm", root / "dicom" / "a" / "ct" / f"img{i}", patient=SECRET, study=study,
               series=study + ".2", instance=i)
    _dicom("waveform_ecg.dcm", root / "dicom" / "a" / "ecg.dcm", patient=SECRET, study=study, series=study + ".3")
    _dicom("MR_small.dcm", root / "dicom" / "b" / "mr.dcm", patient="OTHER-1", study=study + "9", series="1.9")
    # a PTB-XL-style table naming WFDB records, with patients, reports and codes
    ecg = shared_data("ecg", "cinc2021_12lead")
    heas = sorted(ecg.glob("*.hea"))[:4]
    (root / "ptbxl" / "records").mkdir(parents=True)
    for h in heas:
        for f in (h, h.with_suffix(".mat")):
            os.symlink(f, root / "ptbxl" / "records" / f.name)
    pd.DataFrame({"ecg_id": [1, 2, 3, 4], "patient_id": ["111", "111", "222", "333"],
                  "filename_hr": [f"records/{h.stem}" for h in heas],
                  "report": ["sinus rhythm", "sinus rhythm normal ecg", "atrial fibrillation", "sinus bradycardia"],
                  "scp_codes": ["{'NORM': 100.0, 'SR': 0.0}", "{'NORM': 80.0}", "{'AFIB': 100.0}", "{'SBRAD': 100.0}"],
                  "nurse": ["N. Smith"] * 4}).to_csv(root / "ptbxl" / "ptbxl_database.csv", index=False)
    # a BOLD table slice and an image folder with label subfolders
    bold = pd.read_csv(shared_data("dna", "coi_barcodes_100_species.tsv"), sep="\t", dtype=str).head(6)
    (root / "bold").mkdir()
    bold.to_csv(root / "bold" / "barcodes.tsv", sep="\t", index=False)
    from PIL import Image

    for label in ("normal", "effusion"):
        (root / "cxr" / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray((np.random.default_rng(i).random((16, 16)) * 255).astype(np.uint8)).save(
                root / "cxr" / label / f"{i}.png")
    os.symlink(shared_data("ct", "ct_30_slices.nii.gz"), root / "ct_30.nii.gz")
    (root / "salt").write_text(SALT_HEX + "\n")
    return root, bold


def test_manifest_from_real_files(tree, tmp_path, capsys):
    root, bold = tree
    out = tmp_path / "out" / "cohort.csv"
    rc = main(["manifest", str(root), "--out", str(out), "--salt-file", str(root / "salt"),
               "--split", "train=0.5,val=0.25,test=0.25", "--seed", "3"])
    printed = capsys.readouterr().out
    assert rc == 0
    text = out.read_text() + Path(str(out) + ".summary.json").read_text() + printed
    assert SECRET not in text and "Doe" not in text and "N. Smith" not in text  # no raw identifier anywhere
    df = read_manifest(out)
    salt = bytes.fromhex(SALT_HEX)
    # DICOM: CT and ECG of one study paired into one row, patient hashed with the salt
    row = df[df["ct"].notna() & df["ecg"].notna()]
    assert len(row) == 1 and row["patient_id"].iloc[0] == salted_hash(SECRET, salt)
    assert row["ct"].iloc[0] == os.path.join("..", "data", "dicom", "a", "ct")  # the series folder
    assert medfm.get_modality("ct").read(str(out.parent / row["ct"].iloc[0])).data.shape == (2, 128, 128)
    assert row["id"].iloc[0].startswith("st-") and "1.2.826" not in row["id"].iloc[0]
    # PTB-XL table: records paired with reports, codes as '|' labels, patients hashed and shared
    ptb = df[df["labels"].notna()].set_index("text")
    assert ptb.loc["atrial fibrillation", "labels"] == "AFIB" and ptb.loc["sinus rhythm", "labels"] == "NORM|SR"
    assert ptb.loc["sinus rhythm", "ecg"].endswith(".hea")
    assert ptb.loc["sinus rhythm", "patient_id"] == ptb.loc["sinus rhythm normal ecg", "patient_id"] \
        == salted_hash("111", salt)
    # BOLD: one row per barcode, a table#processid cell, lineage text and rank columns kept
    dna = df[df["dna"].notna()].set_index("id")
    assert list(dna.index) == list(bold["processid"])
    first = dna.loc[bold["processid"][0]]
    assert first["dna"] == f"../data/bold/barcodes.tsv#{bold['processid'][0]}"
    assert first["species_name"] == bold["species_name"][0] and bold["order_name"][0] in first["text"]
    # images with subfolder labels, NIfTI
    assert sorted(df.loc[df["xray"].notna(), "label"]) == ["effusion", "effusion", "normal", "normal"]
    assert df["ct"].str.endswith("ct_30.nii.gz", na=False).sum() == 1
    # summary: rows per modality, the MR file unreadable (no medfm modality), split by patient
    s = json.loads(Path(str(out) + ".summary.json").read_text())
    assert s["rows_per_modality"]["dna"] == 6 and s["rows_per_modality"]["ecg"] == 5
    assert s["n_unreadable"] == 1 and "'MR'" in s["unreadable"][0]["reason"]
    assert set(df.groupby("patient_id")["split"].nunique()) == {1}
    # the cells are what the adapters read
    assert medfm.get_modality("dna").read(str(out.parent / first["dna"])).data == bold["nucleotides"][0]
    # same salt and seed: the same manifest
    out2 = tmp_path / "out" / "again.csv"
    assert main(["manifest", str(root), "--out", str(out2), "--salt-file", str(root / "salt"),
                 "--split", "train=0.5,val=0.25,test=0.25", "--seed", "3"]) == 0
    pd.testing.assert_frame_equal(read_manifest(out2), df)


def test_manifest_usage_errors(tmp_path, capsys):
    assert main(["manifest", str(tmp_path / "missing"), "--out", str(tmp_path / "m.csv")]) == 1
    assert "source not found" in capsys.readouterr().err
    assert main(["manifest", str(tmp_path), "--out", str(tmp_path / "m.xlsx")]) == 2
    with pytest.raises(Exception):
        parse_fractions("train=0.5,test=0.6")


def test_inspect_prints_canonical_metadata_and_preview(tmp_path, capsys):
    hea = sorted(shared_data("ecg", "cinc2021_12lead").glob("*.hea"))[0]
    png = tmp_path / "ecg.png"
    assert main(["inspect", str(hea), "--out", str(png), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["modality"] == "ecg" and info["meta"]["fs"] == 500.0
    assert info["meta"]["leads_found"][:3] == ["I", "II", "III"] and info["tensor"]["shape"][0] == 12
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ct = get_testdata_file("CT_small.dcm")
    assert main(["inspect", ct, "--out", str(tmp_path / "ct.png"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    ds = pydicom.dcmread(ct)
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert info["modality"] == "ct" and info["read"]["min"] == pytest.approx(hu.min())
    assert str(ds.PatientName) not in json.dumps(info)
    assert main(["inspect", str(tmp_path / "ct.png"), "--modality", "ecg"]) == 1
    assert "unsupported format '.png' for modality 'ecg'" in capsys.readouterr().err
