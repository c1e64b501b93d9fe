"""Probes on frozen embeddings: linear (C chosen on validation), kNN, few-shot; patient-safe splits.

Splits come from the engine's patient-grouped splitter (:mod:`medfm.data.splits`, shared
with fine-tuning): the manifest's ``split`` column when present, otherwise a deterministic
split of patients; validation patients are carved out of training when the manifest names
none. A patient whose samples fall in two splits is refused.

Shapes: ``X (N, D)`` float embeddings, ``y (N,)`` int class indices in ``[0, C)``;
probabilities are ``(N, C)`` over all C classes even when a split lacks some.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Sequence, Tuple

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

from medfm.data.splits import make_splits
from medfm.errors import DataError
from medfm.metrics import multilabel_metrics

DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 4, 9))


def encode_labels(values: Sequence[Any]) -> Tuple[np.ndarray, List[str]]:
    """Label cells → ``(y (N,) int, class_names)``; empty cells → -1. Names sorted."""
    s = pd.Series(list(values), dtype=object)
    missing = s.isna() | (s.astype(str).str.strip() == "")
    names = sorted(set(s[~missing].astype(str)))
    lut = {n: i for i, n in enumerate(names)}
    y = np.array([-1 if m else lut[str(v)] for v, m in zip(s, missing)], dtype=np.int64)
    return y, names


def resolve_splits(df: pd.DataFrame, *, split_column: str = "split", test_size: float = 0.2,
                   val_size: float = 0.1, seed: int = 0, source: str = "manifest") -> np.ndarray:
    """``(N,)`` array of ``"train" | "val" | "test"``, one per row of ``df``.

    The engine's patient-grouped splitter (:func:`medfm.data.splits.make_splits`): the
    ``split_column`` when present (validation patients carved out of training when it
    names none), otherwise a deterministic split of patients (``test_size``, ``val_size``).
    A patient with samples in two splits is refused.
    """
    column = split_column if split_column in df.columns and df[split_column].notna().any() else None
    frame = df if df.attrs.get("source") else df.copy()
    frame.attrs.setdefault("source", source)
    frames = make_splits(frame, column, val_fraction=val_size, test_fraction=test_size, seed=seed)
    if len(frames["test"]) == 0:
        raise DataError("no test rows (the split column names none, or too few patients)", source=source,
                        field=split_column)
    where = {str(sid): name for name, f in frames.items() for sid in f["id"]}
    return np.array([where.get(str(sid), "") for sid in df["id"]], dtype=object)


def full_proba(model: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """``predict_proba`` expanded to all ``n_classes`` columns ``(N, C)``."""
    p = model.predict_proba(X)
    out = np.zeros((len(X), n_classes), dtype=np.float64)
    out[:, np.asarray(model.classes_).astype(int)] = p
    return out


def _logreg(C: float, seed: int) -> LogisticRegression:
    return LogisticRegression(C=C, max_iter=2000, random_state=seed)


def linear_probe(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
                 X_test: np.ndarray, n_classes: int, *, Cs: Iterable[float] = DEFAULT_CS,
                 seed: int = 0, refit_on_val: bool = True) -> Dict[str, Any]:
    """Logistic regression with the inverse regularisation ``C`` chosen on validation accuracy.

    Ties go to the smallest C (strongest regularisation). The final model is refit on
    train + val with the chosen C (``refit_on_val``).

    Returns:
        ``{"C": float, "val_accuracy": {C: acc}, "proba": (N_test, C) , "model": LogisticRegression}``.
    """
    val_acc: Dict[float, float] = {}
    for C in Cs:
        m = _logreg(C, seed).fit(X_train, y_train)
        val_acc[float(C)] = float(accuracy_score(y_val, m.predict(X_val))) if len(y_val) else 0.0
    best = max(val_acc, key=lambda c: (val_acc[c], -c))
    if refit_on_val and len(y_val):
        Xf, yf = np.concatenate([X_train, X_val]), np.concatenate([y_train, y_val])
    else:
        Xf, yf = X_train, y_train
    model = _logreg(best, seed).fit(Xf, yf)
    return {"C": best, "val_accuracy": val_acc, "proba": full_proba(model, X_test, n_classes), "model": model}


def knn_probe(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, n_classes: int,
              k: int = 20) -> np.ndarray:
    """Cosine kNN (uniform vote over ``k`` neighbours) → class probabilities ``(N_test, C)``."""
    m = KNeighborsClassifier(n_neighbors=min(k, len(X_train)), metric="cosine").fit(X_train, y_train)
    return full_proba(m, X_test, n_classes)


def few_shot(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
             n_classes: int, *, shots: Sequence[int] = (1, 5, 10), seeds: Sequence[int] = range(5),
             C: float = 1.0) -> Dict[str, float]:
    """k examples per class drawn from train, logistic regression, repeated over seeds.

    Classes with fewer than k training examples contribute all they have.
    Returns ``{"<k>shot_accuracy_mean", "<k>shot_accuracy_sd", "<k>shot_balanced_accuracy_mean", ...}``.
    """
    out: Dict[str, float] = {}
    classes = np.unique(y_train)
    for k in shots:
        accs, baccs = [], []
        for seed in seeds:
            rng = np.random.default_rng(seed)
            idx = np.concatenate([rng.permutation(np.flatnonzero(y_train == c))[:k] for c in classes])
            if len(np.unique(y_train[idx])) < 2:
                continue
            m = _logreg(C, seed).fit(X_train[idx], y_train[idx])
            pred = m.predict(X_test)
            accs.append(accuracy_score(y_test, pred))
            baccs.append(balanced_accuracy_score(y_test, pred))
        for name, vals in (("accuracy", accs), ("balanced_accuracy", baccs)):
            out[f"{k}shot_{name}_mean"] = float(np.mean(vals)) if vals else float("nan")
            out[f"{k}shot_{name}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
    return out


def multilabel_linear_probe(X_train: np.ndarray, Y_train: np.ndarray, X_val: np.ndarray, Y_val: np.ndarray,
                            X_test: np.ndarray, *, Cs: Iterable[float] = DEFAULT_CS, seed: int = 0,
                            refit_on_val: bool = True) -> Dict[str, Any]:
    """One logistic regression per finding (one-vs-rest), ``C`` chosen on validation macro AUROC.

    Args:
        X_*: ``(N, D)`` embeddings; Y_*: ``(N, C)`` 0/1 targets.
    Returns:
        ``{"C", "val_macro_auroc": {C: auc}, "proba": (N_test, C)}``; a finding constant in the
        training rows gets that constant as its probability.
    """
    def fit_predict(C, Xf, Yf, Xp):
        out = np.zeros((len(Xp), Yf.shape[1]))
        for c in range(Yf.shape[1]):
            if Yf[:, c].min() == Yf[:, c].max():
                out[:, c] = float(Yf[0, c]) if len(Yf) else 0.0
            else:
                out[:, c] = _logreg(C, seed).fit(Xf, Yf[:, c]).predict_proba(Xp)[:, 1]
        return out

    val_auc: Dict[float, float] = {}
    for C in Cs:
        if len(Y_val):
            auc = multilabel_metrics(Y_val, fit_predict(C, X_train, Y_train, X_val))["macro_auroc"]
            val_auc[float(C)] = -1.0 if np.isnan(auc) else float(auc)
        else:
            val_auc[float(C)] = 0.0
    best = max(val_auc, key=lambda c: (val_auc[c], -c))
    if refit_on_val and len(Y_val):
        Xf, Yf = np.concatenate([X_train, X_val]), np.concatenate([Y_train, Y_val])
    else:
        Xf, Yf = X_train, Y_train
    return {"C": best, "val_macro_auroc": val_auc, "proba": fit_predict(best, Xf, Yf, X_test)}


def multilabel_knn_probe(X_train: np.ndarray, Y_train: np.ndarray, X_test: np.ndarray, k: int = 20) -> np.ndarray:
    """Cosine kNN: per finding, the fraction of the ``k`` nearest training rows that have it → ``(N_test, C)``."""
    nn = NearestNeighbors(n_neighbors=min(k, len(X_train)), metric="cosine").fit(X_train)
    idx = nn.kneighbors(X_test, return_distance=False)
    return Y_train[idx].mean(axis=1).astype(np.float64)
