"""The ``tabular`` baseline: the same features the tabular tower sees, as a flat design matrix.

:class:`TabularFeatureEncoder` turns ``tabular`` adapter records into, per feature column:

* numeric: the standardised value (statistics of the training split, from the adapter) and a
  missing indicator; a missing value is 0 *and* flagged, so a linear model can tell the two apart;
* categorical: one-hot over the column's vocabulary (its unknown token included) and a missing indicator;
* codes: multi-hot over the column's vocabulary and a missing indicator.

``medfm evaluate --baseline tabular`` fits the probes (logistic regression, kNN) on it beside the
model's embeddings. :func:`gradient_boosted_scores` is the tree baseline on the same features
(scikit-learn's ``HistGradientBoostingClassifier``, missing values as NaN, handled natively).
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np

__all__ = ["TabularFeatureEncoder", "tabular_design", "gradient_boosted_scores"]


def _layout(record: Any):
    meta = record.meta
    return list(meta["columns"]), list(meta["kinds"]), [tuple(r) for r in meta["ranges"]]


def tabular_design(records: Sequence[Any], *, nan_missing: bool = False) -> "tuple[np.ndarray, List[str]]":
    """Records of one fitted ``tabular`` adapter → ``(X (N, D) float32, feature names)``.

    ``nan_missing``: a missing numeric value is NaN (for trees) instead of 0; indicators are kept.
    """
    if not records:
        return np.zeros((0, 0), np.float32), []
    columns, kinds, ranges = _layout(records[0])
    names: List[str] = []
    blocks = []
    for f, (col, kind, (start, end)) in enumerate(zip(columns, kinds, ranges)):
        width = 1 if kind == "num" else end - start
        names += [col] if kind == "num" else [f"{col}={i - start}" for i in range(start, end)]
        names.append(f"{col}:missing")
        block = np.zeros((len(records), width + 1), np.float32)
        for r, rec in enumerate(records):
            present = bool(rec.meta["mask"][f])
            block[r, -1] = 0.0 if present else 1.0
            if kind == "num":
                block[r, 0] = rec.data[f, 0] if present else (np.nan if nan_missing else 0.0)
            elif present:
                ids = rec.data[f, 1:].astype(np.int64)
                ids = ids[(ids >= start) & (ids < end)]
                block[r, ids - start] = 1.0
        blocks.append(block)
    return np.concatenate(blocks, axis=1), names


class TabularFeatureEncoder:
    """Standardised numeric values, one-hot categories, multi-hot codes and missing indicators.

    The :class:`~medfm.evaluation.baselines.BaselineEncoder` interface (kept apart from that module,
    which lists this encoder). The statistics are the fitted ``tabular`` adapter's (training split).
    """

    name = "tabular"
    modality = "tabular"
    metric = "euclidean"

    def fit(self, values: Sequence[Any]) -> "TabularFeatureEncoder":
        return self

    def fit_transform(self, values: Sequence[Any]) -> np.ndarray:
        return self.fit(values).transform(values)

    def transform(self, values: Sequence[Any]) -> np.ndarray:
        X, self._names = tabular_design(list(values))
        return X

    def describe(self) -> Dict[str, Any]:
        names = getattr(self, "_names", None)
        return {"name": self.name, "modality": self.modality, "metric": self.metric, "dim": None if names is None else len(names),
                "features": "numeric (train-split standardised) + one-hot categories + multi-hot codes + "
                            "a missing indicator per column"}


def gradient_boosted_scores(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, seed: int = 0) -> np.ndarray:
    """Class probabilities ``(N_test, C)`` of a ``HistGradientBoostingClassifier`` fitted on the train rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier  # deferred: only for the tree baseline

    clf = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                         min_samples_leaf=5, random_state=seed)
    return clf.fit(X_train, y_train).predict_proba(X_test)
