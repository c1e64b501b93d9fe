"""Paired comparison of two evaluations on the same samples (``medfm evaluate compare``).

Every classification and retrieval evaluator writes ``predictions.npz`` beside its
``results.json`` (:func:`write_predictions`)::

    ids        (N,)  sample ids (str)           groups   (N,)  patient ids (str)
    y_true     (N,) class index | (N, C) 0/1    scores   (N, C) float   (classification)
    classes    (C,)  class names                first_rank, ap (N,)     (retrieval, per query)
    task       ()    "multiclass" | "multilabel" | "retrieval"

:func:`compare_predictions` aligns two such files on their common ids (the labels must
agree) and tests each metric:

* AUROC (per class, one-vs-rest for multi-class; per finding for multi-label): the paired
  DeLong test (:func:`medfm.metrics.delong_test`);
* every other metric (accuracy, macro AUROC/AUPRC/F1, expected calibration error ``ece`` — and
  ``calibrated/ece`` when both runs wrote temperature-scaled scores — R@k, MRR, mAP): a paired
  patient-cluster bootstrap of the difference B − A, with a percentile 95 % interval and a
  two-sided bootstrap p-value ``min(1, 2 · min(P(Δ ≤ 0), P(Δ ≥ 0)))``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from medfm.errors import DataError

from medfm.metrics import _group_index, bootstrap_replicates, classification_metrics, delong_test

from .calibration import expected_calibration_error
from .retrieval import metrics_from_ranks

PREDICTIONS = "predictions.npz"


def write_predictions(out_dir: Any, *, ids: Sequence[str], groups: Sequence[str], task: str,
                      y_true: Optional[np.ndarray] = None, scores: Optional[np.ndarray] = None,
                      classes: Optional[Sequence[str]] = None, first_rank: Optional[np.ndarray] = None,
                      ap: Optional[np.ndarray] = None, scores_scaled: Optional[np.ndarray] = None) -> Path:
    """Write ``out_dir/predictions.npz`` (see the module docstring). Ids only, no manifest content."""
    arrays: Dict[str, np.ndarray] = {"ids": np.asarray([str(i) for i in ids]),
                                     "groups": np.asarray([str(g) for g in groups]),
                                     "task": np.asarray(task)}
    if y_true is not None:
        arrays.update(y_true=np.asarray(y_true), scores=np.asarray(scores, dtype=np.float64),
                      classes=np.asarray([str(c) for c in classes]))
    if scores_scaled is not None:  # temperature-scaled scores (--calibrate): compared as calibrated/ece
        arrays["scores_scaled"] = np.asarray(scores_scaled, dtype=np.float64)
    if first_rank is not None:
        arrays.update(first_rank=np.asarray(first_rank), ap=np.asarray(ap, dtype=np.float64))
    path = Path(out_dir) / PREDICTIONS
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def load_predictions(results: Any) -> Dict[str, Any]:
    """Read a results directory's (or a ``predictions.npz`` file's) per-sample predictions."""
    p = Path(str(results))
    f = p / PREDICTIONS if p.is_dir() else p
    if not f.is_file():
        raise DataError(f"no {PREDICTIONS}: evaluate again with this medfm version (zeroshot, evaluate probe "
                        "and evaluate retrieval write it)", source=str(p))
    with np.load(f, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    out["task"] = str(out["task"])
    out["dir"] = str(p if p.is_dir() else p.parent)
    rj = Path(out["dir"]) / "results.json"
    out["record"] = json.loads(rj.read_text()) if rj.is_file() else {}
    return out


def _align(a: Dict[str, Any], b: Dict[str, Any], source: str):
    if a["task"] != b["task"]:
        raise DataError(f"different tasks: {a['task']} vs {b['task']}", source=source)
    common = [i for i in a["ids"].tolist() if i in set(b["ids"].tolist())]
    if len(common) < 2:
        raise DataError(f"only {len(common)} sample(s) in common; a paired comparison needs the same samples",
                        source=source)
    ia = {v: k for k, v in enumerate(a["ids"].tolist())}
    ib = {v: k for k, v in enumerate(b["ids"].tolist())}
    return np.array([ia[i] for i in common]), np.array([ib[i] for i in common]), common


def _summarise(point_a: Dict[str, float], point_b: Dict[str, float], reps: Dict[str, np.ndarray]) -> Dict[str, Dict]:
    out = {}
    for k in point_a:
        if k not in point_b or k not in reps:
            continue
        d = reps[k][~np.isnan(reps[k])]
        diff = float(point_b[k] - point_a[k])
        if d.size == 0 or np.isnan(diff):
            continue
        p = float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))
        out[k] = {"a": float(point_a[k]), "b": float(point_b[k]), "diff": diff,
                  "ci": [float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))], "p_value": p,
                  "test": "paired bootstrap"}
    return out


def _with_calibration(y: np.ndarray, scores: np.ndarray, scaled: Optional[np.ndarray], classes) -> Dict[str, float]:
    """:func:`~medfm.metrics.classification_metrics` plus ``ece`` (and ``calibrated/ece`` of scaled scores)."""
    out = classification_metrics(y, scores, classes)
    out["ece"] = expected_calibration_error(y, scores)
    if scaled is not None:
        out["calibrated/ece"] = expected_calibration_error(y, scaled)
    return out


def compare_predictions(a: Dict[str, Any], b: Dict[str, Any], *, n_boot: int = 1000, seed: int = 0,
                        source: str = "compare") -> Dict[str, Any]:
    """Paired tests of B against A (``diff = B − A``) on their common samples; see the module docstring."""
    ia, ib, common = _align(a, b, source)
    groups = a["groups"][ia]
    clusters = _group_index(groups)
    res: Dict[str, Any] = {"task": a["task"], "n": len(common), "n_patients": len(clusters),
                           "a": a["dir"], "b": b["dir"], "n_boot": n_boot, "metrics": {}, "delong": {}}
    if a["task"] == "retrieval":
        fa, pa = a["first_rank"][ia], a["ap"][ia]
        fb, pb = b["first_rank"][ib], b["ap"][ib]
        pt_a, pt_b = metrics_from_ranks(fa, pa), metrics_from_ranks(fb, pb)

        def fn(idx):
            ma, mb = metrics_from_ranks(fa[idx], pa[idx]), metrics_from_ranks(fb[idx], pb[idx])
            return {k: mb[k] - ma[k] for k in ma}
        res["metrics"] = _summarise(pt_a, pt_b, bootstrap_replicates(fn, clusters, n_boot=n_boot, seed=seed))
        return res
    ca, cb = [str(c) for c in a["classes"]], [str(c) for c in b["classes"]]
    if sorted(ca) != sorted(cb):
        raise DataError(f"different classes: {ca} vs {cb}", source=source)
    perm = np.array([cb.index(c) for c in ca])  # B's columns in A's class order
    ya, yb, sb_all = a["y_true"][ia], b["y_true"][ib], b["scores"][:, perm]
    yb = yb[:, perm] if yb.ndim == 2 else np.array([ca.index(cb[j]) for j in yb], dtype=ya.dtype)
    if not np.array_equal(ya, yb):
        raise DataError("the two results disagree on the labels of common samples; not the same task", source=source)
    sa, sb = a["scores"][ia], sb_all[ib]
    both_scaled = "scores_scaled" in a and "scores_scaled" in b
    xa = a["scores_scaled"][ia] if both_scaled else None
    xb = b["scores_scaled"][:, perm][ib] if both_scaled else None
    classes = [str(c) for c in a["classes"]]
    pt_a, pt_b = _with_calibration(ya, sa, xa, classes), _with_calibration(ya, sb, xb, classes)

    def fn(idx):
        ma = _with_calibration(ya[idx], sa[idx], None if xa is None else xa[idx], classes)
        mb = _with_calibration(ya[idx], sb[idx], None if xb is None else xb[idx], classes)
        return {k: mb[k] - ma[k] for k in ma if k in mb}
    metrics = _summarise(pt_a, pt_b, bootstrap_replicates(fn, clusters, n_boot=n_boot, seed=seed))
    for c, name in enumerate(classes):  # AUROC per class/finding: the paired DeLong test
        y = (ya == c).astype(int) if ya.ndim == 1 else ya[:, c]
        keep = y >= 0
        if keep.sum() < 2 or y[keep].min() == y[keep].max():
            continue
        t = delong_test(y[keep], sa[keep, c], sb[keep, c])
        res["delong"][f"auroc/{name}"] = {"a": t["auc_a"], "b": t["auc_b"], "diff": -t["diff"], "se": t["se"],
                                          "z": -t["z"], "p_value": t["p_value"], "test": "DeLong (paired)"}
    res["metrics"] = metrics
    return res


def comparison_markdown(res: Dict[str, Any]) -> str:
    """The comparison as a Markdown report."""
    lines = [f"# Paired comparison ({res['task']})", "",
             f"A: `{res['a']}`  ", f"B: `{res['b']}`  ",
             f"{res['n']} common samples from {res['n_patients']} patients; diff = B − A.", ""]
    if res.get("delong"):
        lines += ["## AUROC: paired DeLong test", "", "| metric | A | B | diff | SE | z | p |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for k, v in res["delong"].items():
            lines.append(f"| {k} | {v['a']:.4f} | {v['b']:.4f} | {v['diff']:+.4f} | {v['se']:.4f} | {v['z']:+.2f} "
                         f"| {v['p_value']:.3g} |")
        lines.append("")
    lines += [f"## Paired patient bootstrap ({res['n_boot']} replicates)", "",
              "| metric | A | B | diff | 95% CI of diff | p |", "| --- | ---: | ---: | ---: | --- | ---: |"]
    for k, v in res["metrics"].items():
        lines.append(f"| {k} | {v['a']:.4f} | {v['b']:.4f} | {v['diff']:+.4f} | {v['ci'][0]:+.4f} to {v['ci'][1]:+.4f} "
                     f"| {v['p_value']:.3g} |")
    return "\n".join(lines) + "\n"
