"""Report sections of the clinical additions (:mod:`.tasks_clinical`), rendered from a record's fields:
``calibration``, ``label_efficiency``, ``subgroups``, ``prompt_sensitivity`` and ``lead_sets``."""
from __future__ import annotations

import math
from typing import Any, List, Mapping

from .prompt_sets import sensitivity_markdown
from .subgroups import subgroup_markdown


def _f(v: Any, nd: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}f}"


def _with_ci(metrics: Mapping[str, Any], ci: Mapping[str, Any], key: str) -> str:
    c = ci.get(key)
    return _f(metrics.get(key)) + (f" [{_f(c[0])}, {_f(c[1])}]" if c and c[0] is not None else "")


def calibration_section(record: Mapping[str, Any]) -> List[str]:
    cal = record.get("calibration")
    if not cal:
        return []
    m, ci = record.get("metrics") or {}, record.get("ci") or {}
    pre = "" if cal.get("scores") in (None, "scores") else f"{cal['scores']}/"
    lines = ["", f"## Calibration ({cal.get('reported', 'test rows')})", "",
             f"ECE ({cal.get('ece_definition')}, {cal.get('n_bins')} bins): raw {_with_ci(m, ci, pre + 'calibration/ece')}"]
    if cal.get("temperature") is not None:
        lines[-1] += (f"; after temperature scaling (T = {cal['temperature']:.3f}, fitted on {cal.get('n_val')} "
                      f"validation rows) {_with_ci(m, ci, pre + 'calibration/ece_scaled')}.")
        lines += ["", f"Operating threshold chosen on validation ({cal.get('threshold_rule')}); test rates:", "",
                  "| class | threshold | sensitivity | specificity | PPV | NPV |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for cls, t in (cal.get("thresholds") or {}).items():
            cells = [_with_ci(m, ci, f"{pre}threshold/{cls}/{k}") for k in ("sensitivity", "specificity", "ppv", "npv")]
            lines.append(f"| {cls} | {_f(t)} | " + " | ".join(cells) + " |")
    else:
        lines[-1] += f". {cal.get('note', '')}"
    return lines


def curve_section(record: Mapping[str, Any]) -> List[str]:
    c = record.get("label_efficiency")
    if not c:
        return []
    metric, ns = c["metric"], c["ns"]
    lines = ["", f"## Label efficiency (test {metric}, mean over {c['seeds']} draws per n; {c.get('sampling')})", "",
             "| set | " + " | ".join(f"n={n}" for n in ns) + " |", "| --- |" + " ---: |" * len(ns)]
    for name, per in c["curves"].items():
        lines.append(f"| {name} | " + " | ".join(_f(v, 3) for v in per[metric]["mean"]) + " |")
    lines.append("")
    for name, x in c["crossover"].items():
        lines.append(f"- crossover, {name} vs {c.get('model', 'model')}: "
                     + (f"n = {x['n']} per class ({x['verdict']})" if x["n"] is not None else x["verdict"]))
    return lines


def lead_section(record: Mapping[str, Any]) -> List[str]:
    t = record.get("lead_sets")
    if not t:
        return []
    cols = sorted({k for row in t.values() for k in row["metrics"]})
    lines = ["", "## Partial inputs: ECG lead subsets (other leads absent)", "",
             "| leads | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
    for spec, row in t.items():
        lines.append(f"| {spec} ({', '.join(row['leads'])}) | " + " | ".join(
            _with_ci(row["metrics"], row["ci"], k) for k in cols) + " |")
    return lines


def clinical_sections(record: Mapping[str, Any]) -> List[str]:
    """Every section the record has material for, in a fixed order."""
    lines = calibration_section(record) + curve_section(record)
    sub = record.get("subgroups")
    if sub:
        lines += subgroup_markdown({k: v for k, v in sub.items() if isinstance(v, dict)}, sub.get("min_size", 0))
    ps = record.get("prompt_sensitivity")
    if ps:
        m = record.get("metrics") or {}
        ens = {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "macro_auprc") if k in m}
        lines += sensitivity_markdown(ps["per_set"], ens)
    return lines + lead_section(record)
