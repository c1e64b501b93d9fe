"""Manifests of real files for the data-audit tests: the shared data as it is, and with planted leaks.

``real_manifest(tmp, shared)``: ECGs (CinC 2021 records), pydicom's CT slice, the shared CT series and NIfTI volume, and IU
chest X-ray reports, one row per record, one patient per row, split by row (train/val/test).
``planted_manifest(tmp, shared)`` adds, with their expected findings (``PLANTED``):

* the same CT image (``CT_small.dcm``, re-written with another PatientName/PatientID) in train and
  test under two patient ids;
* a duplicated ECG: one CinC record copied to another folder, in val under another patient;
* a report with a name and a record number.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, List

import pandas as pd

SPLITS = ("train", "val", "test")
PHI_REPORT = "Patient: John Carter, MRN 44718265. Heart size normal. No pneumothorax."


def _rows(tmp: Path, shared: Path, n_ecg: int, n_reports: int) -> List[Dict]:
    from pydicom.data import get_testdata_file

    rows = []
    ecgs = sorted((shared / "ecg" / "cinc2021_12lead").glob("*.hea"))[:n_ecg]
    for k, hea in enumerate(ecgs):
        rows.append({"id": f"ecg{k}", "patient_id": f"PE{k}", "ecg": str(hea)})
    ct_dir = tmp / "ct"
    ct_dir.mkdir(parents=True, exist_ok=True)
    rows.append({"id": "ct0", "patient_id": "PC0", "ct": str(get_testdata_file("CT_small.dcm"))})
    rows.append({"id": "ct1", "patient_id": "PC1", "ct": str(shared / "ct" / "ct_30_slices.nii.gz")})
    rows.append({"id": "ctseries", "patient_id": "PCS", "ct": str(shared / "ct" / "ct_dicom_series_20_slices")})
    reports = pd.read_csv(shared / "text" / "iu_chest_xray_reports.csv").head(n_reports)
    for k, r in enumerate(reports.itertuples()):
        text = " ".join(str(x) for x in (r.findings, r.impression) if isinstance(x, str))
        rows.append({"id": f"rep{k}", "patient_id": f"PR{k}", "text": text, "label": str(r.mesh_major).split(";")[0]})
    for k, r in enumerate(rows):
        r["split"] = SPLITS[k % 3]
    return rows


def real_manifest(tmp: Path, shared: Path, n_ecg: int = 50, n_reports: int = 4000) -> Path:
    """The shared data unmodified (see module docstring) → ``tmp/real.csv``."""
    path = tmp / "real.csv"
    pd.DataFrame(_rows(tmp, shared, n_ecg, n_reports)).to_csv(path, index=False)
    return path


def planted_manifest(tmp: Path, shared: Path, n_ecg: int = 12, n_reports: int = 60) -> Path:
    """The shared data with three planted problems (see module docstring) → ``tmp/planted.csv``."""
    import pydicom
    from pydicom.data import get_testdata_file

    rows = _rows(tmp, shared, n_ecg, n_reports)
    for r in rows:  # the first CT row is CT_small in train; its copy goes to test under another patient
        r.setdefault("ct", None)
    ct_train = next(r for r in rows if r["id"] == "ct0")
    ct_train["split"] = "train"
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.PatientID = "Other^Person", "X-99"
    copy = tmp / "ct" / "copy_of_ct_small.dcm"
    ds.save_as(str(copy))
    rows.append({"id": "ct_leak", "patient_id": "PLEAK1", "split": "test", "ct": str(copy)})
    ecg0 = next(r for r in rows if r["id"] == "ecg0")
    ecg0["split"] = "train"
    dup = tmp / "ecg_dup"
    dup.mkdir(exist_ok=True)
    src = Path(ecg0["ecg"])
    for f in src.parent.glob(src.stem + ".*"):
        shutil.copyfile(f, dup / f.name)
    rows.append({"id": "ecg_leak", "patient_id": "PLEAK2", "split": "val", "ecg": str(dup / src.name)})
    rows.append({"id": "rep_phi", "patient_id": "PLEAK3", "split": "train", "text": PHI_REPORT, "label": "normal"})
    path = tmp / "planted.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


#: what the audit must find in the planted manifest
PLANTED = {"leak_pairs": [{"ct0", "ct_leak"}, {"ecg0", "ecg_leak"}], "phi_row": "rep_phi",
           "phi_kinds": {"name", "record"}}
