"""The walkthrough's numbers are the user's: a pinned salt, search without the query itself,
retrieval against a gallery of copies that ranks each distinct content once."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from medfm.cli import main
from medfm.data.cohort import salt_from_text, salted_hash
from medfm.errors import UsageError
from medfm.evaluation.index import VectorIndex, sample_key
from medfm.evaluation.tasks import run_retrieval


def _barcodes(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"processid": f"P{i:03d}", "order_name": "Diptera" if i % 2 else "Lepidoptera",
             "species_name": f"sp{i % 5}", "nucleotides": "ACGT" * 30 + "ACGTACGTAC"[: i % 10]} for i in range(40)]
    pd.DataFrame(rows).to_csv(folder / "bold.tsv", sep="\t", index=False)
    return folder / "bold.tsv"


def test_pinned_salt_text_gives_the_same_split_on_every_machine(tmp_path, capsys):
    src = _barcodes(tmp_path / "data")
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name / "cohort.csv"
        assert main(["manifest", str(src), "--out", str(out), "--split", "train=0.5,test=0.5", "--seed", "0",
                     "--salt", "medfm-walkthrough-salt"]) == 0
        assert not (tmp_path / name / "cohort.csv.salt").exists()  # nothing secret written for a typed salt
        outs.append(pd.read_csv(out))
        o, err = capsys.readouterr()  # the progress bar (on by default) is on stderr, the summary on stdout
        assert o.startswith(f"wrote {out}: 40 rows") and "manifest" not in o and "manifest:" in err
    pd.testing.assert_frame_equal(outs[0], outs[1])
    # the key is the text's bytes: patient ids are the HMAC a user can recompute
    assert set(outs[0]["patient_id"]) == {salted_hash(f"sample:bold.tsv:P{i:03d}", b"medfm-walkthrough-salt")
                                          for i in range(40)}
    # a random salt file (the default) gives another split: the pinned one is what makes runs agree
    assert main(["manifest", str(src), "--out", str(tmp_path / "c" / "cohort.csv"), "--split",
                 "train=0.5,test=0.5", "--seed", "0"]) == 0
    other = pd.read_csv(tmp_path / "c" / "cohort.csv")
    assert list(other["patient_id"]) != list(outs[0]["patient_id"])
    capsys.readouterr()
    with pytest.raises(UsageError, match="at least 16"):
        salt_from_text("short")
    assert main(["manifest", str(src), "--out", str(tmp_path / "d.csv"), "--salt", "x" * 16,
                 "--salt-file", str(tmp_path / "s")]) == 2


def test_retrieval_ranks_each_distinct_gallery_text_once():
    """Hand computation: 2 distinct texts, 3 copies each; the query's label is B's.

    sims: A = 0.9, B = 0.5. Copies kept: ranking A A A B B B → first match at rank 4, R@1 = R@2 = 0,
    R@5 = 1, chance R@1 = 3/6. Copies merged: A B → rank 2, R@1 = 0, R@2 = 1, chance R@1 = 1/2,
    chance R@2 = 1 (every ranking of 2 items has B in the top 2).
    """
    a, b = np.array([1.0, 0.0]), np.array([0.5, np.sqrt(1 - 0.25)])
    q = np.array([[0.9, np.sqrt(1 - 0.81)]])
    gallery = np.stack([a, a, a, b, b, b])
    texts = ["text A"] * 3 + ["text B"] * 3
    keys_g = [{"x"}] * 3 + [{"y"}] * 3
    kw = dict(query_groups=["p0"], gallery_groups=[f"g{i}" for i in range(6)], names=("dna", "text"),
              ks=(1, 2, 5), n_boot=0, both=False)
    copies = run_retrieval(q, gallery, [{"y"}], keys_g, **kw)
    merged = run_retrieval(q, gallery, [{"y"}], keys_g, gallery_values=texts, **kw)
    assert copies.metrics["dna_to_text_R@2"] == 0.0 and copies.metrics["dna_to_text_R@5"] == 1.0
    assert copies.metrics["dna_to_text_median_rank"] == 4
    assert merged.metrics["dna_to_text_R@1"] == 0.0 and merged.metrics["dna_to_text_R@2"] == 1.0
    assert merged.metrics["dna_to_text_median_rank"] == 2
    assert merged.chance["dna_to_text_R@1"] == pytest.approx(0.5)
    assert merged.chance["dna_to_text_R@2"] == pytest.approx(1.0)
    assert copies.chance["dna_to_text_R@2"] == pytest.approx(1 - (3 * 2) / (6 * 5))  # 1 - C(3,2)/C(6,2)
    assert merged.info["n_gallery_unique"] == {"dna_to_text": 2}


def test_duplicate_gallery_no_longer_makes_r5_equal_r1():
    """14 texts × many copies (the walkthrough's gallery): with copies, R@5 = R@1 for any ranking in
    which copies tie; merged, R@5 ≥ R@1 and reaches 1 when the right text is 2nd–5th."""
    rng = np.random.default_rng(0)
    texts = rng.normal(size=(14, 16))
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    lab = rng.integers(0, 14, size=300)
    gallery, values = texts[lab], [f"t{i}" for i in lab]
    # each query sits between its own text and another: its own text is 2nd
    own, other = rng.integers(0, 14, size=50), rng.integers(0, 14, size=50)
    other = np.where(other == own, (own + 1) % 14, other)
    q = 0.45 * texts[own] + 0.55 * texts[other]
    keys_q, keys_g = [{str(o)} for o in own], [{str(v)} for v in lab]
    kw = dict(query_groups=[str(i) for i in range(50)], gallery_groups=[str(i) for i in range(300)],
              names=("dna", "text"), n_boot=0, both=False)
    copies = run_retrieval(q, gallery, keys_q, keys_g, **kw)
    merged = run_retrieval(q, gallery, keys_q, keys_g, gallery_values=values, **kw)
    assert copies.metrics["dna_to_text_R@5"] == copies.metrics["dna_to_text_R@1"]
    assert merged.metrics["dna_to_text_R@5"] > merged.metrics["dna_to_text_R@1"]
    assert merged.chance["dna_to_text_R@1"] == pytest.approx(1 / 14)


def test_search_leaves_out_the_query_sample_and_its_patient(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "seqs.tsv").write_text("id\tseq\n")
    link = tmp_path / "work" / "link.tsv"
    link.parent.mkdir()
    os.symlink(data / "seqs.tsv", link)
    # the same record named from the manifest's folder and from the working directory
    k_manifest = sample_key("../data/seqs.tsv#R1", tmp_path / "cohort_dir")
    assert k_manifest is None  # relative to a folder that does not exist: no such file
    (tmp_path / "cohort_dir").mkdir()
    k_manifest = sample_key("../data/seqs.tsv#R1", tmp_path / "cohort_dir")
    monkeypatch.chdir(tmp_path / "work")
    assert sample_key("link.tsv#R1", os.getcwd()) == k_manifest
    assert sample_key("link.tsv#R2", os.getcwd()) != k_manifest
    assert sample_key("ACGTACGT", os.getcwd()) is None  # an inline value has no file identity

    x = np.eye(4, 8, dtype=np.float32)
    x[1] = x[0]  # another sample of the query's patient, identical vector
    x[2] = 0.9 * x[0] + 0.1 * np.eye(8)[5]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    keys = [k_manifest, sample_key("../data/seqs.tsv#R9", tmp_path / "cohort_dir"), None, None]
    idx = VectorIndex.build(x, ["R1", "R1b", "R3", "R4"], patients=["p1", "p1", "p3", "p4"], sample_keys=keys,
                            model_fingerprint="f" * 64)
    idx.save(tmp_path / "idx")
    back = VectorIndex.load(tmp_path / "idx")
    assert back.info["metadata_columns"] == []  # hidden columns are not shown as metadata
    own = back.self_positions(sample_key("link.tsv#R1", os.getcwd()))
    assert own == {"sample": [0], "patient": [1]}
    hits = back.search_records(x[:1], 2, exclude=own["sample"] + own["patient"])[0]
    assert [h["id"] for h in hits] == ["R3", "R4"] and [h["rank"] for h in hits] == [1, 2]
    assert all(set(h) == {"rank", "score", "id"} for h in hits)
    hits_all = back.search_records(x[:1], 2)[0]
    assert {h["id"] for h in hits_all} == {"R1", "R1b"}
    assert back.self_positions(None) == {"sample": [], "patient": []}
