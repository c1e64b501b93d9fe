"""Subgroup analysis: every summary metric per subgroup of a manifest column, with patient-bootstrap
intervals, and the worst-group gap.

``--subgroups sex,age,site`` names manifest columns of the evaluated rows. A column is taken as it is
(its distinct values) unless it is numeric, or a rule is given after a colon:

==================  ====================================================================
``COL``             categorical: one group per value; numeric: ``decade`` when the name
                    contains ``age``, else ``quartile``
``COL:decade``      ``[0, 10)``, ``[10, 20)``, … named ``"40-49"``
``COL:quartile``    quartiles of the evaluated rows (edges written into the record)
``COL:EDGES``       given edges, e.g. ``age:0,18,65,200`` → ``"[0, 18)"``, ``"[18, 65)"``, …
``COL:value``       categorical even when numeric (e.g. a device code)
==================  ====================================================================

Empty cells form the group ``"missing"``. A group with fewer than ``min_size`` rows is listed with
its size and ``too_small: true`` — no metric is computed for it, and it never enters the gap. The
**worst-group gap** of a metric is best − worst over the groups that are large enough (for every
metric here, higher is better). Intervals resample the group's patients.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from medfm.errors import DataError, UsageError
from medfm.metrics import classification_metrics, cluster_bootstrap

from .calibration import expected_calibration_error

#: the summary metrics reported per group (per-class AUROCs stay in the overall table)
SUMMARY = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "macro_auprc")
MISSING = "missing"


def parse_subgroups(spec: Optional[str]) -> List[Tuple[str, Optional[str]]]:
    """``"sex,age:decade,bmi:0,25,30,100"`` → ``[("sex", None), ("age", "decade"), ("bmi", "0,25,30,100")]``.

    Edge lists contain commas, so a part that is a number continues the previous column's rule.
    """
    out: List[Tuple[str, Optional[str]]] = []
    for part in [p.strip() for p in str(spec or "").split(",") if p.strip()]:
        if out and out[-1][1] is not None and _is_number(part) and _is_number(out[-1][1].split(",")[-1]):
            out[-1] = (out[-1][0], f"{out[-1][1]},{part}")
            continue
        col, _, rule = part.partition(":")
        out.append((col.strip(), rule.strip() or None))
    if spec is not None and not out:
        raise UsageError("--subgroups needs comma-separated manifest columns")
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def band(values: pd.Series, column: str, rule: Optional[str]) -> Tuple[np.ndarray, str]:
    """Group label per row ``(N,)`` and the banding rule in words (see the module docstring)."""
    s = pd.Series(values).reset_index(drop=True)
    missing = s.isna() | (s.astype(str).str.strip() == "")
    num = pd.to_numeric(s.where(~missing), errors="coerce")
    numeric = bool((num.notna() | missing).all() and num.notna().any())
    if rule is None:
        rule = ("decade" if "age" in column.lower() else "quartile") if numeric else "value"
    labels = np.where(missing, MISSING, s.astype(str).str.strip()).astype(object)
    if rule == "value":
        return labels, "one group per value"
    if not numeric:
        raise UsageError(f"--subgroups {column}:{rule}: the column is not numeric")
    v = num.to_numpy(dtype=np.float64)
    ok = ~missing.to_numpy()
    if rule == "decade":
        d = (np.floor(v[ok] / 10) * 10).astype(int)
        labels[ok] = [f"{a}-{a + 9}" for a in d]
        return labels, "decades: [10k, 10k+10) named '10k-(10k+9)'"
    if rule == "quartile":
        edges = np.unique(np.quantile(v[ok], [0, 0.25, 0.5, 0.75, 1.0]))
        k = np.clip(np.searchsorted(edges, v[ok], side="right") - 1, 0, max(len(edges) - 2, 0))
        labels[ok] = [f"Q{i + 1} [{edges[i]:g}, {edges[i + 1]:g}{']' if i == len(edges) - 2 else ')'}"
                      if len(edges) > 1 else f"{edges[0]:g}" for i in k]
        return labels, f"quartiles of the evaluated rows, edges {[float(e) for e in edges]}"
    try:
        edges = sorted(float(e) for e in rule.split(","))
    except ValueError:
        raise UsageError(f"--subgroups {column}:{rule}: use decade, quartile, value or comma-separated edges") from None
    if len(edges) < 2:
        raise UsageError(f"--subgroups {column}:{rule}: give at least two edges")
    k = np.searchsorted(edges, v[ok], side="right") - 1
    labels[ok] = [f"[{edges[i]:g}, {edges[i + 1]:g})" if 0 <= i < len(edges) - 1 else "outside the edges" for i in k]
    return labels, f"bands [e_i, e_i+1) of the edges {edges}"


def run_subgroups(y: np.ndarray, scores: np.ndarray, groups: Sequence[Any], classes: Sequence[str], rows: pd.DataFrame,
                  spec: Sequence[Tuple[str, Optional[str]]], *, min_size: int = 20, n_boot: int = 1000, seed: int = 0,
                  source: str = "manifest") -> Dict[str, Any]:
    """Per-subgroup metrics of one set of predictions.

    Args:
        y: ``(N,)`` class indices or ``(N, C)`` 0/1; scores: ``(N, C)``; groups: ``(N,)`` patient ids.
        rows: the manifest rows of the N predictions (same order); spec: :func:`parse_subgroups` output.

    Returns:
        ``{"metrics": {"subgroup/<col>/gap/<metric>": gap}, "table": {col: {"rule", "groups": {label: {"n",
        "n_patients", "too_small", "metrics", "ci"}}, "gap": {metric: {"gap", "best", "worst"}}}}, "min_size"}``.
    """
    y, scores = np.asarray(y), np.asarray(scores)
    g = np.asarray(groups).astype(str)
    table: Dict[str, Any] = {}
    flat: Dict[str, float] = {}
    for col, rule in spec:
        if col not in rows.columns:
            raise DataError(f"--subgroups: column {col!r} not in the manifest (columns: {list(rows.columns)})",
                            source=source, field=col)
        labels, how = band(rows[col], col, rule)
        out: Dict[str, Any] = {}
        for label in sorted(set(labels), key=str):
            m = labels == label
            entry: Dict[str, Any] = {"n": int(m.sum()), "n_patients": int(len(set(g[m]))), "too_small": bool(m.sum() < min_size)}
            if not entry["too_small"]:
                def fn(yy, ss):
                    full = classification_metrics(yy, ss, list(classes))
                    return {**{k: full[k] for k in SUMMARY if k in full}, "ece": expected_calibration_error(yy, ss)}
                entry["metrics"] = fn(y[m], scores[m])
                ci = cluster_bootstrap(fn, y[m], scores[m], g[m], n_boot=n_boot, seed=seed) if n_boot > 0 else {}
                entry["ci"] = {k: list(v) for k, v in ci.items()}
            out[str(label)] = entry
        gaps = worst_group_gaps(out)
        table[col] = {"rule": how, "groups": out, "gap": gaps}
        flat.update({f"subgroup/{col}/gap/{k}": v["gap"] for k, v in gaps.items()})
    return {"metrics": flat, "table": table, "min_size": min_size}


def worst_group_gaps(groups: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """``{metric: {"gap": best − worst, "best": label, "worst": label}}`` over the groups with metrics
    (ECE: lower is better, so its worst group is the highest)."""
    out: Dict[str, Dict[str, Any]] = {}
    scored = {k: v["metrics"] for k, v in groups.items() if "metrics" in v}
    for metric in (*SUMMARY, "ece"):
        vals = {k: m[metric] for k, m in scored.items() if metric in m and not np.isnan(m[metric])}
        if len(vals) < 2:
            continue
        order = sorted(vals, key=vals.get)  # two distinct groups even when tied
        lo, hi = order[0], order[-1]
        best, worst = (lo, hi) if metric == "ece" else (hi, lo)
        out[metric] = {"gap": float(abs(vals[hi] - vals[lo])), "best": best, "worst": worst}
    return out


def subgroup_markdown(table: Dict[str, Any], min_size: int) -> List[str]:
    """Report lines: one table per column (too-small groups listed with their size)."""
    lines: List[str] = []
    for col, t in table.items():
        lines += ["", f"## Subgroups by `{col}` ({t['rule']}; groups under {min_size} rows: too small)", "",
                  "| group | n | patients | accuracy | balanced accuracy | macro AUROC | ECE |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for label, e in t["groups"].items():
            if e["too_small"]:
                lines.append(f"| {label} | {e['n']} | {e['n_patients']} | too small | | | |")
                continue
            cells = []
            for k in ("accuracy", "balanced_accuracy", "macro_auroc", "ece"):
                v = e["metrics"].get(k)
                c = e.get("ci", {}).get(k)
                cells.append("n/a" if v is None or np.isnan(v) else f"{v:.3f}" + (
                    f" [{c[0]:.3f}, {c[1]:.3f}]" if c and c[0] is not None and not np.isnan(c[0]) else ""))
            lines.append(f"| {label} | {e['n']} | {e['n_patients']} | " + " | ".join(cells) + " |")
        if t["gap"]:
            lines += [""] + [f"- worst-group gap in {k}: {v['gap']:.3f} (best {v['best']}, worst {v['worst']})"
                             for k, v in t["gap"].items()]
    return lines
