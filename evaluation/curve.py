"""Label-efficiency curves: test metrics against labelled examples per class, and the crossover n.

For each feature set (the model's embeddings, its random-weight twin's, a classical baseline's) and
each ``n`` of the grid (``1, 2, 5, 10, 20, 50, …`` per class, and ``"all"``), ``n`` training examples
per class are drawn ``seeds`` times, a logistic regression (fixed ``C``, the few-shot probe's) is
fitted on them and scored on the whole test split. Draws are **patient-grouped**: a class's
examples come from distinct patients first (patients in random order, one random example each,
then second examples, …), so ``n = 5`` means five patients' worth of labels wherever five exist.

The **crossover** of a reference (baseline or twin) against the model is the smallest ``n`` of the
grid from which the reference's mean metric is at least the model's at that ``n`` and every larger
one ("the baseline catches the model"); None when the model stays ahead at the largest ``n``
(reported as "not within the data").

Shapes: ``features[name] (N, D)``; ``y (N,)`` class indices; ``splits (N,)``; ``groups (N,)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
from sklearn.linear_model import LogisticRegression

from medfm.errors import DataError, UsageError
from medfm.metrics import multiclass_metrics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DEFAULT_NS = (1, 2, 5, 10, 20, 50, 100, 200, 500)
METRICS = ("macro_auroc", "balanced_accuracy", "accuracy")
NOT_WITHIN = "not within the data"
N = Union[int, str]


def parse_ns(spec: Optional[str]) -> List[N]:
    """``"1,2,5,all"`` → ``[1, 2, 5, "all"]`` (default: :data:`DEFAULT_NS` and ``"all"``)."""
    if not spec:
        return [*DEFAULT_NS, "all"]
    out: List[N] = []
    for part in str(spec).split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part == "all":
            out.append("all")
            continue
        try:
            v = int(part)
        except ValueError:
            v = 0
        if v < 1:
            raise UsageError(f"--curve-ns: {part!r} is not a positive integer or 'all'")
        out.append(v)
    if not out:
        raise UsageError("--curve-ns names no n")
    return out


def grouped_draw(y: np.ndarray, groups: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices of ``n`` examples per class, distinct patients first (see the module docstring)."""
    picked = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        pats = groups[rows]
        order = rng.permutation(np.unique(pats))
        per = {p: list(rng.permutation(rows[pats == p])) for p in order}
        take: List[int] = []
        depth = 0
        while len(take) < n and any(len(v) > depth for v in per.values()):
            take.extend(int(per[p][depth]) for p in order if len(per[p]) > depth)
            depth += 1
        picked.extend(take[:n])
    return np.asarray(sorted(picked), dtype=np.int64)


def _grid(ns: Sequence[N], y_train: np.ndarray) -> List[N]:
    """The ``n`` of the grid that change the training set: sizes past the largest class collapse into ``all``."""
    biggest = int(np.bincount(y_train).max())
    out: List[N] = [n for n in ns if n == "all" or int(n) < biggest]
    return out if out else ["all"]


def _fit_score(X: np.ndarray, y: np.ndarray, idx: np.ndarray, test: np.ndarray, n_classes: int, C: float,
               seed: int) -> Dict[str, float]:
    if len(np.unique(y[idx])) < 2:
        return {m: float("nan") for m in METRICS}
    m = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(X[idx], y[idx])
    proba = np.zeros((int(test.sum()), n_classes))
    proba[:, m.classes_.astype(int)] = m.predict_proba(X[test])
    full = multiclass_metrics(y[test], proba)
    return {k: full[k] for k in METRICS}


