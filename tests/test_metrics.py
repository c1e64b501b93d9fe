"""Metrics: scikit-learn-backed values, cluster bootstrap coverage, DeLong against a plain reference."""
import math

import numpy as np
import pytest
from scipy import stats

from medfm.metrics import (classification_metrics, cluster_bootstrap, delong_test, metrics_with_ci,
                                      multilabel_metrics)


def _pairwise_auc(y, s):
    """AUROC as the Mann-Whitney probability, by brute force over all (positive, negative) pairs."""
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean()


def test_multiclass_metrics_against_definitions():
    rng = np.random.default_rng(0)
    n, c = 300, 4
    y = rng.integers(0, c, n)
    scores = rng.random((n, c)) + 0.8 * np.eye(c)[y]
    m = classification_metrics(y, scores, ["a", "b", "c", "d"])
    pred = scores.argmax(1)
    assert m["accuracy"] == pytest.approx(np.mean(pred == y))
    recalls = [np.mean(pred[y == k] == k) for k in range(c)]
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    f1s = []
    for k in range(c):
        tp = np.sum((pred == k) & (y == k))
        f1s.append(2 * tp / (np.sum(pred == k) + np.sum(y == k)))
    assert m["macro_f1"] == pytest.approx(np.mean(f1s))
    aucs = [_pairwise_auc((y == k).astype(int), scores[:, k]) for k in range(c)]
    for k, name in enumerate("abcd"):
        assert m[f"auroc/{name}"] == pytest.approx(aucs[k])
    assert m["macro_auroc"] == pytest.approx(np.mean(aucs))
    # AUPRC of a perfect ranking is 1, of a random one roughly the prevalence
    assert 0 < m["macro_auprc"] < 1


def test_multilabel_ignores_missing_labels():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (200, 3))
    s = rng.random((200, 3)) + 0.5 * y
    y_missing = y.copy()
    y_missing[:50, 1] = -1
    m = multilabel_metrics(y_missing, s)
    assert m["auroc/1"] == pytest.approx(_pairwise_auc(y[50:, 1], s[50:, 1]))
    assert m["auroc/0"] == pytest.approx(_pairwise_auc(y[:, 0], s[:, 0]))
    # a finding with one class only has no AUROC and is left out of the macro mean
    y_const = y.copy()
    y_const[:, 2] = 0
    m2 = multilabel_metrics(y_const, s)
    assert math.isnan(m2["auroc/2"])
    assert m2["macro_auroc"] == pytest.approx(np.mean([m2["auroc/0"], m2["auroc/1"]]))


def _simulate_clustered(rng, n_patients=60, per_patient=5):
    """Correctness of each image ~ Bernoulli(p_patient), p ~ U(0.3, 1.0): true accuracy 0.65."""
    p = rng.uniform(0.3, 1.0, n_patients)
    groups = np.repeat(np.arange(n_patients), per_patient)
    correct = (rng.random(groups.size) < p[groups]).astype(int)
    return correct, groups


def _acc(y, s):
    return {"accuracy": float(np.mean(y == s))}


def test_cluster_bootstrap_covers_truth_at_nominal_rate():
    rng = np.random.default_rng(2)
    truth, reps = 0.65, 150
    cover_cluster = cover_iid = 0
    for r in range(reps):
        correct, groups = _simulate_clustered(rng)
        ones = np.ones_like(correct)
        lo, hi = cluster_bootstrap(_acc, ones, correct, groups, n_boot=200, seed=r)["accuracy"]
        cover_cluster += lo <= truth <= hi
        lo, hi = cluster_bootstrap(_acc, ones, correct, None, n_boot=200, seed=r)["accuracy"]
        cover_iid += lo <= truth <= hi
    cover_cluster /= reps
    cover_iid /= reps
    # nominal 95 %: with 150 replications the estimate has sd ≈ 0.018
    assert 0.88 <= cover_cluster <= 0.995
    # resampling images instead of patients ignores the within-patient correlation and under-covers
    assert cover_iid < cover_cluster - 0.05


def test_metrics_with_ci_contains_point_estimate():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 120)
    s = rng.random((120, 3)) + 0.4 * np.eye(3)[y]
    groups = np.repeat(np.arange(40), 3)
    point, ci = metrics_with_ci(y, s, groups, ["x", "y", "z"], n_boot=100, seed=0)
    for name in ("accuracy", "macro_auroc", "balanced_accuracy", "macro_f1"):
        lo, hi = ci[name]
        assert lo <= point[name] <= hi
        assert hi - lo > 0


def _delong_reference(y, sa, sb):
    """DeLong et al. (1988) structural components, written out plainly (O(m n) pairs)."""
    def components(s):
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(), psi.mean(1), psi.mean(0)  # auc, V10 (per positive), V01 (per negative)
    auc_a, v10a, v01a = components(sa)
    auc_b, v10b, v01b = components(sb)
    m, n = len(v10a), len(v01a)
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    s = s10 / m + s01 / n
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    z = (auc_a - auc_b) / math.sqrt(var)
    return auc_a, auc_b, z, 2 * stats.norm.sf(abs(z))


def test_delong_matches_structural_components_reference():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 150)
    sa = y * 1.0 + rng.normal(0, 1.0, 150)
    sb = np.round(y * 0.6 + rng.normal(0, 1.0, 150), 1)  # rounding creates ties
    res = delong_test(y, sa, sb)
    auc_a, auc_b, z, p = _delong_reference(y, sa, sb)
    assert res["auc_a"] == pytest.approx(auc_a)
    assert res["auc_b"] == pytest.approx(auc_b)
    assert res["z"] == pytest.approx(z, rel=1e-9)
    assert res["p_value"] == pytest.approx(p, rel=1e-9)


def test_delong_identical_models_and_clear_difference():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 400)
    s = y + rng.normal(0, 1, 400)
    assert delong_test(y, s, s)["p_value"] == 1.0
    good, bad = y * 3 + rng.normal(0, 1, 400), rng.normal(0, 1, 400)
    assert delong_test(y, good, bad)["p_value"] < 1e-6


def test_numpy_metrics_equal_scikit_learn():
    """The bootstrap's numpy AUROC/AUPRC/accuracy/balanced accuracy/macro-F1 are scikit-learn's numbers."""
    import warnings

    from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, f1_score,
                                 roc_auc_score)

    from medfm.metrics import _binary_auc, multiclass_metrics

    rng = np.random.default_rng(0)
    for t in range(60):
        n = int(rng.integers(3, 50))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        s = np.round(rng.random(n), 1) if t % 2 else rng.random(n)  # with and without ties
        auc, ap = _binary_auc(y, s)
        assert auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert ap == pytest.approx(average_precision_score(y, s), abs=1e-12)
        yt, sc = rng.integers(0, 3, n), rng.random((n, 4))  # class 3 never true, sometimes predicted
        m, pred = multiclass_metrics(yt, sc), sc.argmax(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert m["accuracy"] == pytest.approx(accuracy_score(yt, pred), abs=1e-12)
            assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(yt, pred), abs=1e-12)
            assert m["macro_f1"] == pytest.approx(
                f1_score(yt, pred, labels=np.unique(yt), average="macro", zero_division=0), abs=1e-12)
