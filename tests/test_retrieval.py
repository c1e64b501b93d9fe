"""Retrieval metrics against a brute-force computation; many-to-many ground truth; BIOSCAN accuracy."""
import numpy as np
import pandas as pd
import pytest

from medfm.errors import DataError
from medfm.evaluation.retrieval import (bioscan_accuracy, cross_modal_retrieval, ground_truth, keys_from_manifest,
                                        retrieval_metrics)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force(q, g, qkeys, gkeys, ks=(1, 5, 10)):
    """Rank every gallery item for every query in plain Python."""
    firsts, aps = [], []
    for i in range(len(q)):
        sims = [float(np.dot(q[i], g[j])) for j in range(len(g))]
        order = sorted(range(len(g)), key=lambda j: (-sims[j], j))
        rel = [bool(set(qkeys[i]) & set(gkeys[j])) for j in order]
        if not any(rel):
            continue
        firsts.append(rel.index(True) + 1)
        hits, precs = 0, []
        for r, is_rel in enumerate(rel, start=1):
            if is_rel:
                hits += 1
                precs.append(hits / r)
        aps.append(sum(precs) / len(precs))
    firsts = np.array(firsts)
    out = {f"R@{k}": np.mean(firsts <= k) for k in ks}
    out.update(MRR=np.mean(1 / firsts), mAP=np.mean(aps), median_rank=np.median(firsts),
               mean_rank=np.mean(firsts), n_queries=len(firsts))
    return out


def test_many_to_many_against_brute_force():
    rng = np.random.default_rng(0)
    q, g = _unit(rng.normal(size=(40, 8))), _unit(rng.normal(size=(55, 8)))
    labels = list("abcdefgh")
    qkeys = [list(rng.choice(labels, rng.integers(1, 3), replace=False)) for _ in range(40)]
    gkeys = [list(rng.choice(labels, rng.integers(1, 3), replace=False)) for _ in range(55)]
    qkeys[3] = ["zzz"]  # a query without any match: excluded and counted
    got = retrieval_metrics(q, g, ground_truth(qkeys, gkeys), prefix="a_to_b_", block=7)
    ref = _brute_force(q, g, qkeys, gkeys)
    for name, val in ref.items():
        assert got[f"a_to_b_{name}"] == pytest.approx(val), name
    assert got["a_to_b_n_no_match"] == 1


def test_both_directions_and_names_with_paired_ids():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(30, 16))
    xray, text = _unit(base + 0.3 * rng.normal(size=base.shape)), _unit(base + 0.3 * rng.normal(size=base.shape))
    ids = [[f"s{i}"] for i in range(30)]
    m = cross_modal_retrieval(xray, text, ids, ids, "xray", "text")
    for d, (a, b) in {"xray_to_text": (xray, text), "text_to_xray": (text, xray)}.items():
        ref = _brute_force(a, b, ids, ids)
        for name in ("R@1", "R@5", "R@10", "MRR", "mAP", "median_rank", "mean_rank"):
            assert m[f"{d}_{name}"] == pytest.approx(ref[name])
    # one relevant item per query: mAP equals MRR; these paired embeddings are well above chance
    assert m["xray_to_text_mAP"] == pytest.approx(m["xray_to_text_MRR"])
    assert m["xray_to_text_R@1"] > 5 / 30


def test_keys_from_manifest_modes():
    df = pd.DataFrame({"id": ["1", "2", "3"], "patient_id": ["p", "p", "q"],
                       "findings": ["Edema|Effusion", None, "Effusion"]})
    assert keys_from_manifest(df, "id") == [{"1"}, {"2"}, {"3"}]
    gt = ground_truth(keys_from_manifest(df, "patient"), keys_from_manifest(df, "patient")).toarray()
    assert gt.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    gt = ground_truth(keys_from_manifest(df, "label:findings"), keys_from_manifest(df, "label:findings")).toarray()
    assert gt[0, 2] and not gt[1].any()
    with pytest.raises(DataError, match="nope"):
        keys_from_manifest(df, "label:nope")


def test_empty_gallery_is_an_error():
    with pytest.raises(DataError, match="empty gallery"):
        retrieval_metrics(np.ones((2, 4)), np.zeros((0, 4)), ground_truth([["a"]] * 2, []))


