"""evaluation.tasks against hand computations and scikit-learn on small fixed inputs."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score
from sklearn.neighbors import KNeighborsClassifier

from medfm.evaluation import tasks
from medfm.evaluation.zeroshot import class_prototypes


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _hand_bootstrap(values_fn, groups, n_boot, seed):
    """Percentile interval of ``values_fn(rows)`` over patients drawn with replacement (as documented:
    clusters in sorted-id order, ``default_rng(seed).integers`` per replicate)."""
    g = np.asarray(groups).astype(str)
    ids = np.unique(g)
    clusters = [np.flatnonzero(g == i) for i in ids]
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(clusters), size=len(clusters))
        reps.append(values_fn(np.concatenate([clusters[i] for i in pick])))
    reps = np.asarray(reps, dtype=float)
    reps = reps[~np.isnan(reps)]
    return np.quantile(reps, 0.025), np.quantile(reps, 0.975)


@pytest.fixture(scope="module")
def paired():
    """12 queries / 10 gallery items in 3 classes; keys = class; 6 patients."""
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(3, 8))
    yq, yg = rng.integers(0, 3, 12), np.r_[0, 1, 2, rng.integers(0, 3, 7)]
    q = _unit(centers[yq] + 0.9 * rng.normal(size=(12, 8)))
    g = _unit(centers[yg] + 0.9 * rng.normal(size=(10, 8)))
    return q, g, yq, yg, [f"P{i // 2}" for i in range(12)], [f"G{i // 2}" for i in range(10)]


def test_retrieval_matches_a_direct_computation(paired):
    q, g, yq, yg, pq, pg = paired
    res = tasks.run_retrieval(q, g, [str(v) for v in yq], [str(v) for v in yg], query_groups=pq, gallery_groups=pg,
                              names=("a", "b"), n_boot=200, seed=4)
    sims = q @ g.T
    first, ap = [], []
    for i in range(len(q)):
        order = sorted(range(len(g)), key=lambda j: (-sims[i, j], j))
        rel = [yg[j] == yq[i] for j in order]
        first.append(rel.index(True) + 1)
        hits = np.cumsum(rel)
        ap.append(np.mean([hits[r] / (r + 1) for r in range(len(rel)) if rel[r]]))
    first, ap = np.asarray(first), np.asarray(ap)
    for k in (1, 5, 10):
        assert res.metrics[f"a_to_b_R@{k}"] == pytest.approx(np.mean(first <= k))
    assert res.metrics["a_to_b_MRR"] == pytest.approx(np.mean(1 / first))
    assert res.metrics["a_to_b_mAP"] == pytest.approx(np.mean(ap))
    assert res.metrics["a_to_b_n_queries"] == 12 and "b_to_a_R@1" in res.metrics
    lo, hi = _hand_bootstrap(lambda rows: np.mean(first[rows] <= 1), pq, 200, 4)
    assert res.ci["a_to_b_R@1"] == pytest.approx((lo, hi))
    lo, hi = _hand_bootstrap(lambda rows: np.mean(ap[rows]), pq, 200, 4)
    assert res.ci["a_to_b_mAP"] == pytest.approx((lo, hi))
    # chance R@1 of a random ranking is the relevant fraction of the gallery
    n_rel = np.array([(yg == c).sum() for c in yq])
    assert res.chance["a_to_b_R@1"] == pytest.approx(np.mean(n_rel / len(g)))
    d = res.to_dict()
    assert d["task"] == "retrieval" and d["n"] == 12 and d["n_gallery"] == 10
    assert d["ci"]["a_to_b_mAP"] == pytest.approx([lo, hi]) and d["settings"]["n_boot"] == 200
    json.dumps(d, allow_nan=False)  # plain JSON


def test_retrieval_baseline_rows_use_the_same_protocol(paired):
    q, g, yq, yg, pq, pg = paired
    rng = np.random.default_rng(9)
    bq, bg = _unit(rng.normal(size=q.shape)), _unit(rng.normal(size=g.shape))
    res = tasks.run_retrieval(q, g, list(yq.astype(str)), list(yg.astype(str)), query_groups=pq, gallery_groups=pg,
                              names=("a", "b"), n_boot=50, baseline=tasks.Baseline((bq, bg), {"name": "rand"}))
    alone = tasks.run_retrieval(bq, bg, list(yq.astype(str)), list(yg.astype(str)), query_groups=pq,
                                gallery_groups=pg, names=("a", "b"), n_boot=50)
    for k in ("a_to_b_R@1", "b_to_a_mAP"):
        assert res.metrics[f"baseline/rand/{k}"] == pytest.approx(alone.metrics[k])
        assert res.ci[f"baseline/rand/{k}"] == pytest.approx(alone.ci[k])
    assert res.to_dict()["baseline"] == {"name": "rand"}
    assert "| metric | value | 95% CI | chance |" in res.markdown()


def test_zeroshot_is_argmax_of_the_similarity(paired):
    q, _, yq, _, pq, _ = paired
    W = class_prototypes(q, yq, 3)
    res = tasks.run_zeroshot(q, yq, {"positive": W}, classes=["x", "y", "z"], groups=pq, logit_scale=10.0, n_boot=100)
    pred = (q @ W.T).argmax(1)
    assert res.metrics["accuracy"] == pytest.approx(np.mean(pred == yq))
    assert res.metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(yq, pred))
    z = 10.0 * (q @ W.T)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(res.details["scores"], p, rtol=1e-5)
    assert res.metrics["auroc/x"] == pytest.approx(roc_auc_score(yq == 0, p[:, 0]))
    assert res.chance["accuracy"] == pytest.approx(np.bincount(yq).max() / len(yq))
    lo, hi = res.ci["accuracy"]
    assert lo <= res.metrics["accuracy"] <= hi and res.task == "zeroshot-multiclass"


def _probe_data():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 30)
    X = rng.normal(size=(90, 6)) + 1.2 * np.eye(6)[y]
    splits = np.array((["train"] * 18 + ["val"] * 4 + ["test"] * 8) * 3)
    return X, y, splits, [f"P{i // 2}" for i in range(90)]


def test_probe_matches_scikit_learn():
    X, y, splits, groups = _probe_data()
    Cs = (0.01, 0.1, 1.0)
    res = tasks.run_probe(X, y, splits, classes=["a", "b", "c"], groups=groups, knn_k=5, shots=(2,),
                          few_shot_seeds=2, Cs=Cs, n_boot=50)
    tr, va, te = splits == "train", splits == "val", splits == "test"
    val_acc = {C: accuracy_score(y[va], LogisticRegression(C=C, max_iter=2000, random_state=0)
                                 .fit(X[tr], y[tr]).predict(X[va])) for C in Cs}
    best = max(Cs, key=lambda C: (val_acc[C], -C))
    assert res.info["linear_C"] == best
    ref = LogisticRegression(C=best, max_iter=2000, random_state=0).fit(X[tr | va], y[tr | va])
    assert res.metrics["linear/accuracy"] == pytest.approx(accuracy_score(y[te], ref.predict(X[te])))
    knn = KNeighborsClassifier(n_neighbors=5, metric="cosine").fit(X[tr], y[tr])
    assert res.metrics["knn/accuracy"] == pytest.approx(accuracy_score(y[te], knn.predict(X[te])))
    assert res.metrics["linear/accuracy"] > 0.6  # well above chance (1/3) on separable classes
    assert res.n == te.sum() and "fewshot/2shot_accuracy_mean" in res.metrics
    assert res.chance["linear/accuracy"] == pytest.approx(1 / 3)


def test_probe_refuses_a_missing_split():
    X, y, splits, groups = _probe_data()
    from medfm.errors import DataError

    with pytest.raises(DataError, match="test split"):
        tasks.run_probe(X, y, np.where(splits == "test", "val", splits), classes=["a", "b", "c"], groups=groups,
                        source="m.csv")


def test_bioscan_points_and_intervals_by_hand():
    rng = np.random.default_rng(2)
    species = np.array(["s0", "s1", "s2", "s3"])
    genus = {"s0": "g0", "s1": "g0", "s2": "g1", "s3": "g1"}
    centers = rng.normal(size=(4, 8))
    ks = np.r_[0, 0, 1, 1, 2, 2]
    qs = rng.integers(0, 4, 30)
    keys = _unit(centers[ks] + 0.3 * rng.normal(size=(6, 8)))
    query = _unit(centers[qs] + 0.8 * rng.normal(size=(30, 8)))
    lab = lambda idx: pd.DataFrame({"genus": [genus[species[i]] for i in idx], "species": species[idx]})  # noqa: E731
    res = tasks.run_bioscan(query, lab(qs), keys, lab(ks), ["genus", "species"], n_boot=100, seed=1)
    nearest = (query @ keys.T).argmax(1)
    seen = qs < 3
    pred, true = species[ks[nearest]], species[qs]
    assert res.metrics["seen/n"] == seen.sum() and res.metrics["unseen/n"] == (~seen).sum()
    assert res.metrics["seen/species/micro"] == pytest.approx(np.mean(pred[seen] == true[seen]))
    assert res.metrics["seen/species/macro"] == pytest.approx(balanced_accuracy_score(true[seen], pred[seen]))
    idx = np.flatnonzero(seen)
    lo, hi = _hand_bootstrap(lambda rows: np.mean(pred[idx][rows] == true[idx][rows]), np.arange(idx.size), 100, 1)
    assert res.ci["seen/species/micro"] == pytest.approx((lo, hi))
    assert res.metrics["unseen/species/micro"] == 0.0
