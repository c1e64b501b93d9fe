"""``medfm audit data``: planted leaks in real files are all found; the shared data raises one explained alarm."""
from __future__ import annotations

import json

import numpy as np
import pytest

from medfm.cli import main
from medfm.modalities.dicom_profile import BASIC_PROFILE, UID_ATTRIBUTES, header_phi
from medfm.modalities.fingerprints import fingerprint, near_pairs, normalise_text
from medfm.modalities.phi_text import find_phi, redact

from audit_cohorts import PHI_REPORT, PLANTED, planted_manifest, real_manifest
from conftest import shared_data


# ------------------------------------------------------------------ fingerprints
def test_image_near_duplicate_by_average_hash():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    img = (np.sin(xx / 7.0) + np.cos(yy / 5.0) + (xx > 40)).astype(np.float32) * 100
    noisy = img + rng.normal(0, 2, img.shape).astype(np.float32)   # re-encoded copy: small noise
    other = ((yy > 20) & (xx < 30)).astype(np.float32) * 200  # another image
    fps = [fingerprint("xray", a) for a in (img, noisy, other)]
    assert fps[0].exact != fps[1].exact
    assert [(i, j) for i, j, _ in near_pairs(fps)] == [(0, 1)]


def test_ecg_near_duplicate_is_gain_and_offset_invariant():
    rng = np.random.default_rng(1)
    sig = np.cumsum(rng.normal(size=(12, 1000)), axis=1)
    sig[3] = 0.0  # a flat lead in both copies must not lower the correlation
    copy = 2.0 * sig + 0.5
    other = np.cumsum(rng.normal(size=(12, 1000)), axis=1)
    pairs = near_pairs([fingerprint("ecg", a) for a in (sig, copy, other)])
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]


def test_dna_kmer_identity_and_text_normalisation():
    rng = np.random.default_rng(2)
    seq = "".join(rng.choice(list("ACGT"), 600))
    mutated = seq[:300] + ("A" if seq[300] != "A" else "C") + seq[301:]
    other = "".join(rng.choice(list("ACGT"), 600))
    pairs = near_pairs([fingerprint("dna", s) for s in (seq, mutated, other)])
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]
    assert 0 < pairs[0][2] <= 0.05  # 12 of ~589 k-mers changed: Jaccard ≈ 0.96
    assert normalise_text("No  acute, Findings.") == normalise_text("no acute findings")


# ------------------------------------------------------------------ PHI detectors
@pytest.mark.parametrize("text,kind", [("Seen by Dr. Alan Brooks today", "name"), ("Patient: Mary Ellis", "name"),
                                       ("MRN: 12345678", "record"), ("accession AB12345678", "record"),
                                       ("exam of 03/14/2019.", "date"), ("on December 3, 2009", "date"),
                                       ("call (555) 123-4567", "phone"), ("mail jo@example.org", "email")])
def test_phi_kinds_found_and_redacted(text, kind):
    hits = find_phi(text)
    assert kind in {k for k, _, _ in hits}
    assert f"[{kind.upper()}]" in redact(text)


def test_clinical_numbers_are_not_phi():
    text = ("Cardiothoracic ratio of 16.2/24.7. T11 vertebra, 5 mm nodule. XXXX XXXX 2 views. "
            "Heart size normal. The patient is stable. Comparison: None.")
    assert find_phi(text) == []


def test_basic_profile_keywords_are_dicom_keywords_and_values_stay_out(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    from pydicom.datadict import tag_for_keyword

    assert all(tag_for_keyword(k) is not None for ks in [*BASIC_PROFILE.values(), UID_ATTRIBUTES] for k in ks)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.InstitutionName = "Secret^Person", ""
    ds.save_as(str(tmp_path / "x.dcm"))
    found = header_phi(tmp_path / "x.dcm")
    assert "PatientName" in found["names"]
    assert "InstitutionName" not in found.get("contact_location", [])  # empty: not a hit
    assert "Secret" not in json.dumps(found)


# ------------------------------------------------------------------ whole audits
def test_planted_leaks_all_found_and_no_phi_printed(tmp_path, capsys):
    shared = shared_data()
    manifest = planted_manifest(tmp_path, shared)
    out = tmp_path / "audit"
    assert main(["audit", "data", str(manifest), "--out", str(out), "--no-progress"]) == 1
    rec = json.loads((out / "audit_data.json").read_text())
    pairs = [set(p["ids"]) for p in rec["leakage"]["pairs"]]
    for planted in PLANTED["leak_pairs"]:
        assert planted in pairs
    leak = next(p for p in rec["leakage"]["pairs"] if set(p["ids"]) == {"ct0", "ct_leak"})
    assert set(leak["patient_ids"]) == {"PC0", "PLEAK1"} and leak["match"] == "exact"
    phi = rec["phi"]["text"]["columns"]["text"]
    assert {e["id"] for e in phi["examples"]} == {PLANTED["phi_row"]}
    assert PLANTED["phi_kinds"] <= set(phi["hits"])
    assert rec["phi"]["dicom"]["columns"]["ct"]["attribute_counts"]["PatientName"] >= 2
    written = (out / "audit_data.json").read_text() + (out / "audit_data.md").read_text() + capsys.readouterr().out
    for needle in ("John Carter", "44718265", "Other^Person", "X-99", "CT_small^"):
        assert needle not in written
    assert "MRN 44718265" in PHI_REPORT  # the needle really is in the manifest
    assert main(["audit", "data", str(manifest), "--out", str(out), "--no-progress", "--warn-only"]) == 0


def test_shared_data_unmodified_one_explained_alarm(tmp_path):
    """The only alarm on the shared data: CinC 2021 records E07509 and E07510 are one recording
    (byte-identical signal files, same age, sex and diagnoses) — a real duplicate, found."""
    shared = shared_data()
    manifest = real_manifest(tmp_path, shared, n_ecg=50, n_reports=400)
    out = tmp_path / "audit"
    assert main(["audit", "data", str(manifest), "--out", str(out), "--no-progress"]) == 1
    rec = json.loads((out / "audit_data.json").read_text())
    leaks = rec["leakage"]["pairs"]
    assert len(leaks) == 1 and leaks[0]["column"] == "ecg" and leaks[0]["match"] == "exact", leaks
    assert (shared / "ecg" / "cinc2021_12lead" / "E07509.mat").read_bytes() == \
        (shared / "ecg" / "cinc2021_12lead" / "E07510.mat").read_bytes()
    assert set(leaks[0]["ids"]) == {"ecg9", "ecg10"} and rec["duplicates"]["ecg"]["n_clusters"] == 1
    assert rec["summary"]["phi_text_hits"] == 0
    assert rec["duplicates"]["text"]["n_shared_content_clusters"] == rec["duplicates"]["text"]["n_clusters"]


def test_an_audit_that_read_nothing_fails(tmp_path, capsys):
    """No cell read (an empty manifest, or every file unreadable) is exit 1 with the reason, never a pass."""
    empty = tmp_path / "empty.csv"
    empty.write_text("id,patient_id,split,ecg\n")
    assert main(["audit", "data", str(empty), "--out", str(tmp_path / "a"), "--no-progress"]) == 1
    assert "nothing to audit" in capsys.readouterr().err
    broken = tmp_path / "broken.csv"
    (tmp_path / "x.hea").write_text("not a header\n")
    broken.write_text("id,patient_id,split,ecg\ns1,p1,train,x.hea\ns2,p2,test,x.hea\n")
    assert main(["audit", "data", str(broken), "--out", str(tmp_path / "b"), "--no-progress", "--warn-only"]) == 1
    assert "2 unreadable cells" in capsys.readouterr().err
