"""Evaluation records: ``results.json`` (machine) + ``report.md`` (human) + PNG plots.

``results.json`` schema (every evaluation)::

    {"task": "zeroshot" | "retrieval" | "probe" | ..., "model": {"dir", "name", "fingerprint"},
     "manifest": {"path", "name", "sha256"}, "modality": ..., "n": int,
     "metrics": {name: value}, "ci": {name: [low, high]}, "ci_method": "...", ...extra}

Values are plain JSON (NaN → null). Only manifest-level ids ever appear; no PHI. Paths are
written relative to the folder of ``results.json`` (``model.dir``, ``manifest.path``), with the
file or folder ``name`` beside them: no absolute path of the machine that wrote the record.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.metrics import confusion_matrix, roc_curve  # noqa: E402
from .embed import write_init_report_for
from .report_sections import clinical_sections


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays → Python; NaN/inf → None; tuples → lists."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def plot_roc(y_true: np.ndarray, scores: np.ndarray, class_names: Sequence[str], path: Any,
             title: str = "ROC") -> Optional[Path]:
    """One-vs-rest ROC curves of each class to ``path`` (PNG).

    ``y_true (N,)`` class indices (multi-class) or ``(N, C)`` 0/1/-1 (multi-label).
    Returns None when no class has both positives and negatives.
    """
    y_true = np.asarray(y_true)
    fig, ax = plt.subplots(figsize=(5, 5))
    drawn = 0
    for c, name in enumerate(class_names):
        if y_true.ndim == 2:
            keep = y_true[:, c] >= 0
            y, s = y_true[keep, c], np.asarray(scores)[keep, c]
        else:
            y, s = (y_true == c).astype(int), np.asarray(scores)[:, c]
        if y.size == 0 or y.min() == y.max():
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.2, label=str(name))
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
    return Path(str(path))


def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], path: Any,
                   title: str = "Confusion matrix") -> Path:
    """Confusion matrix (rows: true, columns: predicted; counts) to ``path`` (PNG)."""
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(len(class_names)))
    size = max(4, 0.45 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), [str(c) for c in class_names], rotation=90, fontsize=7)
    ax.set_yticks(range(len(class_names)), [str(c) for c in class_names], fontsize=7)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
    return Path(str(path))


def plot_recall_at_k(curves: Mapping[str, np.ndarray], path: Any) -> Path:
    """Recall@k against k (log scale) of each ``{label: first_rank (Q,)}`` curve to ``path`` (PNG)."""
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, first in curves.items():
        first = np.asarray(first)
        if len(first) == 0:
            continue
        ks = np.arange(1, max(2, int(first.max())) + 1)
        ax.plot(ks, [(first <= k).mean() for k in ks], label=name)
    ax.set(xscale="log", xlabel="k", ylabel="Recall@k", ylim=(0, 1.02), title="Recall@k")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
    return Path(str(path))


def plot_rank_bars(metrics: Mapping[str, float], ranks: Sequence[str], path: Any) -> Path:
    """BIOSCAN top-1 accuracy per rank, seen/unseen × micro/macro bars, to ``path`` (PNG)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    w = 0.2
    x = np.arange(len(ranks))
    for i, (split, avg) in enumerate([(s, a) for s in ("seen", "unseen") for a in ("micro", "macro")]):
        vals = [metrics.get(f"{split}/{r}/{avg}", float("nan")) for r in ranks]
        ax.bar(x + (i - 1.5) * w, np.nan_to_num(vals), w, label=f"{split} {avg}")
    ax.set_xticks(x, ranks, fontsize=8)
    ax.set(ylabel="top-1 accuracy", ylim=(0, 1), title="BIOSCAN accuracy by rank")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
    return Path(str(path))


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4f}"
    return str(v)