def test_bioscan_seen_unseen_per_rank():
    rng = np.random.default_rng(2)
    ranks = ["order", "genus", "species"]
    key_labels = pd.DataFrame({"order": ["O1", "O1", "O2", "O2"], "genus": ["G1", "G1", "G2", "G3"],
                               "species": ["s1", "s2", "s3", "s4"]})
    keys = _unit(np.eye(4, 8) + 0.01 * rng.normal(size=(4, 8)))
    # queries 0-3: copies of the keys' species (seen); query 4: an unseen species of genus G1
    # closest to key 1; query 5: unseen species of genus G9, order O2, closest to key 2
    q = _unit(np.vstack([keys, keys[1] + 0.01, keys[2] + 0.01]))
    q_labels = pd.DataFrame({"order": ["O1", "O1", "O2", "O2", "O1", "O2"],
                             "genus": ["G1", "G1", "G2", "G3", "G1", "G9"],
                             "species": ["s1", "s2", "s3", "s4", "s5", "s6"]})
    m = bioscan_accuracy(q, q_labels, keys, key_labels, ranks)
    assert m["seen/n"] == 4 and m["unseen/n"] == 2
    for r in ranks:
        assert m[f"seen/{r}/micro"] == 1.0 and m[f"seen/{r}/macro"] == 1.0
    assert m["unseen/species/micro"] == 0.0
    assert m["unseen/order/micro"] == 1.0
    assert m["unseen/genus/micro"] == 0.5  # G1 right, G9 → G2 wrong
    # macro: mean per-class recall over true genera {G1: 1, G9: 0}
    assert m["unseen/genus/macro"] == 0.5
    # an explicit seen mask overrides the key-set default
    m2 = bioscan_accuracy(q, q_labels, keys, key_labels, ranks, seen=np.array([True] * 6))
    assert m2["seen/n"] == 6 and m2["seen/species/micro"] == pytest.approx(4 / 6)


def test_bioscan_on_real_barcodes_with_kmer_profiles():
    """Real COI barcodes (../shared/data): 4-mer profiles as embeddings, 80 seen species split into
    keys/queries and 20 unseen species as queries only."""
    from pathlib import Path

    from sklearn.feature_extraction.text import CountVectorizer

    tsv = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dna" / "coi_barcodes_100_species.tsv"
    if not tsv.is_file():
        pytest.skip(f"real data not found at {tsv}")
    ranks = ["order_name", "family_name", "genus_name", "species_name"]
    df = pd.read_csv(tsv, sep="\t", usecols=ranks + ["nucleotides"]).dropna(subset=ranks)
    rng = np.random.default_rng(0)
    species = sorted(df["species_name"].unique())
    unseen = set(rng.choice(species, 20, replace=False))
    is_key = np.zeros(len(df), bool)
    for sp, idx in df.groupby("species_name").indices.items():
        if sp not in unseen:
            is_key[rng.permutation(idx)[:40]] = True
    vec = CountVectorizer(analyzer="char", ngram_range=(4, 4), lowercase=False)
    emb = _unit(vec.fit_transform(df["nucleotides"].str.upper()).toarray().astype(np.float32))
    keys, queries = df[is_key].reset_index(drop=True), df[~is_key].reset_index(drop=True)
    m = bioscan_accuracy(emb[~is_key], queries, emb[is_key], keys, ranks)
    seen = ~queries["species_name"].isin(unseen).to_numpy()
    assert m["seen/n"] == seen.sum() and m["unseen/n"] == (~seen).sum()
    nearest = (emb[~is_key] @ emb[is_key].T).argmax(1)
    for r in ranks:
        ref = np.mean(keys[r].to_numpy()[nearest][seen] == queries[r].to_numpy()[seen])
        assert m[f"seen/{r}/micro"] == pytest.approx(ref)
    assert m["unseen/species_name/micro"] == 0.0  # their species is not in the key set
    assert m["seen/species_name/micro"] > 0.9     # barcodes identify species (far above 1/80 chance)
    micro = [m[f"seen/{r}/micro"] for r in ranks]
    assert micro == sorted(micro, reverse=True)   # a right species implies a right genus, family, order
