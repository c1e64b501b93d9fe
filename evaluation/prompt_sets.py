"""Prompt sensitivity: zero-shot with several prompt sets, each metric's mean and spread across them,
and their ensemble.

``medfm zeroshot --prompts A.yaml --prompts B.yaml`` or ``--prompts FOLDER`` (every ``*.yaml`` in it,
sorted) or a shipped folder name (``ptbxl_superclasses``: ``configs/prompts/sets/ptbxl_superclasses/``).
All sets must describe the same task (multi-class or multi-label) and the same classes; the
**ensemble** set holds, per class, every distinct prompt of every set (open_clip-style averaging of
their normalised embeddings), and is the run's headline result. The spread is over the individual
sets: mean, SD (ddof 1), min and max of each summary metric.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from medfm.configs import config_path
from medfm.errors import ConfigError, DataError

from .zeroshot import PromptSet, load_prompt_set

SUMMARY = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "macro_auprc")
SETS_DIR = "prompts/sets"


def _folder(spec: str) -> Path:
    p = Path(spec)
    if p.is_dir():
        return p
    shipped = config_path(f"{SETS_DIR}/{spec}")
    return shipped if shipped.is_dir() else p


def load_prompt_sets(specs: Sequence[Any]) -> List[PromptSet]:
    """Prompt sets from files, folders or shipped names; the classes of every set in the first's order.

    Raises:
        ConfigError: sets of different tasks or classes, two sets with one name, an empty folder.
    """
    paths: List[Any] = []
    for spec in specs:
        d = _folder(str(spec))
        if d.is_dir():
            found = sorted(list(d.glob("*.yaml")) + list(d.glob("*.yml")))
            if not found:
                raise DataError("prompt folder holds no *.yaml prompt set", source=str(d))
            paths.extend(found)
        else:
            paths.append(spec)
    sets = [load_prompt_set(p) for p in paths]
    first = sets[0]
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ConfigError(f"prompt sets share a name ({names}); give each set its own 'name'")
    for s, p in zip(sets[1:], paths[1:]):
        if s.task != first.task or sorted(s.classes) != sorted(first.classes):
            raise ConfigError(f"{p}: prompt set {s.name!r} ({s.task}, classes {sorted(s.classes)}) does not match "
                              f"{first.name!r} ({first.task}, classes {sorted(first.classes)})")
        s.classes = list(first.classes)
    return sets


def ensemble_set(sets: Sequence[PromptSet], name: str = "ensemble") -> PromptSet:
    """One set whose class prompts are the distinct prompts of every set, in order of appearance."""
    first = sets[0]

    def union(part: str, cls: str) -> List[str]:
        return list(dict.fromkeys(p for s in sets for p in getattr(s, part).get(cls, [])))
    return PromptSet(name, first.task, list(first.classes), {c: union("positive", c) for c in first.classes},
                     {c: union("negative", c) for c in first.classes} if first.task == "multilabel" else {})


def spread(per_set: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """``{"prompts/spread/<metric>/<mean|sd|min|max>"}`` over the sets' summary metrics."""
    out: Dict[str, float] = {}
    for m in SUMMARY:
        vals = np.array([v[m] for v in per_set.values() if m in v and v[m] is not None], dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        if not vals.size:
            continue
        out.update({f"prompts/spread/{m}/mean": float(vals.mean()),
                    f"prompts/spread/{m}/sd": float(vals.std(ddof=1)) if vals.size > 1 else float("nan"),
                    f"prompts/spread/{m}/min": float(vals.min()), f"prompts/spread/{m}/max": float(vals.max())})
    return out


def sensitivity_markdown(per_set: Dict[str, Dict[str, float]], ensemble: Dict[str, float]) -> List[str]:
    """Report lines: one row per prompt set, the ensemble last."""
    cols = [m for m in SUMMARY if any(m in v for v in per_set.values())]
    lines = ["", "## Prompt sensitivity (each prompt set alone, then their ensemble)", "",
             "| prompt set | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
    for name, v in list(per_set.items()) + [("**ensemble**", ensemble)]:
        lines.append(f"| {name} | " + " | ".join("n/a" if v.get(m) is None or np.isnan(v[m]) else f"{v[m]:.4f}"
                                                   for m in cols) + " |")
    sp = spread(per_set)
    if sp:
        lines += ["", "Across sets: " + "; ".join(
            f"{m} {sp[f'prompts/spread/{m}/mean']:.4f} ± {sp[f'prompts/spread/{m}/sd']:.4f} "
            f"(range {sp[f'prompts/spread/{m}/min']:.4f}–{sp[f'prompts/spread/{m}/max']:.4f})"
            for m in cols if f"prompts/spread/{m}/mean" in sp) + " (mean ± SD)."]
    return lines