def render_markdown(record: Mapping[str, Any], plots: Sequence[Path] = ()) -> str:
    """The human report of a record: header, metric table with CIs, plots."""
    lines = [f"# medfm evaluation: {record.get('task', '')}", ""]
    model = record.get("model") or {}
    man = record.get("manifest") or {}
    for key, val in (("model", model.get("dir")), ("model fingerprint", model.get("fingerprint")),
                     ("manifest", man.get("path")), ("manifest sha256", man.get("sha256")),
                     ("modality", record.get("modality")), ("n", record.get("n"))):
        if val is not None:
            lines.append(f"- **{key}**: `{val}`")
    for key, val in record.items():
        if key in ("task", "model", "manifest", "modality", "n", "metrics", "ci", "extra") or isinstance(val, (dict, list)):
            continue
        lines.append(f"- **{key}**: {_fmt(val)}")
    ci = record.get("ci") or {}
    chance = record.get("chance") or {}
    if chance:
        lines += ["", "| metric | value | 95% CI | chance |", "| --- | ---: | :---: | ---: |"]
    else:
        lines += ["", "| metric | value | 95% CI |", "| --- | ---: | :---: |"]
    for name, val in (record.get("metrics") or {}).items():
        c = ci.get(name)
        cs = f"{_fmt(c[0])} – {_fmt(c[1])}" if c else ""
        lines.append(f"| {name} | {_fmt(val)} | {cs} |" + (f" {_fmt(chance[name]) if name in chance else ''} |"
                                                            if chance else ""))
    if ci:
        lines += ["", f"Intervals: {record.get('ci_method', 'percentile bootstrap')}."]
    lines += _baseline_table(record)
    lines += clinical_sections(record)
    for p in plots:
        lines += ["", f"![{Path(p).stem}]({Path(p).name})"]
    return "\n".join(lines) + "\n"


def _baseline_table(record: Mapping[str, Any]) -> list:
    """"Model vs baseline" rows for every metric that has a ``baseline/<name>/`` twin."""
    base = record.get("baseline") or {}
    name = base.get("name")
    metrics, ci = record.get("metrics") or {}, record.get("ci") or {}
    prefix = f"baseline/{name}/"
    rows = [m for m in metrics if not m.startswith("baseline/") and prefix + m in metrics]
    if not name or not rows:
        return []

    def cell(m):
        c = ci.get(m)
        return _fmt(metrics.get(m)) + (f" [{_fmt(c[0])}, {_fmt(c[1])}]" if c else "")

    out = ["", f"## Model vs baseline `{name}` (same samples, same run)", "",
           f"Baseline: {', '.join(f'{k}={v}' for k, v in base.items() if not isinstance(v, (list, dict)))}.", "",
           f"| metric | model | {name} |", "| --- | ---: | ---: |"]
    out += [f"| {m} | {cell(m)} | {cell(prefix + m)} |" for m in rows]
    return out


def relative_to_folder(path: Any, folder: Path) -> Optional[str]:
    """``path`` relative to ``folder`` (POSIX separators), or ``None`` where none exists (another drive)."""
    if path in (None, ""):
        return None
    try:
        return Path(os.path.relpath(Path(str(path)).resolve(), folder.resolve())).as_posix()
    except ValueError:
        return None


def portable_record(record: Mapping[str, Any], folder: Path) -> Dict[str, Any]:
    """The record as written into ``folder``: ``model.dir`` and ``manifest.path`` relative to it,
    plus their ``name`` (so no absolute path of this machine is written)."""
    rec = dict(record)
    for key, field in (("model", "dir"), ("manifest", "path")):
        part = rec.get(key)
        if isinstance(part, Mapping) and part.get(field) not in (None, ""):
            part = dict(part)
            part.setdefault("name", Path(str(part[field])).name)
            part[field] = relative_to_folder(part[field], folder)
            rec[key] = part
    return rec


def write_evaluation(out_dir: Any, record: Dict[str, Any], plots: Sequence[Path] = ()) -> Dict[str, Path]:
    """Write ``results.json`` and ``report.md`` (linking ``plots`` that live in ``out_dir``)."""
    d = Path(str(out_dir))
    d.mkdir(parents=True, exist_ok=True)
    rec = to_jsonable(portable_record(record, d))
    rec["plots"] = [Path(p).name for p in plots if p is not None]
    (d / "results.json").write_text(json.dumps(rec, indent=2, allow_nan=False))
    (d / "report.md").write_text(render_markdown(rec, [p for p in plots if p is not None]))

    write_init_report_for((rec.get("model") or {}).get("fingerprint"), d / "init_report.json")
    return {"results": d / "results.json", "report": d / "report.md"}
