"""Audit records on disk: ``<name>.json`` (the record) and ``<name>.md`` (a human summary).

Records hold manifest sample and patient ids, counts, settings and metrics; never report text,
header values or paths of the machine (the manifest by name and sha256).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List

from medfm.io import atomic_write_text

__all__ = ["data_markdown", "model_markdown", "write_record"]


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return None if not math.isfinite(v) else v
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def write_record(record: Dict[str, Any], out_dir: Any, name: str, markdown: str) -> Path:
    """Write ``out_dir/name.json`` and ``out_dir/name.md``; returns the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    atomic_write_text(path, json.dumps(_clean(record), indent=2, allow_nan=False))
    atomic_write_text(out / f"{name}.md", markdown)
    return path


def data_markdown(rec: Dict[str, Any]) -> str:
    """The Markdown summary of a ``medfm audit data`` record."""
    s, man = rec["summary"], rec["manifest"]
    lines: List[str] = [f"# Data audit: {man['name']}", "",
                        f"manifest sha256 `{man['sha256']}`, {man['rows']} rows, {rec['seconds']} s", "",
                        "## Summary", "", "| check | result |", "| --- | --- |",
                        f"| leakage across splits | {'**FOUND**' if s['leakage_found'] else 'none found'} "
                        f"({s['n_leakage_pairs']} duplicate pairs, {s['n_patients_across_splits']} patients in several splits) |",
                        f"| duplicate clusters | {s['n_duplicate_clusters']} |",
                        f"| conflicting labels/reports | {s['n_conflicts']} |",
                        f"| PHI in free text | {s['phi_text_hits']} hits |",
                        f"| PHI in DICOM headers | {s['phi_dicom_cells']} cells |",
                        f"| unreadable cells | {s['n_skipped']} |", "", "## Leakage candidates", ""]
    pairs = rec["leakage"]["pairs"]
    if pairs:
        lines += ["| column | ids | patient ids | splits | match | distance |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {p['column']} | {' / '.join(p['ids'])} | {' / '.join(p['patient_ids'])} | "
                  f"{' / '.join(p['splits'])} | {p['match']} | {p['distance']} |" for p in pairs[:50]]
    for p in rec["leakage"]["patients_across_splits"][:50]:
        lines.append(f"- patient `{p['patient_id']}` in splits {', '.join(p['splits'])}")
    if not pairs and not rec["leakage"]["patients_across_splits"]:
        lines.append("none")
    lines += ["", "## Duplicates per column", "", "| column | rule | read | clusters (exact) | shared content |",
              "| --- | --- | --- | --- | --- |"]
    for col, d in rec["duplicates"].items():
        rule = (d.get("rule") or {}).get("near_if", "")
        lines.append(f"| {col} | {rule} | {d['n_read']} | {d.get('n_clusters', 0)} ({d.get('n_exact_clusters', 0)}) | "
                     f"{d.get('n_shared_content_clusters', 0)} |")
    lines += ["", "## Conflicts", ""]
    for c in rec["conflicts"][:50]:
        what = f"labels {c['label_column']}: {', '.join(c['values'])}" if "label_column" in c else \
            f"{c['n_distinct_reports']} different reports in {c['paired_column']}"
        lines.append(f"- {c['column']} {', '.join(c['ids'][:6])}: {what}")
    if not rec["conflicts"]:
        lines.append("none")
    lines += ["", "## PHI (counts; values never shown)", ""]
    for col, c in rec["phi"]["text"]["columns"].items():
        ex = "; ".join(f"{e['id']} {e['redacted']} at {e['span'][0]}–{e['span'][1]}" for e in c["examples"])
        lines.append(f"- text `{col}`: {c['cells']} cells, hits {json.dumps(c['hits'])}; e.g. {ex}")
    for col, c in rec["phi"]["dicom"]["columns"].items():
        top = ", ".join(f"{k} ({v})" for k, v in list(c["attribute_counts"].items())[:12])
        lines.append(f"- DICOM `{col}`: {c['files_with_phi']}/{c['dicom_files']} files with Basic Profile attributes; {top}")
    if not rec["phi"]["text"]["columns"] and not rec["phi"]["dicom"]["columns"]:
        lines.append("none found")
    lines += ["", "## Balance", ""]
    for group, table in rec["balance"].items():
        lines += [f"### by {group}", "", "| group | rows | patients | modalities | labels |", "| --- | --- | --- | --- | --- |"]
        for key, b in table.items():
            lines.append(f"| {key} | {b['rows']} | {b['patients']} | {json.dumps(b['modalities'])} | {json.dumps(b['labels'])} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def model_markdown(rec: Dict[str, Any]) -> str:
    """The Markdown summary of a ``medfm audit model`` record."""
    lines = [f"# Model audit: {rec['model']['name']}", "", f"{rec['seconds']} s; settings `{json.dumps(rec['settings'])}`", ""]
    mem = rec.get("membership")
    if mem:
        ci = mem.get("ci") or [None, None]
        lines += ["## Membership inference", "",
                  f"AUROC {mem['auroc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] ({mem['attack']}, {mem['n_members']} train vs "
                  f"{mem['n_nonmembers']} held-out patients); {'**flagged**' if mem['flagged'] else 'not flagged'} "
                  f"(flag when the interval's lower end > {mem['flag_above']})", ""]
    rob = rec.get("robustness")
    if rob:
        lines += ["## Adversarial robustness (PGD, L∞)", "", "| modality | budget | metric | clean | attacked |",
                  "| --- | --- | --- | --- | --- |"]
        for r in rob["rows"]:
            lines.append(f"| {r['modality']} | {r['budget']} | {r['metric']} | {r['clean']:.3f} | {r['attacked']:.3f} |")
        lines.append("")
    bd = rec.get("backdoor")
    if bd:
        lines += ["## Backdoor scan (trigger inversion)", "",
                  f"suspicion {bd['suspicion']:.3f} ({'**flagged**' if bd['flagged'] else 'not flagged'}); target "
                  f"`{bd['target_id']}`; smallest patch reaching ASR ≥ {bd['asr_goal']}: "
                  f"{bd['smallest_patch'] or 'none tried reached it'}", "",
                  "| patch | attack success | target |", "| --- | --- | --- |"]
        lines += [f"| {t['patch']} | {t['asr']:.3f} | {t['target_id']} |" for t in bd["trials"]]
        lines.append("")
    return "\n".join(lines) + "\n"
