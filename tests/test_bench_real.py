"""CI run of the real-data benchmark suite with its tiny ``--quick`` budgets.

Runs ``python -m benchmarks.real --quick`` once (a subprocess, like a user would) on
``../shared/data`` and checks that every block produced its metrics and computed each
baseline, then checks a few numbers against independent references (scikit-learn k-mer
1-NN, the clinical definition of sinus tachycardia, exact DICOM/NIfTI voxel agreement).
Skips when ``../shared/data`` is absent (a user's machine).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BLOCKS = ("dna", "ecg", "imaging", "reports")

pytestmark = pytest.mark.skipif(not DATA.is_dir(),
                                reason=f"real data not found at {DATA} (../shared/data is only on the team's machines)")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_real")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.real", "--data", str(DATA), "--out", str(out), "--quick"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads((out / "results.json").read_text())
    return out, results, proc.stdout


def _value(block, key):
    m = block["metrics"][key]
    return m["value"]


def test_every_block_ran_and_wrote_its_report(quick_run):
    out, res, stdout = quick_run
    assert res["mode"] == "quick" and set(res["blocks"]) == set(BLOCKS)
    for name in BLOCKS:
        assert "error" not in res["blocks"][name], res["blocks"][name].get("error")
        assert res["blocks"][name]["metrics"], name
    md = (out / "report.md").read_text()
    for name in BLOCKS:
        assert f"## Block: {name}" in md
        for plot in res["blocks"][name]["plots"]:
            assert (out / plot).is_file() and (out / plot).stat().st_size > 1000, plot
    assert "ratio" in stdout and "kmer6" in stdout  # the printed headline table


def test_dna_metrics_and_baselines(quick_run):
    _, res, _ = quick_run
    dna = res["blocks"]["dna"]
    assert {"kmer4", "kmer5", "kmer6", "random"} <= set(dna["baselines"])
    for rep in ("ssl", "random", "kmer4", "kmer5", "kmer6", "clibd"):
        for metric in ("1nn_species_acc_seen", "1nn_genus_acc_unseen", "bioscan_seen_species_micro",
                       "bioscan_unseen_genus_macro"):
            m = dna["metrics"][f"{rep}/{metric}"]
            assert 0.0 <= m["value"] <= 1.0 and m["n"] > 0
            lo, hi = m["ci"]
            assert lo - 1e-9 <= m["value"] <= hi + 1e-9
    for rep in ("ssl", "random", "kmer4"):
        assert 0.0 <= _value(dna, f"{rep}/probe_species_acc_seen") <= 1.0
    assert any(k.startswith("clibd/zeroshot_genus_acc_unseen_species") for k in dna["metrics"])
    assert dna["training"]["ssl"]["steps"] == res["budgets"]["dna"]["ssl_steps"]
    # the trunk gate starts at 0 (random tower = bag of 5-mers) and training moves it
    assert dna["trunk_gate"]["random"] == 0.0 and dna["trunk_gate"]["ssl"] != 0.0
    # unseen species are held out entirely
    splits = {r["split"]: r for r in dna["tables"]["split"]}
    assert splits["unseen"]["species"] == res["budgets"]["dna"]["n_unseen"]


def test_dna_kmer_baseline_matches_scikit_learn(quick_run):
    """The k=6 1-NN species accuracy equals a scikit-learn CountVectorizer + cosine 1-NN on the same split."""
    _, res, _ = quick_run
    sys.path.insert(0, str(ROOT))
    from benchmarks.real import dna as dna_mod
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.neighbors import KNeighborsClassifier

    b = res["budgets"]["dna"]
    df = dna_mod.load_table(DATA, b["n_species"], b["n_per_species"], res["seed"])
    df["split"] = dna_mod.split_species(df, n_unseen=b["n_unseen"], n_test=b["n_test_per_species"],
                                        n_val=b["n_val_per_species"], seed=res["seed"])
    kmers = lambda s: [s[i:i + 6] for i in range(len(s) - 5) if set(s[i:i + 6]) <= set("ACGT")]  # noqa: E731
    X = CountVectorizer(analyzer=kmers).fit_transform(df["nucleotides"])
    keys = df["split"].isin(["train", "val"]).to_numpy()
    test = (df["split"] == "test").to_numpy()
    knn = KNeighborsClassifier(n_neighbors=1, metric="cosine", algorithm="brute").fit(X[keys], df["species_name"][keys])
    ref = float(np.mean(knn.predict(X[test]) == df["species_name"][test].to_numpy()))
    got = _value(res["blocks"]["dna"], "kmer6/1nn_species_acc_seen")
    assert got == pytest.approx(ref, abs=1e-9)
    assert got > 1.0 / df["species_name"].nunique()  # far above chance on real barcodes


def test_ecg_records_table_probes_and_feature_baseline(quick_run):
    _, res, _ = quick_run
    ecg = res["blocks"]["ecg"]
    assert {"simple_features", "random"} <= set(ecg["baselines"])
    rows = ecg["tables"]["records"]
    assert len(rows) == ecg["metrics"]["records_read"]["n"] > 0
    assert {r["source"] for r in rows} == {"Georgia", "PTB-XL", "Ningbo"}
    assert all(r["leads_found"] == 12 and r["duration_s"] == 10.0 for r in rows)
    for rep in ("pretrained", "random", "simple_features"):
        assert f"{rep}/macro_auroc" in ecg["metrics"]
        assert len(ecg["tables"][f"folds_{rep}"]) == 3 * res["budgets"]["ecg"]["top_codes"]
    # heart rate from R peaks agrees with the cardiologists' labels: sinus tachycardia means > 100 bpm,
    # sinus bradycardia < 60 bpm (SNOMED 427084000 / 426177001)
    tachy = [r["heart_rate_bpm"] for r in rows if "427084000" in r["dx"].split()]
    brady = [r["heart_rate_bpm"] for r in rows if "426177001" in r["dx"].split()]
    assert tachy and np.median(tachy) > 100
    if brady:
        assert np.median(brady) < 60


def test_label_efficiency_and_partial_leads(quick_run):
    """The task API's curve on the DNA block (model, random twin, k-mer 6; crossover in the notes) and the ECG
    block's partial-lead table (all 12, then each subset)."""
    _, res, _ = quick_run
    dna = res["blocks"]["dna"]
    le = dna["label_efficiency"]
    assert set(le["curves"]) == {"model", "random weights", "baseline/kmer6"} and le["ns"][-1] == "all"
    assert set(le["crossover"]) == {"random weights", "baseline/kmer6"}
    assert sum("label efficiency" in n for n in dna["notes"]) == 2
    assert "dna_label_efficiency.png" in dna["plots"]
    ecg = res["blocks"]["ecg"]
    if "label_efficiency" in ecg:  # leave-one-source-out on the most frequent code
        assert set(ecg["label_efficiency"]["crossover"]) == {"random weights", "baseline/ecg-features"}
    else:  # a quick run may lack a class in every fold: the note says so
        assert any("label-efficiency curve not computed" in n for n in ecg["notes"])
    table = ecg["tables"]["partial_leads"]
    assert [r["leads"] for r in table] == ["all 12", "I", "I,II", "limb", "precordial"]
    assert table[0]["macro_auroc"] == _value(res["blocks"]["ecg"], "pretrained/macro_auroc")


