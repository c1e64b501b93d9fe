"""The demo cohort generator: real formats read by the registered adapters, class signal, missing modalities."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from scipy.signal import find_peaks
from sklearn.metrics import roc_auc_score

import medfm
from medfm.demo.cohort import (CLASSES, ECG_FS, IMAGING, MODALITIES, PROMPTS, TAXONOMY, CohortSpec, copy_real_files,
                               dna_reference, generate_cohort)
from medfm.demo.pipeline import MODALITY_OPTIONS
from medfm.errors import ConfigError


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("cohort")
    df = generate_cohort(d, CohortSpec(n_patients=24, seed=3), progress=False)
    return d, df


def _adapter(name):
    return medfm.get_modality(name, **MODALITY_OPTIONS[name])


def _y(df):
    return np.array([CLASSES.index(v) for v in df["label"]])


def test_manifest_columns_patients_and_splits(cohort):
    d, df = cohort
    from medfm.data import read_manifest

    on_disk = read_manifest(d / "manifest.csv")
    assert list(on_disk["id"]) == list(df["id"])
    assert {"id", "patient_id", "split", "label", "taxonomy", *MODALITIES} <= set(df.columns)
    # several samples per patient, one class per patient, one split per patient
    assert df["patient_id"].value_counts().max() > 1
    assert (df.groupby("patient_id")["label"].nunique() == 1).all()
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(df["split"]) == {"train", "val", "test"}
    assert set(df["label"]) == set(CLASSES)


def test_some_modalities_missing_but_two_always_present(cohort):
    _, df = cohort
    present = df[list(IMAGING)].notna()
    assert (present.sum(axis=1) >= 2).all()
    assert (~present).to_numpy().any()          # some samples miss some modality
    assert present.all(axis=0).sum() < len(IMAGING)
    assert df["text"].notna().mean() > 0.5


def test_files_are_read_by_registered_adapters(cohort):
    d, df = cohort
    n_windows = len(MODALITY_OPTIONS["ct"]["windows"])  # one channel per HU window
    shapes = {"ct": (n_windows, 16, 32, 32), "oct": (1, 16, 32, 32), "xray": (1, 32, 32), "ecg": (12, 250)}
    for mod, shape in shapes.items():
        adapter = _adapter(mod)
        row = df[df[mod].notna()].iloc[0].to_dict()
        item = adapter.load(str(d / row[mod]), sample_id=row["id"], row=row)
        assert tuple(item["x"].shape) == shape, mod
        assert np.isfinite(item["x"].numpy()).all()
    dna = _adapter("dna")
    seq = df["dna"].dropna().iloc[0]
    assert dna.load(seq, sample_id="s")["x"].shape[0] == dna.max_tokens()
    text = _adapter("text")
    text.fit(df["text"].dropna())
    assert text.load(df["text"].dropna().iloc[0], sample_id="s")["x"].shape[0] > 5


def test_ct_nodule_raises_mean_hu(cohort):
    d, df = cohort
    ct = _adapter("ct")
    rows = df[df["ct"].notna()]
    hu = np.array([ct.read(str(d / p)).data.mean() for p in rows["ct"]])
    y = _y(rows)
    assert roc_auc_score(y == 2, hu) > 0.95          # large dense mass vs the rest
    assert roc_auc_score(y[y < 2] == 1, hu[y < 2]) > 0.9   # small ground-glass nodule vs none


def test_ecg_heart_rate_follows_class(cohort):
    d, df = cohort
    ecg = _adapter("ecg")
    rows = df[df["ecg"].notna()]
    rates = []
    for p in rows["ecg"]:
        rec = ecg.read(str(d / p))
        assert rec.meta["fs"] == ECG_FS and rec.data.shape[0] == 12 and rec.meta["lead_mask"].all()
        lead2 = rec.data[1]
        peaks, _ = find_peaks(lead2, height=0.6, distance=int(0.3 * ECG_FS))
        rates.append(60.0 * ECG_FS / np.median(np.diff(peaks)) if len(peaks) > 1 else 0.0)
    rates, y = np.array(rates), _y(rows)
    for c in range(len(CLASSES) - 1):  # each class's rate range lies above the previous one's
        if (y == c).any() and (y == c + 1).any():
            assert rates[y == c].max() < rates[y == c + 1].min()


def test_xray_opacity_and_oct_drusen_signal(cohort):
    d, df = cohort
    xr = _adapter("xray")
    rows = df[df["xray"].notna()]
    y = _y(rows)
    bright = np.array([xr.read(str(d / p)).data.mean() for p in rows["xray"]])
    assert roc_auc_score(y == 2, bright) > 0.95
    oc = _adapter("oct")
    rows = df[df["oct"].notna()]
    y = _y(rows)
    # drusen lift the bright RPE band: the spread of its row position across columns grows
    spread = []
    for p in rows["oct"]:
        vol = oc.read(str(d / p)).data
        spread.append(np.mean([np.std(np.argmax(b, axis=0)) for b in vol]))
    assert roc_auc_score(y == 2, np.array(spread)) > 0.9


def test_dna_clade_is_nearest_reference(cohort):
    _, df = cohort
    ref, muts = dna_reference()
    rows = df[df["dna"].notna()]
    for seq, label in zip(rows["dna"], rows["label"]):
        matches = [sum(seq[p] == b for p, b in muts[c]) for c in range(len(CLASSES))]
        assert int(np.argmax(matches)) == CLASSES.index(label)
        assert len(seq) == len(ref) and set(seq) <= set("ACGTN")
    assert (rows["taxonomy"] == rows["label"].map(TAXONOMY)).all()


def test_reports_name_their_class(cohort):
    _, df = cohort
    rows = df[df["text"].notna()]
    for text, label in zip(rows["text"], rows["label"]):
        prompts = [p.split(": ", 1)[1] for p in PROMPTS["classes"][label] if p.startswith("impression")]
        assert any(p in text for p in prompts)
        others = [p.split(": ", 1)[1] for c in CLASSES if c != label for p in PROMPTS["classes"][c]
                  if p.startswith("impression")]
        assert not any(p in text for p in others)


def test_same_seed_same_cohort_other_seed_differs(tmp_path):
    a = generate_cohort(tmp_path / "a", CohortSpec(n_patients=6, seed=5), progress=False)
    b = generate_cohort(tmp_path / "b", CohortSpec(n_patients=6, seed=5), progress=False)
    c = generate_cohort(tmp_path / "c", CohortSpec(n_patients=6, seed=6), progress=False)
    pd.testing.assert_frame_equal(a, b)
    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    row = a[a["xray"].notna()].iloc[0]
    assert sha(tmp_path / "a" / row["xray"]) == sha(tmp_path / "b" / row["xray"])
    assert not a[["dna", "text"]].fillna("").equals(c[["dna", "text"]].fillna(""))


def test_bad_spec_is_a_config_error():
    with pytest.raises(ConfigError):
        CohortSpec(n_patients=2)
    with pytest.raises(ConfigError):
        CohortSpec(p_missing=1.0)


def test_real_files_are_read(tmp_path):
    real = copy_real_files(tmp_path)
    assert set(real["id"]) == {"REAL_CT_small", "REAL_anatomical", "REAL_waveform_ecg"}
    ct, ecg = _adapter("ct"), _adapter("ecg")
    small = ct.read(str(tmp_path / real.set_index("id").loc["REAL_CT_small", "ct"]))
    assert small.data.shape[0] == 1 and small.meta["format"] == "dicom"
    assert small.data.min() < -500  # Hounsfield units (air/lung present)
    nii = ct.read(str(tmp_path / real.set_index("id").loc["REAL_anatomical", "ct"]))
    assert nii.meta["format"] == "nifti" and nii.data.ndim == 3
    wave = ecg.read(str(tmp_path / real.set_index("id").loc["REAL_waveform_ecg", "ecg"]))
    assert wave.meta["fs"] == 1000.0 and wave.data.shape[0] == 12
    assert tuple(ecg.load(str(tmp_path / "real" / "waveform_ecg.dcm"))["x"].shape) == (12, 250)
