"""PHI from DICOM headers never reaches an output file, a log line or the console.

DICOMs carrying a patient name, id and birth date go through every DICOM reader path
(2D image, single-file volume, series folder, 12-lead waveform, OCT), including files
that fail to read, in ``medfm pretrain`` and ``medfm embed``; then every file written
and every captured line is searched for the identifiers (as text, and as the bytes of
the other encodings DICOM uses). Vendor OCT formats (E2E, FDS) are not covered: no
writer for them exists to plant identifiers in a test file.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

import medfm
from medfm.cli import main

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

NAME, PID, BIRTH = "Doe^Janet^PHIMARKER", "PHI-ID-987654", "19010203"
NEEDLES = [NAME, "Doe^Janet", "Janet", "PHIMARKER", PID, "987654", BIRTH, "1901-02-03"]
OPTIONS = {
    "xray": {"size": 32, "patch_size": 16},
    "ct": {"size": [8, 32, 32], "patch_size": [4, 16, 16], "target_spacing": None},
    "ecg": {"fs": 100, "duration": 2.0, "min_duration": 1.0, "patch_size": 50},
    "oct": {"frames": 4, "size": [32, 32], "patch_size": [2, 16, 16]},
}


def _with_phi(src: str, dst: Path, **extra) -> Path:
    ds = pydicom.dcmread(src)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, PID, BIRTH
    ds.OtherPatientIDs = PID
    ds.InstitutionName = "PHIMARKER hospital"
    for k, v in extra.items():
        setattr(ds, k, v)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=False)
    return dst


def _cohort(root: Path) -> Path:
    import pandas as pd

    ct_src, ecg_src = get_testdata_file("CT_small.dcm"), get_testdata_file("waveform_ecg.dcm")
    for i in range(4):  # a series folder: 4 slices 2.5 mm apart
        _with_phi(ct_src, root / "series" / f"{i}.dcm", ImagePositionPatient=[0.0, 0.0, 2.5 * i],
                  ImageOrientationPatient=[1, 0, 0, 0, 1, 0], SOPInstanceUID=f"1.2.826.0.1.{i}")
    rows = []
    for i in range(6):
        _with_phi(ct_src, root / f"img{i}.dcm")
        _with_phi(ct_src, root / f"xr{i}.dcm", Modality="DX")  # the CT slice's pixels as each modality's
        _with_phi(ct_src, root / f"oct{i}.dcm", Modality="OPT")
        _with_phi(ecg_src, root / f"ecg{i}.dcm")
        rows.append({"id": f"s{i}", "patient_id": f"p{i}", "xray": f"xr{i}.dcm", "ecg": f"ecg{i}.dcm",
                     "ct": "series" if i % 2 else f"img{i}.dcm", "oct": f"oct{i}.dcm"})
    # unreadable ones with PHI too: the error messages must stay clean
    _with_phi(ct_src, root / "bad_rows.dcm", Rows=100)
    _with_phi(ct_src, root / "bad_rows_xr.dcm", Rows=100, Modality="DX")
    _with_phi(ct_src, root / "bad_rows_oct.dcm", Rows=100, Modality="OPT")
    _with_phi(ct_src, root / "bad_wave.dcm", Modality="ECG")  # an image where a waveform is expected
    rows.append({"id": "s6", "patient_id": "p6", "xray": "bad_rows_xr.dcm", "ecg": "bad_wave.dcm",
                 "ct": "bad_rows.dcm", "oct": "bad_rows_oct.dcm"})
    manifest = root / "cohort.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def _scan(path: Path) -> list:
    hits = []
    variants = []
    for n in NEEDLES:
        variants += [n.encode(), n.encode("utf-16-le"), n.lower().encode()]
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        data = f.read_bytes()
        if f.suffix == ".dcm":
            continue  # the inputs themselves
        hits += [(str(f), v) for v in variants if v in data]
    return hits


def test_phi_never_reaches_outputs_or_logs(tmp_path, capsys, caplog, one_thread):
    data = tmp_path / "data"
    manifest = _cohort(data)
    cfg = {"model": {"name": "medfm-tiny", "trunk": {"depth": 1}, "modalities": OPTIONS},
           "data": {"manifest": str(manifest), "batch_size": 7, "split": None},
           "objectives": [{"name": "clip", "weight": 1.0}, {"name": "masked", "weight": 0.5}],
           "train": {"max_steps": 2, "checkpoint_every": 1, "tensorboard": True, "progress": False}}
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        assert main(["pretrain", str(run_yaml), "--out", str(out)]) == 0
        for mod in OPTIONS:
            assert main(["embed", "--model", str(out), "--manifest", str(manifest), "--modality", mod,
                         "--out", str(out / f"emb_{mod}.safetensors"), "--no-progress"]) == 0
    printed = capsys.readouterr()
    # every reader path was exercised, and the bad files were skipped with messages
    m = [__import__("json").loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert m[-1]["n_modality_errors"] >= 4 and m[-1]["n_skipped"] >= 1  # s6: every modality unreadable
    for mod in OPTIONS:
        emb = medfm.evaluation.embed.load_embeddings(out / f"emb_{mod}.safetensors")
        assert len(emb.ids) == 6, mod
    logs = caplog.text + printed.out + printed.err
    assert "bad_rows.dcm" in logs and "bad_wave.dcm" in logs  # errors name the file ...
    for n in NEEDLES:  # ... never the patient
        assert n not in logs and n.lower() not in logs.lower(), n
    assert _scan(out) == []
    assert len([p for p in out.rglob("*") if p.is_file()]) > 10  # checkpoints, tb events, embeddings scanned


# ---------------------------------------------------------------- report text → vocabularies
TEXT_NEEDLES = ["zebulon", "quixote", "7744551", "20240105"]
COMMON = ["no acute cardiopulmonary process", "small left pleural effusion", "mild cardiomegaly",
          "normal heart size", "clear lungs bilaterally", "stable chest radiograph"]


def _report_cohort(root: Path) -> Path:
    """30 patients' reports: three dictated by a rare name with a record number, and an
    accession number that ten patients share (frequent, but a number)."""
    import pandas as pd

    rows = []
    for i in range(30):
        text = f"{COMMON[i % 6]}. {COMMON[(i * 5 + 1) % 6]}."
        if i in (3, 11, 19):
            text += " Dictated by Dr Zebulon Quixote, MRN 7744551 (MRN7744551)."
        if i % 3 == 0:
            text += " Accession 20240105."
        rows.append({"id": f"s{i}", "patient_id": f"p{i}", "text": text})
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "reports.csv", index=False)
    return root / "reports.csv"


def _scan_text(*dirs: Path) -> list:
    hits, n = [], 0
    for d in dirs:
        for f in sorted(p for p in d.rglob("*") if p.is_file()):
            n += 1
            data = f.read_bytes().lower()
            hits += [(str(f), w) for w in TEXT_NEEDLES if w.encode() in data or w.encode("utf-16-le") in data]
    return hits, n


def test_report_text_names_and_numbers_never_enter_vocabularies_checkpoints_or_exports(tmp_path, one_thread):
    manifest = _report_cohort(tmp_path / "data")
    text = {"vocab_size": 400, "max_length": 32, "min_frequency": 2,
            "hf_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                          "intermediate_size": 64}}
    cfg = {"model": {"name": "medfm-tiny", "trunk": {"depth": 1}, "modalities": {"text": text}},
           "data": {"manifest": str(manifest), "batch_size": 8, "split": None},
           "objectives": [{"name": "masked", "weight": 1.0}],
           "train": {"max_steps": 2, "checkpoint_every": 1, "tensorboard": False, "progress": False}}
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(cfg))
    out, exp = tmp_path / "out", tmp_path / "export"
    assert main(["pretrain", str(run_yaml), "--out", str(out)]) == 0
    assert main(["export", str(out), "--format", "onnx", "--out", str(exp)]) == 0
    vocab = medfm.load_pretrained(out).adapters["text"].tokenizer.get_vocab()
    assert {"effusion", "cardiomegaly", "pleural"} <= set(vocab)  # words of every patient are learnt
    assert not any(c.isdigit() for t in vocab for c in t if len(t.lstrip("#")) > 1)  # no multi-char number piece
    meta = __import__("json").loads((out / "modalities" / "text" / "text_tokenizer_config.json").read_text())
    assert meta["vocabulary_rule"]["min_patients"] == 5
    assert meta["vocabulary_rule"]["patients_counted_by"] == "patient_id"
    hits, n = _scan_text(out, exp)
    assert hits == []
    assert (exp / "modalities" / "text" / "text_tokenizer.json").is_file() and (out / "checkpoints").is_dir()
    assert n >= 10  # model, checkpoints, metrics, card, export scanned


def test_patient_rule_counts_patients_not_texts():
    """A word written in many reports of two patients stays out; one in five patients' reports is in."""
    from medfm.registry import get_modality

    texts = ["quixote effusion"] * 10 + ["effusion"] * 3
    pids = ["a"] * 5 + ["b"] * 5 + ["c", "d", "e"]
    adapter = get_modality("text", vocab_size=200, min_frequency=1)
    adapter.fit(texts, patient_ids=pids)
    vocab = adapter.tokenizer.get_vocab()
    assert "effusion" in vocab and "quixote" not in vocab
    adapter.fit(texts)  # without ids every text is its own patient: 10 texts ≥ 5
    assert "quixote" in adapter.tokenizer.get_vocab()
    adapter = get_modality("text", vocab_size=200, min_frequency=1, min_patients=2)
    adapter.fit(texts, patient_ids=pids)
    assert "quixote" in adapter.tokenizer.get_vocab()


def test_fit_on_cohort_passes_patient_ids_and_keeps_old_adapters_working():
    from medfm.modality import fit_on_cohort
    from medfm.registry import get_modality

    class Old:  # a plug-in adapter written before patient ids were passed
        def fit(self, values):
            self.seen = list(values)

    old = Old()
    fit_on_cohort(old, ["a", "b"], ["p1", "p2"])
    assert old.seen == ["a", "b"]
    text = get_modality("text", vocab_size=200, min_frequency=1)
    fit_on_cohort(text, ["zebulon effusion"] * 6, ["p1"] * 6)  # one patient: the name stays out
    assert "zebulon" not in text.tokenizer.get_vocab()
    assert text.vocabulary_rule["patients_counted_by"] == "patient_id"