def label_efficiency(features: Mapping[str, np.ndarray], y: np.ndarray, splits: Sequence[str], groups: Sequence[Any],
                     *, ns: Sequence[N] = (*DEFAULT_NS, "all"), seeds: int = 5, C: float = 1.0,
                     metric: str = "macro_auroc", model: str = "model", n_classes: Optional[int] = None,
                     source: str = "manifest") -> Dict[str, Any]:
    """The curve of every feature set and each reference's crossover against ``model``.

    Returns:
        ``{"ns": [...], "metric", "seeds", "C", "curves": {name: {metric: {"mean": [...], "sd": [...],
        "low": [...], "high": [...]}}}, "crossover": {name: {"n": int | None, "verdict": str}}}``
        (``low``/``high``: the 2.5 / 97.5 % quantiles over the draws; ``"all"`` is drawn once).
    """
    if metric not in METRICS:
        raise UsageError(f"curve metric {metric!r}: choose one of {', '.join(METRICS)}")
    y = np.asarray(y).astype(int)
    if y.ndim != 1:
        raise UsageError("the label-efficiency curve is for single-label classes (one class per row)")
    splits = np.asarray(splits, dtype=object)
    tr, te = splits == "train", splits == "test"
    if not tr.any() or not te.any():
        raise DataError("the label-efficiency curve needs train and test rows", source=source, field="split")
    if model not in features:
        raise UsageError(f"no feature set named {model!r} among {sorted(features)}")
    k = int(n_classes or (y.max() + 1))
    tr_idx, g = np.flatnonzero(tr), np.asarray(groups).astype(str)
    grid = _grid(ns, y[tr])
    curves: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
    for name, X in features.items():
        X = np.asarray(X)
        per: Dict[str, List[List[float]]] = {m: [] for m in METRICS}
        for n in grid:
            draws = [tr_idx] if n == "all" else [
                tr_idx[grouped_draw(y[tr], g[tr], int(n), np.random.default_rng(s))] for s in range(seeds)]
            vals = [_fit_score(X, y, idx, te, k, C, s) for s, idx in enumerate(draws)]
            for m in METRICS:
                per[m].append([v[m] for v in vals])
        curves[name] = {m: _summary(v) for m, v in per.items()}
    crossover = {name: crossover_n(grid, curves[model][metric]["mean"], curves[name][metric]["mean"])
                 for name in features if name != model}
    return {"ns": list(grid), "n_train_per_class_max": int(np.bincount(y[tr]).max()), "metric": metric, "seeds": seeds, "C": C, "model": model, "curves": curves,
            "crossover": crossover, "sampling": "n per class from train, distinct patients first; test split whole"}


def _summary(rows: List[List[float]]) -> Dict[str, List[float]]:
    out: Dict[str, List[float]] = {"mean": [], "sd": [], "low": [], "high": []}
    for vals in rows:
        a = np.asarray(vals, dtype=np.float64)
        a = a[~np.isnan(a)]
        out["mean"].append(float(a.mean()) if a.size else float("nan"))
        out["sd"].append(float(a.std(ddof=1)) if a.size > 1 else 0.0 if a.size else float("nan"))
        out["low"].append(float(np.quantile(a, 0.025)) if a.size else float("nan"))
        out["high"].append(float(np.quantile(a, 0.975)) if a.size else float("nan"))
    return out


def crossover_n(ns: Sequence[N], model: Sequence[float], reference: Sequence[float]) -> Dict[str, Any]:
    """The smallest ``n`` from which ``reference >= model`` at it and every larger ``n`` (NaN = not caught).

    Returns ``{"n": n | None, "verdict": "the reference catches the model at n = 5" | "not within the data"}``.
    """
    m, r = np.asarray(model, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    caught = np.nan_to_num(r, nan=-np.inf) >= np.nan_to_num(m, nan=np.inf) - 1e-12
    if not caught.size or not caught[-1]:
        return {"n": None, "verdict": NOT_WITHIN}
    i = len(caught) - 1
    while i > 0 and caught[i - 1]:
        i -= 1
    n = ns[i]
    return {"n": n, "verdict": f"catches the model at n = {n} per class" if n != "all"
            else "catches the model only with all training labels"}


def curve_metrics(curve: Mapping[str, Any]) -> Dict[str, float]:
    """Scalars for ``results.json`` metrics and the card: ``curve/crossover_n/<ref>`` (NaN = not within the
    data; a crossover at ``all`` counts as the largest class's training rows) and each set's mean metric
    at each ``n``."""
    out: Dict[str, float] = {}
    for name, c in curve["crossover"].items():
        n = c["n"]
        out[f"curve/crossover_n/{name}"] = float("nan") if n is None else \
            float(curve["n_train_per_class_max"]) if n == "all" else float(n)
    for name, per in curve["curves"].items():
        for n, v in zip(curve["ns"], per[curve["metric"]]["mean"]):
            out[f"curve/{name}/{curve['metric']}@{n}"] = v
    return out


def plot_curve(curve: Mapping[str, Any], path: Any) -> Any:
    """Mean metric against n per class (log x; ``all`` last) with 95 % bands over the draws, to ``path`` (PNG)."""
    ns, metric = curve["ns"], curve["metric"]
    xs = np.arange(len(ns))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, per in curve["curves"].items():
        c = per[metric]
        ax.plot(xs, c["mean"], "o-", ms=3, label=name)
        ax.fill_between(xs, c["low"], c["high"], alpha=0.2)
    for name, c in curve["crossover"].items():
        if c["n"] is not None:
            ax.axvline(ns.index(c["n"]), color="grey", ls=":", lw=1)
            ax.text(ns.index(c["n"]), ax.get_ylim()[0], f" {name} catches up", fontsize=6, rotation=90, va="bottom")
    ax.set_xticks(xs, [str(n) for n in ns])
    ax.set(xlabel="labelled examples per class", ylabel=f"test {metric}", title="Label efficiency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
    return Path(str(path))
