"""Calibration and operating points: ECE, reliability bins, temperature scaling, a validation threshold.

A model that ranks well (AUROC) can still state confidences nobody should act on. This module says
how far a classifier's probabilities are from the frequencies they claim, before and after
temperature scaling fitted on validation rows, and fixes an operating threshold on validation at
which the test sensitivity, specificity, PPV and NPV are reported.

Conventions (Guo et al., 2017, "On calibration of modern neural networks"):

* **Bins**: ``n_bins`` equal-width bins of ``[0, 1]``; bin ``b`` holds confidences in
  ``(b/n, (b+1)/n]`` (bin 0 also holds 0).
* **ECE** ``= Σ_b (n_b / N) · |acc_b − conf_b|`` (mean confidence and accuracy of bin ``b``).
* **Multi-class** (``y (N,)``, ``scores (N, C)``): top-label calibration — the confidence is the
  largest probability, "correct" is whether its class is the label.
* **Multi-label / binary** (``y (N, C)`` 0/1, ``-1`` missing): every (sample, finding) pair with a
  label is one prediction — the confidence is the probability, "correct" is the label.
* **Temperature**: one scalar ``T > 0`` minimising the validation negative log-likelihood of
  ``softmax(log p / T)`` (multi-class) or ``sigmoid(logit p / T)`` (multi-label). It never changes
  the multi-class argmax, so accuracy is unchanged; AUROC of a single score is unchanged.
* **Threshold** (per class, one-vs-rest; the positive class only for two classes): chosen on
  validation by Youden's J (``max TPR − FPR``) or as the highest threshold whose validation
  sensitivity reaches a target (``"sensitivity:0.9"``); a test row is positive when its score ``≥``
  the threshold. Thresholds are chosen on the scores as given (before scaling).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, logit
from sklearn.metrics import roc_curve

from medfm.errors import UsageError
from medfm.metrics import _group_index, bootstrap_replicates

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

EPS = 1e-7
Interval = Tuple[float, float]


# ------------------------------------------------------------------ ECE
def confidence_correct(y: np.ndarray, scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Predictions as ``(confidence (M,), correct (M,) 0/1)`` (see the module docstring).

    Multi-class ``y (N,)``: M = N, top-label. Multi-label ``y (N, C)``: M = labelled pairs.
    """
    y, s = np.asarray(y), np.asarray(scores, dtype=np.float64)
    if y.ndim == 2:
        keep = y >= 0
        return s[keep], y[keep].astype(np.float64)
    return s.max(1), (s.argmax(1) == y.astype(int)).astype(np.float64)


def bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each confidence: ``(b/n, (b+1)/n]`` → ``b``; 0 → bin 0."""
    return np.clip(np.ceil(np.asarray(conf, dtype=np.float64) * n_bins).astype(int) - 1, 0, n_bins - 1)


def reliability_bins(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> Dict[str, np.ndarray]:
    """Per bin: ``count``, mean ``confidence`` and ``accuracy`` (NaN in empty bins), and ``edges (n_bins+1,)``."""
    b = bin_index(conf, n_bins)
    count = np.bincount(b, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(b, weights=conf, minlength=n_bins) / count
        acc = np.bincount(b, weights=correct, minlength=n_bins) / count
    return {"count": count, "confidence": mean_conf, "accuracy": acc, "edges": np.linspace(0, 1, n_bins + 1)}


def ece(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error ``Σ_b (n_b/N) |acc_b − conf_b|``; NaN with no prediction."""
    conf = np.asarray(conf, dtype=np.float64)
    if conf.size == 0:
        return float("nan")
    r = reliability_bins(conf, np.asarray(correct, dtype=np.float64), n_bins)
    full = r["count"] > 0
    return float(np.sum(r["count"][full] / conf.size * np.abs(r["accuracy"][full] - r["confidence"][full])))


def expected_calibration_error(y: np.ndarray, scores: np.ndarray, n_bins: int = 15) -> float:
    """:func:`ece` of labels and scores (:func:`confidence_correct`)."""
    return ece(*confidence_correct(y, scores), n_bins=n_bins)


# ---------------------------------------------------------- temperature
def _logits(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(scores, dtype=np.float64), EPS, 1 - EPS)
    return logit(p) if np.asarray(y).ndim == 2 else np.log(p)


