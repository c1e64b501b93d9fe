"""Classification and regression metrics, cluster-bootstrap confidence intervals and the DeLong test.

Every metric is defined as in scikit-learn (the hot ones are recomputed in numpy and tested
against it, since the bootstrap calls them thousands of times); this module arranges the inputs,
resamples patients (not images) for the 95% intervals, and implements the fast
DeLong covariance (Sun & Xu, 2014) for comparing two AUROCs on the same samples.

Shapes:
    multi-class: ``y_true (N,)`` int class indices, ``scores (N, C)`` probabilities.
    multi-label: ``y_true (N, C)`` in {0, 1, -1 = missing}, ``scores (N, C)``.
    regression: ``y_true (N,)`` and ``y_pred (N,)`` floats (:func:`regression_metrics`).
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import stats
from sklearn.metrics import f1_score, mean_absolute_error, mean_squared_error, r2_score

MetricFn = Callable[[np.ndarray, np.ndarray], Dict[str, float]]


def _nan_mean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _binary_auc(y: np.ndarray, s: np.ndarray) -> Tuple[float, float]:
    """AUROC and AUPRC of one binary column; NaN when only one class is present.

    The same numbers as scikit-learn's ``roc_auc_score`` (Mann–Whitney U with mid-ranks for
    ties) and ``average_precision_score`` (step-wise ``Σ (R_n − R_{n−1}) P_n`` over distinct
    thresholds), computed in numpy: the bootstrap calls this thousands of times, and
    scikit-learn's input validation dominated its cost (tests compare with scikit-learn).
    """
    y = np.asarray(y)
    if y.size == 0 or y.min() == y.max():
        return float("nan"), float("nan")
    s = np.asarray(s, dtype=np.float64)
    pos = y == 1
    n_pos = int(pos.sum())
    n_neg = y.size - n_pos
    ranks = stats.rankdata(s)  # mid-ranks
    auc = (ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    order = np.argsort(-s, kind="mergesort")
    ss, yy = s[order], pos[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(ss)), ss.size - 1]  # last index of each distinct threshold
    tp = np.cumsum(yy)[last]
    precision = tp / (last + 1.0)
    recall = tp / n_pos
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return float(auc), ap


def multiclass_metrics(y_true: np.ndarray, scores: np.ndarray,
                       class_names: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1, per-class and macro AUROC / AUPRC.

    Args:
        y_true: ``(N,)`` int class indices in ``[0, C)``.
        scores: ``(N, C)`` class scores (probabilities or logits); argmax is the prediction.
        class_names: ``C`` names used in the per-class keys (``auroc/<name>``); default indices.

    Per-class AUROC/AUPRC are one-vs-rest; a class absent (or the only class) in
    ``y_true`` gets NaN and is left out of the macro mean.
    """
    y_true = np.asarray(y_true).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    n_classes = scores.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    pred = scores.argmax(1)
    labels = np.arange(n_classes)
    out: Dict[str, float] = {}
    # accuracy, balanced accuracy (mean recall over the classes present) and macro-F1 over the classes
    # present, as scikit-learn defines them, from one confusion matrix (tests compare with scikit-learn)
    k = max(n_classes, int(y_true.max()) + 1 if y_true.size else 0, int(pred.max()) + 1 if pred.size else 0)
    cm = np.bincount(y_true * k + pred, minlength=k * k).reshape(k, k).astype(np.float64)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    present = support > 0
    out["accuracy"] = float(tp.sum() / max(y_true.size, 1))
    out["balanced_accuracy"] = float(np.mean(tp[present] / support[present])) if present.any() else float("nan")
    denom = 2 * tp + (predicted - tp) + (support - tp)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    out["macro_f1"] = float(np.mean(f1[present])) if present.any() else 0.0
    aucs, aps = [], []
    for c in labels:
        auc, ap = _binary_auc((y_true == c).astype(int), scores[:, c])
        out[f"auroc/{names[c]}"] = auc
        out[f"auprc/{names[c]}"] = ap
        aucs.append(auc)
        aps.append(ap)
    out["macro_auroc"] = _nan_mean(aucs)
    out["macro_auprc"] = _nan_mean(aps)
    return out


