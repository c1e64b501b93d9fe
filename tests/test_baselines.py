"""Classical baseline encoders against scikit-learn / numpy references, and ``medfm evaluate --baseline``."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import signal as sps
from scipy import stats

import medfm
from medfm.cli import main
from medfm.evaluation.baselines import (EcgFeatureEncoder, KmerEncoder, TfidfEncoder, ecg_feature_names,
                                        get_baseline, kmer_frequencies)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_kmer_frequencies_match_scikit_learn_char_ngrams():
    from sklearn.feature_extraction.text import CountVectorizer

    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), size=n)) for n in (40, 57, 81)] + ["ACGTNACGTA"]
    k = 3
    got = KmerEncoder(k).transform(seqs)
    vocab = ["".join(p) for p in itertools.product("ACGT", repeat=k)]  # index = base-4 number, A = 0
    cv = CountVectorizer(analyzer="char", ngram_range=(k, k), lowercase=False, vocabulary=vocab)
    counts = cv.transform(seqs).toarray().astype(np.float64)
    ref = counts / counts.sum(1, keepdims=True)  # windows with N are not in the vocabulary: skipped
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert got.shape == (4, 64) and get_baseline("kmer").k == 6 and get_baseline("kmer4").k == 4
    assert kmer_frequencies(["NN"], 3).sum() == 0


def test_tfidf_encoder_is_scikit_learn_fitted_on_train_only():
    from sklearn.feature_extraction.text import TfidfVectorizer

    train = ["no acute findings", "small left pleural effusion", "no pneumothorax", "left effusion again",
             "no acute findings today"]
    test = ["pleural effusion on the left", "unseen words only"]
    enc = get_baseline("tfidf").fit(train)
    ref = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(train).transform(test).toarray()
    np.testing.assert_allclose(enc.transform(test), ref, atol=1e-6)
    assert isinstance(enc, TfidfEncoder) and enc.transform(test)[1].sum() == 0  # nothing learnt from test


def _synthetic_ecg(fs=500.0, bpm=75.0, seconds=10.0, seed=0):
    """12 leads of Gaussian 'R waves' at a fixed rate plus noise, in mV."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(fs * seconds)) / fs
    beats = np.arange(0.3, seconds, 60.0 / bpm)
    qrs = sum(np.exp(-0.5 * ((t - b) / 0.012) ** 2) for b in beats)
    gains = np.linspace(0.5, 1.5, 12)
    return gains[:, None] * qrs[None, :] + 0.01 * rng.normal(size=(12, t.size))


def test_ecg_features_heart_rate_and_per_lead_statistics():
    fs = 500.0
    x = _synthetic_ecg(fs, bpm=75.0)
    X = EcgFeatureEncoder().transform([(x, fs), (_synthetic_ecg(fs, bpm=110.0, seed=1), fs)])
    names = ecg_feature_names()
    assert X.shape == (2, len(names))
    assert X[0, names.index("heart_rate_bpm")] == pytest.approx(75.0, abs=1.5)
    assert X[1, names.index("heart_rate_bpm")] == pytest.approx(110.0, abs=2.0)
    assert X[0, names.index("n_beats")] == 13
    # per-lead statistics = numpy / scipy on the 0.5–40 Hz band-passed signal
    sos = sps.butter(3, [0.5, 40.0], btype="band", fs=fs, output="sos")
    f = sps.sosfiltfilt(sos, x, axis=-1)
    for lead in (0, 7):
        name = ecg_feature_names()[4 + 5 * lead].rsplit("_", 1)[0]
        ref = [f[lead].mean(), f[lead].std(), np.ptp(f[lead]), stats.skew(f[lead]), stats.kurtosis(f[lead])]
        got = [X[0, names.index(f"{name}_{s}")] for s in ("mean", "std", "p2p", "skew", "kurt")]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)


def test_unknown_baseline_is_a_usage_error():
    from medfm.errors import UsageError

    with pytest.raises(UsageError, match="nope"):
        get_baseline("nope")


# ------------------------------------------------------------------ CLI
def _barcodes(n_per_species=8, n_species=2, length=120, seed=0):
    """Species = a random template; specimens = the template with 3 % point mutations."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_species):
        template = rng.choice(list("ACGT"), size=length)
        for i in range(n_per_species):
            seq = template.copy()
            hit = rng.random(length) < 0.03
            seq[hit] = rng.choice(list("ACGT"), size=int(hit.sum()))
            split = "train" if i < n_per_species // 2 else ("val" if i < n_per_species * 3 // 4 else "test")
            rows.append({"id": f"s{s}_{i}", "patient_id": f"s{s}_{i}", "split": split, "dna": "".join(seq),
                         "species": f"species_{s}", "text": f"barcode of species {s} specimen"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def dna_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline_cli")
    df = _barcodes()
    manifest = root / "manifest.csv"
    df.to_csv(manifest, index=False)
    torch.manual_seed(0)
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {"dna": {"max_length": 120, "k": 4}}})
    model.save_pretrained(root / "model")
    return {"root": root, "manifest": manifest, "model": root / "model", "df": df}


def test_cli_probe_writes_the_baseline_row(dna_setup, capsys):
    out = dna_setup["root"] / "probe"
    rc = main(["evaluate", "probe", "--model", str(dna_setup["model"]), "--manifest", str(dna_setup["manifest"]),
               "--modality", "dna", "--label-column", "species", "--out", str(out), "--baseline", "kmer4",
               "--n-boot", "20", "--shots", "1", "--few-shot-seeds", "1", "--knn-k", "3", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    rec = json.loads((out / "results.json").read_text())
    assert rec["baseline"]["name"] == "kmer4" and rec["baseline"]["dim"] == 256
    acc = rec["metrics"]["baseline/kmer4/linear/accuracy"]
    assert acc == 1.0  # two species 3 % apart: k-mer frequencies separate them; chance is 0.5
    assert rec["metrics"]["baseline/kmer4/knn/accuracy"] == 1.0
    assert "baseline/kmer4/linear/accuracy" in rec["ci"]
    md = (out / "report.md").read_text()
    assert "Model vs baseline `kmer4`" in md and "| linear/accuracy |" in md


def test_cli_retrieval_baseline_and_wrong_modality(dna_setup, capsys):
    out = dna_setup["root"] / "retrieval"
    rc = main(["evaluate", "retrieval", "--model", str(dna_setup["model"]), "--manifest", str(dna_setup["manifest"]),
               "--query-modality", "dna", "--gallery-modality", "dna", "--match", "label:species",
               "--out", str(out), "--baseline", "kmer", "--n-boot", "0", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    rec = json.loads((out / "results.json").read_text())
    # query = gallery: every sample's nearest neighbour is itself, a same-species match, for the baseline too
    assert rec["metrics"]["baseline/kmer6/dna_to_dna_R@1"] == 1.0
    assert rec["metrics"]["baseline/kmer6/dna_to_dna_mAP"] > 0.99  # all same-species specimens rank first
    rc = main(["evaluate", "retrieval", "--model", str(dna_setup["model"]), "--manifest", str(dna_setup["manifest"]),
               "--query-modality", "dna", "--gallery-modality", "dna", "--out", str(out), "--baseline", "tfidf",
               "--no-progress"])
    assert rc == 2 and "tfidf" in capsys.readouterr().err