def apply_temperature(y_like: np.ndarray, scores: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities ``(N, C)`` after dividing the logits by ``temperature`` (``y_like`` gives the task kind)."""
    z = _logits(y_like, scores) / float(temperature)
    if np.asarray(y_like).ndim == 2:
        return expit(z)
    return np.exp(log_softmax(z, axis=1))


def _nll(y: np.ndarray, scores: np.ndarray, temperature: float) -> float:
    z = _logits(y, scores) / temperature
    if y.ndim == 2:
        keep = y >= 0
        p = np.clip(expit(z[keep]), EPS, 1 - EPS)
        t = y[keep]
        return float(-np.mean(t * np.log(p) + (1 - t) * np.log(1 - p)))
    return float(-np.mean(log_softmax(z, axis=1)[np.arange(len(y)), y.astype(int)]))


def fit_temperature(y_val: np.ndarray, scores_val: np.ndarray) -> float:
    """The ``T`` in ``[e⁻⁴, e⁴]`` minimising validation NLL (bounded Brent search on ``log T``)."""
    y = np.asarray(y_val)
    if len(y) == 0:
        raise UsageError("temperature scaling needs validation rows")
    res = minimize_scalar(lambda lt: _nll(y, np.asarray(scores_val), float(np.exp(lt))), bounds=(-4.0, 4.0),
                          method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x))


# ------------------------------------------------------------ thresholds
def parse_threshold_rule(rule: str) -> Tuple[str, Optional[float]]:
    """``"youden"`` → ``("youden", None)``; ``"sensitivity:0.9"`` → ``("sensitivity", 0.9)``."""
    r = str(rule).strip().lower()
    if r == "youden":
        return "youden", None
    if r.startswith("sensitivity:"):
        try:
            target = float(r.split(":", 1)[1])
        except ValueError:
            target = -1.0
        if 0.0 < target <= 1.0:
            return "sensitivity", target
    raise UsageError(f"threshold rule {rule!r}: use 'youden' or 'sensitivity:T' with 0 < T <= 1")


def choose_threshold(y: np.ndarray, s: np.ndarray, rule: str = "youden") -> float:
    """A threshold on one binary column ``y (N,) 0/1``, ``s (N,)`` (see the module docstring); NaN
    when ``y`` holds a single class."""
    y, s = np.asarray(y).astype(int), np.asarray(s, dtype=np.float64)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    kind, target = parse_threshold_rule(rule)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    thr, fpr, tpr = thr[1:], fpr[1:], tpr[1:]  # thr[0] is +inf (nothing positive)
    if kind == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])  # first (highest) threshold of the best J
    return float(thr[int(np.flatnonzero(tpr >= target - 1e-12)[0])])  # highest threshold reaching the target


def binary_rates(y: np.ndarray, s: np.ndarray, threshold: float) -> Dict[str, float]:
    """Sensitivity, specificity, PPV, NPV of ``s >= threshold`` against ``y (N,) 0/1`` (NaN where 0/0)."""
    y = np.asarray(y).astype(int)
    pred = np.asarray(s) >= threshold
    tp, fp = float(np.sum(pred & (y == 1))), float(np.sum(pred & (y == 0)))
    fn, tn = float(np.sum(~pred & (y == 1))), float(np.sum(~pred & (y == 0)))

    def ratio(a, b):
        return a / (a + b) if a + b > 0 else float("nan")
    return {"sensitivity": ratio(tp, fn), "specificity": ratio(tn, fp), "ppv": ratio(tp, fp), "npv": ratio(tn, fn)}


def _columns(y: np.ndarray, classes: Sequence[str]) -> List[Tuple[str, int]]:
    """``(name, column)`` of the one-vs-rest problems: the positive class only with two classes."""
    if np.asarray(y).ndim == 1 and len(classes) == 2:
        return [(str(classes[1]), 1)]
    return [(str(c), i) for i, c in enumerate(classes)]


def _binary(y: np.ndarray, scores: np.ndarray, col: int) -> Tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    if y.ndim == 2:
        keep = y[:, col] >= 0
        return y[keep, col], np.asarray(scores)[keep, col]
    return (y == col).astype(int), np.asarray(scores)[:, col]


def thresholds_on(y: np.ndarray, scores: np.ndarray, classes: Sequence[str], rule: str) -> Dict[str, float]:
    """``{class: threshold}`` chosen on ``(y, scores)`` (validation)."""
    return {name: choose_threshold(*_binary(y, scores, col), rule=rule) for name, col in _columns(y, classes)}


def threshold_metrics(y: np.ndarray, scores: np.ndarray, classes: Sequence[str],
                      thresholds: Dict[str, float]) -> Dict[str, float]:
    """``{"threshold/<class>/<sensitivity|specificity|ppv|npv>"}`` at the given thresholds (test rows)."""
    out: Dict[str, float] = {}
    for name, col in _columns(y, classes):
        t = thresholds.get(name, float("nan"))
        if np.isnan(t):
            continue
        for k, v in binary_rates(*_binary(y, scores, col), t).items():
            out[f"threshold/{name}/{k}"] = v
    return out


# ------------------------------------------------------------ the protocol
def calibration_metrics(y: np.ndarray, raw: np.ndarray, scaled: Optional[np.ndarray], classes: Sequence[str],
                        thresholds: Dict[str, float], n_bins: int) -> Dict[str, float]:
    """ECE before (``calibration/ece``) and after (``calibration/ece_scaled``) scaling, plus threshold rates."""
    out = {"calibration/ece": expected_calibration_error(y, raw, n_bins)}
    if scaled is not None:
        out["calibration/ece_scaled"] = expected_calibration_error(y, scaled, n_bins)
    out.update(threshold_metrics(y, raw, classes, thresholds))
    return out


def run_calibration(y_test: np.ndarray, scores_test: np.ndarray, groups_test: Sequence[Any], classes: Sequence[str], *,
                    y_val: Optional[np.ndarray] = None, scores_val: Optional[np.ndarray] = None,
                    threshold_rule: str = "youden", n_bins: int = 15, n_boot: int = 1000,
                    seed: int = 0) -> Dict[str, Any]:
    """ECE (raw and temperature-scaled) with patient-bootstrap intervals, and test rates at a
    validation threshold.

    Args:
        y_test: ``(N,)`` class indices or ``(N, C)`` 0/1/-1; scores_test: ``(N, C)`` probabilities.
        groups_test: ``(N,)`` patient ids (the bootstrap resamples patients).
        y_val, scores_val: validation rows for the temperature and the threshold; None: raw ECE only.
        threshold_rule: ``"youden"`` or ``"sensitivity:T"``.

    Returns:
        ``{"metrics", "ci", "info": {temperature, thresholds, rule, n_bins, n_val}, "scaled": (N, C) | None,
        "bins": {"raw": ..., "scaled": ...}}`` (bins: :func:`reliability_bins` of the test rows).
    """
    y_test, scores_test = np.asarray(y_test), np.asarray(scores_test, dtype=np.float64)
    info: Dict[str, Any] = {"n_bins": n_bins, "threshold_rule": threshold_rule,
                            "ece_definition": "top-label, equal-width bins" if y_test.ndim == 1
                            else "every labelled (sample, finding) pair, equal-width bins"}
    scaled, thresholds = None, {}
    if y_val is not None and len(y_val):
        parse_threshold_rule(threshold_rule)
        t = fit_temperature(np.asarray(y_val), np.asarray(scores_val))
        scaled = apply_temperature(y_test, scores_test, t)
        thresholds = thresholds_on(np.asarray(y_val), np.asarray(scores_val), classes, threshold_rule)
        info.update(temperature=t, thresholds=thresholds, n_val=int(len(y_val)))
    else:
        info["note"] = "no validation rows: no temperature scaling and no threshold"
    metrics = calibration_metrics(y_test, scores_test, scaled, classes, thresholds, n_bins)
    ci: Dict[str, Interval] = {}
    if n_boot > 0 and len(y_test):
        def fn(idx):
            return calibration_metrics(y_test[idx], scores_test[idx], None if scaled is None else scaled[idx],
                                       classes, thresholds, n_bins)
        reps = bootstrap_replicates(fn, _group_index(np.asarray(groups_test).astype(str)), n_boot=n_boot, seed=seed)
        for k, arr in reps.items():
            arr = arr[~np.isnan(arr)]
            ci[k] = (float(np.quantile(arr, 0.025)), float(np.quantile(arr, 0.975))) if arr.size else \
                (float("nan"), float("nan"))
    bins = {"raw": reliability_bins(*confidence_correct(y_test, scores_test), n_bins)}
    if scaled is not None:
        bins["scaled"] = reliability_bins(*confidence_correct(y_test, scaled), n_bins)
    return {"metrics": metrics, "ci": ci, "info": info, "scaled": scaled, "bins": bins}


def plot_reliability(bins: Dict[str, Dict[str, np.ndarray]], path: Any, title: str = "Reliability (test)") -> Any:
    """Reliability diagram (accuracy against mean confidence per bin, raw and scaled) to ``path`` (PNG)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect")
    for name, b in bins.items():
        full = b["count"] > 0
        ax.plot(b["confidence"][full], b["accuracy"][full], "o-", ms=3, label=name)
    ax.set(xlabel="confidence", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
    return Path(str(path))