def multilabel_metrics(y_true: np.ndarray, scores: np.ndarray,
                       class_names: Optional[Sequence[str]] = None,
                       threshold: float = 0.5) -> Dict[str, float]:
    """Per-finding and macro AUROC / AUPRC, and macro-F1 at ``threshold``.

    Args:
        y_true: ``(N, C)`` in {0, 1}; ``-1`` marks a missing label (ignored for that finding).
        scores: ``(N, C)`` probabilities of the positive finding.
    """
    y_true = np.asarray(y_true).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    n_classes = scores.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    out: Dict[str, float] = {}
    aucs, aps, f1s = [], [], []
    for c in range(n_classes):
        keep = y_true[:, c] >= 0
        y, s = y_true[keep, c], scores[keep, c]
        auc, ap = _binary_auc(y, s)
        out[f"auroc/{names[c]}"] = auc
        out[f"auprc/{names[c]}"] = ap
        aucs.append(auc)
        aps.append(ap)
        if y.size and y.max() == 1:
            f1s.append(float(f1_score(y, (s >= threshold).astype(int), zero_division=0)))
    out["macro_auroc"] = _nan_mean(aucs)
    out["macro_auprc"] = _nan_mean(aps)
    out["macro_f1"] = _nan_mean(f1s)
    return out


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> Dict[str, float]:
    """MAE, RMSE, R² (scikit-learn) and Pearson r (scipy) of ``(N,)`` targets and predictions.

    R² is NaN for constant targets, Pearson r also for constant predictions.
    """
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    out = {"mae": float(mean_absolute_error(y_true, y_pred)),
           "rmse": float(math.sqrt(mean_squared_error(y_true, y_pred))), "r2": float("nan"),
           "pearson_r": float("nan")}
    if len(y_true) > 1 and np.ptp(y_true) > 0:
        out["r2"] = float(r2_score(y_true, y_pred))
        if np.ptp(y_pred) > 0:
            out["pearson_r"] = float(stats.pearsonr(y_true, y_pred)[0])
    return out


def classification_metrics(y_true: np.ndarray, scores: np.ndarray,
                           class_names: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Dispatch on ``y_true``'s rank: ``(N,)`` multi-class, ``(N, C)`` multi-label."""
    if np.asarray(y_true).ndim == 2:
        return multilabel_metrics(y_true, scores, class_names)
    return multiclass_metrics(y_true, scores, class_names)


# ----------------------------------------------------------------- bootstrap
def _group_index(groups: Sequence) -> list:
    """Row indices of each distinct group, in first-appearance order."""
    _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, bounds)