def test_imaging_ct_control_and_oct_files(quick_run):
    _, res, _ = quick_run
    img = res["blocks"]["imaging"]
    ct = img["ct"]
    assert ct["files"]["dicom_series"]["orientation"] == ct["files"]["nifti_crop"]["orientation"] == "RAS"
    assert ct["control_same_shape"] and ct["control_max_abs_hu_diff"] == 0.0
    assert ct["cosine_series_vs_series_as_nifti"] >= 0.99
    assert ct["explanation"]
    files = img["oct"]["files"]
    vol = [f for f in files if f["file"].endswith(".vol")]
    assert {f["adapter"] for f in vol} == {"oct", "fundus"} and all(f["status"] == "read" for f in vol)
    assert all(f["embedding_finite"] for f in vol)
    for f in files:
        if f["status"] == "error":  # a clear error naming the file
            assert f["file"] in f["error"]


def test_reports_retrieval_and_tfidf(quick_run):
    _, res, _ = quick_run
    rep = res["blocks"]["reports"]
    assert {"tfidf", "random"} <= set(rep["baselines"])
    n = rep["tables"]["split"][1]["reports"]
    for model in ("clip", "random", "tfidf"):
        r = [_value(rep, f"{model}/findings_to_impression_R@{k}") for k in (1, 5, 10)]
        assert r[0] <= r[1] <= r[2] <= 1.0
    # TF-IDF matches a report's findings to its own impression far above chance (10 / n at k = 10)
    assert _value(rep, "tfidf/findings_to_impression_R@10") > 2 * 10 / n
