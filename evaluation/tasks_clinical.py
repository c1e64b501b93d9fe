"""The questions a clinical user adds to a :class:`~.tasks.TaskResult`: calibration and an operating
point, subgroups, the label-efficiency curve, prompt sensitivity and partial inputs.

Each ``add_*`` function takes a finished result (from :func:`~.tasks.run_probe` or
:func:`~.tasks.run_zeroshot`) and merges its metrics (with intervals) into ``result.metrics`` /
``result.ci``, its tables into ``result.info`` (so ``results.json`` and ``report.md`` carry them) and
its arrays into ``result.details``:

=============================  ===============================================================
:func:`add_calibration`        ``calibration/ece``, ``calibration/ece_scaled``,
                               ``threshold/<class>/<sensitivity|specificity|ppv|npv>``;
                               info ``calibration`` (temperature, thresholds, rule)
:func:`add_subgroups`          ``subgroup/<col>/gap/<metric>``; info ``subgroups`` (per group)
:func:`add_curve`              ``curve/crossover_n/<ref>``, ``curve/<set>/<metric>@<n>``;
                               info ``label_efficiency`` (curves, crossover verdicts)
:func:`add_prompt_sensitivity` ``prompts/<set>/<metric>``, ``prompts/spread/<metric>/<stat>``;
                               info ``prompt_sensitivity``
:func:`add_lead_sets`          ``leads/<spec>/<metric>`` with intervals; info ``lead_sets``
=============================  ===============================================================

The metric names of the probe carry its prefix (``linear/``) where they describe the linear probe.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from . import probes
from .calibration import run_calibration
from .curve import curve_metrics, label_efficiency
from .prompt_sets import SUMMARY, spread
from .subgroups import run_subgroups


def probe_validation_scores(X: np.ndarray, y: np.ndarray, splits: Sequence[str], C: float,
                            n_classes: int, seed: int = 0) -> Optional[np.ndarray]:
    """Validation probabilities ``(N_val, C)`` of the linear probe fitted on train only at the chosen ``C``
    (the refit on train + val has seen them). None without validation rows."""
    splits = np.asarray(splits, dtype=object)
    tr, va = splits == "train", splits == "val"
    if not va.any():
        return None
    y = np.asarray(y)
    if y.ndim == 2:
        return probes.multilabel_linear_probe(X[tr], y[tr], X[va], y[va], X[va], Cs=[C], seed=seed,
                                              refit_on_val=False)["proba"]
    return probes.linear_probe(X[tr], y[tr], X[va], y[va], X[va], n_classes, Cs=[C], seed=seed,
                               refit_on_val=False)["proba"]


def add_calibration(result: Any, y_test: np.ndarray, scores_test: np.ndarray, groups_test: Sequence[Any], *,
                    y_val: Optional[np.ndarray] = None, scores_val: Optional[np.ndarray] = None,
                    threshold_rule: str = "youden", n_bins: int = 15, prefix: str = "") -> Dict[str, Any]:
    """:func:`~.calibration.run_calibration` of the result's test predictions, merged under ``prefix``."""
    res = run_calibration(y_test, scores_test, groups_test, result.info["classes"], y_val=y_val, scores_val=scores_val,
                          threshold_rule=threshold_rule, n_bins=n_bins, n_boot=result.settings.get("n_boot", 0),
                          seed=result.settings.get("seed", 0))
    result.metrics.update({prefix + k: v for k, v in res["metrics"].items()})
    result.ci.update({prefix + k: v for k, v in res["ci"].items()})
    result.info["calibration"] = {**res["info"], "scores": prefix.rstrip("/") or "scores",
                                  "reported": "test rows; temperature and threshold fitted on validation rows"}
    result.details["calibration"] = res
    return res


def add_subgroups(result: Any, y: np.ndarray, scores: np.ndarray, groups: Sequence[Any], rows: pd.DataFrame,
                  spec: Sequence[Any], *, min_size: int = 20, prefix: str = "", source: str = "manifest") -> Dict[str, Any]:
    """:func:`~.subgroups.run_subgroups` of the result's test predictions; gaps into the metrics."""
    res = run_subgroups(y, scores, groups, result.info["classes"], rows, spec, min_size=min_size,
                        n_boot=result.settings.get("n_boot", 0), seed=result.settings.get("seed", 0), source=source)
    result.metrics.update({prefix + k: v for k, v in res["metrics"].items()})
    result.info["subgroups"] = {"min_size": min_size, "scores": prefix.rstrip("/") or "scores", **res["table"]}
    return res


def add_curve(result: Any, features: Mapping[str, np.ndarray], y: np.ndarray, splits: Sequence[str],
              groups: Sequence[Any], **options: Any) -> Dict[str, Any]:
    """:func:`~.curve.label_efficiency` of ``features`` (``{"model": X, "random weights": X', "baseline/kmer": B}``)."""
    curve = label_efficiency(features, y, splits, groups, n_classes=len(result.info["classes"]), **options)
    result.metrics.update(curve_metrics(curve))
    result.info["label_efficiency"] = curve
    return curve


def add_prompt_sensitivity(result: Any, per_set: Mapping[str, Any]) -> Dict[str, Dict[str, float]]:
    """Per-set summary metrics (``per_set``: ``{name: TaskResult}`` of each prompt set alone) and their spread
    beside the ensemble's (``result``)."""
    points = {name: {m: r.metrics[m] for m in SUMMARY if m in r.metrics} for name, r in per_set.items()}
    for name, r in per_set.items():
        result.metrics.update({f"prompts/{name}/{m}": r.metrics[m] for m in SUMMARY if m in r.metrics})
        result.ci.update({f"prompts/{name}/{m}": r.ci[m] for m in SUMMARY if m in r.ci})
    result.metrics.update(spread(points))
    result.info["prompt_sensitivity"] = {"sets": list(per_set), "ensemble": "every distinct prompt of every set",
                                         "per_set": points}
    return points


def add_lead_sets(result: Any, per_spec: Mapping[str, Any], kept: Mapping[str, Sequence[str]],
                  metrics: Sequence[str] = ("accuracy", "balanced_accuracy", "macro_auroc", "macro_f1")) -> None:
    """One row per lead subset (``per_spec``: ``{spec: TaskResult}`` of the same protocol on the masked
    inputs; ``kept``: the lead names of each spec); the probe's metrics are taken from ``linear/``."""
    table: Dict[str, Any] = {}
    for spec, r in per_spec.items():
        base = "linear/" if any(k.startswith("linear/") for k in r.metrics) else ""
        row = {m: r.metrics.get(base + m) for m in metrics if base + m in r.metrics}
        ci = {m: list(r.ci[base + m]) for m in metrics if base + m in r.ci}
        result.metrics.update({f"leads/{spec}/{m}": v for m, v in row.items()})
        result.ci.update({f"leads/{spec}/{m}": tuple(v) for m, v in ci.items()})
        table[spec] = {"leads": list(kept[spec]), "metrics": row, "ci": ci}
    result.info["lead_sets"] = table