def bootstrap_replicates(fn: Callable[[np.ndarray], Dict[str, float]], clusters: Sequence[np.ndarray], *,
                         n_boot: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """``n_boot`` cluster-bootstrap replicates of ``fn(row_indices) -> {name: value}``.

    Each replicate draws ``len(clusters)`` clusters with replacement (``clusters``: row
    indices per patient, from :func:`_group_index`) and passes the concatenated rows to
    ``fn``. Returns ``{name: (n_boot,) float64}`` (NaN where a metric is undefined).
    """
    rng = np.random.default_rng(seed)
    reps: Dict[str, list] = {}
    for _ in range(n_boot):
        pick = rng.integers(0, len(clusters), size=len(clusters))
        idx = np.concatenate([clusters[i] for i in pick])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = fn(idx)
        for k, v in values.items():
            reps.setdefault(k, []).append(v)
    return {k: np.asarray(v, dtype=np.float64) for k, v in reps.items()}


def cluster_bootstrap(metric_fn: MetricFn, y_true: np.ndarray, scores: np.ndarray,
                      groups: Optional[Sequence] = None, *, n_boot: int = 1000,
                      alpha: float = 0.05, seed: int = 0) -> Dict[str, Tuple[float, float]]:
    """Percentile ``1 - alpha`` intervals of every metric by resampling clusters.

    Clusters (patients) are drawn with replacement and all rows of a drawn patient
    enter the replicate, so correlated images of one patient move together. With
    ``groups=None`` every row is its own cluster (the ordinary bootstrap).

    Args:
        metric_fn: ``(y_true, scores) -> {name: value}`` (e.g. :func:`classification_metrics`).
        y_true: ``(N,)`` or ``(N, C)``; scores: ``(N, ...)`` rows aligned with ``y_true``.
        groups: ``(N,)`` patient ids.

    Returns:
        ``{name: (low, high)}``; replicates where a metric is undefined (NaN) are ignored.
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores)
    clusters = _group_index(groups if groups is not None else np.arange(len(y_true)))
    reps = bootstrap_replicates(lambda idx: metric_fn(y_true[idx], scores[idx]), clusters,
                                n_boot=n_boot, seed=seed)
    out: Dict[str, Tuple[float, float]] = {}
    for k, vals in reps.items():
        arr = np.asarray(vals, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        if arr.size == 0:
            out[k] = (float("nan"), float("nan"))
        else:
            out[k] = (float(np.quantile(arr, alpha / 2)), float(np.quantile(arr, 1 - alpha / 2)))
    return out


def metrics_with_ci(y_true: np.ndarray, scores: np.ndarray, groups: Optional[Sequence] = None,
                    class_names: Optional[Sequence[str]] = None, *, n_boot: int = 1000,
                    seed: int = 0) -> Tuple[Dict[str, float], Dict[str, Tuple[float, float]]]:
    """:func:`classification_metrics` plus their patient-level bootstrap 95% intervals."""
    fn = lambda y, s: classification_metrics(y, s, class_names)  # noqa: E731
    point = fn(np.asarray(y_true), np.asarray(scores))
    ci = cluster_bootstrap(fn, y_true, scores, groups, n_boot=n_boot, seed=seed) if n_boot > 0 else {}
    return point, ci


# -------------------------------------------------------------------- DeLong
def _midrank(x: np.ndarray) -> np.ndarray:
    """Mid-ranks (1-based, ties averaged) of ``x (n,)``."""
    return stats.rankdata(x, method="average")


def fast_delong(scores: np.ndarray, n_pos: int) -> Tuple[np.ndarray, np.ndarray]:
    """Fast DeLong (Sun & Xu 2014).

    Args:
        scores: ``(K, N)`` scores of K models; the first ``n_pos`` columns are positives.
    Returns:
        ``aucs (K,)`` and their covariance ``(K, K)``.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    m, n = n_pos, scores.shape[1] - n_pos
    pos, neg = scores[:, :m], scores[:, m:]
    tx = np.stack([_midrank(r) for r in pos])
    ty = np.stack([_midrank(r) for r in neg])
    tz = np.stack([_midrank(r) for r in scores])
    aucs = tz[:, :m].sum(1) / m / n - (m + 1.0) / 2.0 / n
    v01 = (tz[:, :m] - tx) / n          # structural components of positives (K, m)
    v10 = 1.0 - (tz[:, m:] - ty) / m    # structural components of negatives (K, n)
    sx = np.atleast_2d(np.cov(v01))
    sy = np.atleast_2d(np.cov(v10))
    return aucs, sx / m + sy / n


def delong_test(y_true: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> Dict[str, float]:
    """Two-sided DeLong test of AUROC(a) == AUROC(b) on the same binary samples.

    Args:
        y_true: ``(N,)`` in {0, 1}; scores_a, scores_b: ``(N,)``.
    Returns:
        ``{"auc_a", "auc_b", "diff", "se", "z", "p_value"}``.
    """
    y = np.asarray(y_true).astype(int)
    if y.min() == y.max():
        raise ValueError("DeLong test needs both positive and negative samples")
    order = np.argsort(-y, kind="stable")  # positives first
    n_pos = int(y.sum())
    sc = np.vstack([np.asarray(scores_a, float)[order], np.asarray(scores_b, float)[order]])
    aucs, cov = fast_delong(sc, n_pos)
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = float(aucs[0] - aucs[1])
    if var <= 0:
        z, p = (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / math.sqrt(var)
        p = float(2 * stats.norm.sf(abs(z)))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": diff,
            "se": float(math.sqrt(max(var, 0.0))), "z": float(z), "p_value": float(p)}
