"""``medfm audit data``: a cohort manifest checked before training.

:func:`audit_manifest` reads every modality cell through its adapter's reader (``adapter.read``),
fingerprints the decoded sample (:mod:`medfm.modalities.fingerprints`) and reports:

* **duplicates**: clusters of exact (same decoded content) or near (the modality's stated distance)
  duplicates, and for each whether it stays in one split;
* **leakage**: a duplicate pair in two different splits under two different patient ids (listed with
  both sample and patient ids), and patients whose samples sit in more than one split;
* **conflicts**: one sample (cluster) paired with different labels, or an image/signal paired with
  different reports;
* **PHI**: free-text cells (:mod:`medfm.modalities.phi_text`) and the headers of the DICOM files the
  manifest points at (:mod:`medfm.modalities.dicom_profile`): counts per column and attribute, examples
  as row id + kind + character span, never the text;
* **balance**: rows, patients, label values and modalities present per split and per site column.

Shared content — one DNA haplotype or one templated report in ``template_min_patients`` or more
patients — is counted, not called a leak (see :data:`~medfm.modalities.fingerprints.SHARED_CONTENT_IS_NATURAL`).
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd

from medfm.data.confine import confinement
from medfm.data.manifest import is_missing, read_manifest
from medfm.errors import MedFMError, UnusableDataError
from medfm.modalities.dicom_profile import dicom_files, header_phi
from medfm.modalities.fingerprints import NEAR_RULES, SHARED_CONTENT_IS_NATURAL, Fingerprint, fingerprint, near_pairs
from medfm.modalities.phi_text import find_phi
from medfm.registry import get_modality, list_modalities
from tqdm.auto import tqdm

__all__ = ["LABEL_COLUMNS", "SITE_COLUMNS", "audit_manifest"]

#: label columns used when none is given: these names, and any column starting with ``label``
LABEL_COLUMNS = ("label", "labels", "diagnosis", "dx", "class")
#: site columns used when none is given
SITE_COLUMNS = ("site", "source", "hospital", "center", "centre", "institution", "scanner")
_ID_COLUMNS = ("id", "patient_id", "split")
_MAX_LISTED = 200


class _Clusters:
    """Union-find over row positions."""

    def __init__(self) -> None:
        self.parent: Dict[int, int] = {}

    def find(self, i: int) -> int:
        self.parent.setdefault(i, i)
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def groups(self) -> List[List[int]]:
        out: Dict[int, List[int]] = defaultdict(list)
        for i in self.parent:
            out[self.find(i)].append(i)
        return [sorted(g) for g in out.values() if len(g) > 1]


def _resolve(value: Any, adapter, base_dir: Optional[Path], conf, column: str) -> Any:
    if adapter.input_kind != "path" or not isinstance(value, str):
        return value
    p = Path(value).expanduser()
    full = p if p.is_absolute() or base_dir is None else base_dir / p
    if conf is not None:
        conf.check(full, value, column)
    return str(full)


def _modality_columns(df: pd.DataFrame, columns: Optional[Dict[str, str]]) -> Dict[str, str]:
    """column → adapter name: the given mapping, else every column named like a registered adapter."""
    if columns:
        return dict(columns)
    known = set(list_modalities())
    return {c: c for c in df.columns if c in known}


def _str(v: Any) -> Optional[str]:
    return None if is_missing(v) else str(v)


def _read_cells(df: pd.DataFrame, mod_cols: Dict[str, str], progress: bool) -> Tuple[Dict[str, Dict[int, Fingerprint]],
                                                                                   Dict[str, Dict[int, str]], List[Dict]]:
    """Fingerprints per column ``{column: {row: Fingerprint}}``, resolved DICOM-capable paths, and skips."""

    base = Path(df.attrs["base_dir"]) if df.attrs.get("base_dir") else None
    adapters = {c: get_modality(a) for c, a in mod_cols.items()}
    rel = any(isinstance(v, str) and not Path(v).expanduser().is_absolute()
              for c, a in adapters.items() if a.input_kind == "path" for v in df[c] if not is_missing(v))
    conf = confinement(base_dir=base, recorded=df.attrs.get("data_roots") or (), has_relative_cells=rel)
    fps: Dict[str, Dict[int, Fingerprint]] = {c: {} for c in mod_cols}
    paths: Dict[str, Dict[int, str]] = {c: {} for c in mod_cols}
    skips: List[Dict] = []
    records = df.to_dict("records")
    bar = tqdm(total=len(records) * len(mod_cols), desc="audit read", unit="cell", disable=not progress)
    for col, adapter in adapters.items():
        for i, row in enumerate(records):
            bar.update(1)
            value = adapter.source_from_row(row, col)
            if is_missing(value):
                continue
            try:
                src = _resolve(value, adapter, base, conf, col)
                rec = adapter.read(src, sample_id=row["id"], row=row)
            except (MedFMError, OSError, ValueError) as e:
                reason = getattr(e, "reason", None) or type(e).__name__
                skips.append({"id": row["id"], "column": col, "reason": str(reason)[:200]})
                continue
            fps[col][i] = fingerprint(mod_cols[col], rec.data)
            if adapter.input_kind == "path":
                paths[col][i] = src
    bar.close()
    return fps, paths, skips


def _duplicates(df: pd.DataFrame, col: str, fps: Dict[int, Fingerprint], label_cols: Sequence[str],
                text_cols: Sequence[str], template_min_patients: int) -> Dict[str, Any]:
    rows = sorted(fps)
    if not rows:
        return {"n_read": 0, "clusters": [], "leakage_pairs": [], "conflicts": []}
    kind = fps[rows[0]].kind
    pairs = near_pairs([fps[r] for r in rows])
    uf = _Clusters()
    dist: Dict[Tuple[int, int], float] = {}
    for a, b, d in pairs:
        i, j = rows[a], rows[b]
        uf.union(i, j)
        dist[(i, j)] = d
    ids, pids, splits = list(df["id"]), list(df["patient_id"]), [_str(s) for s in df.get("split", [None] * len(df))]
    clusters, leaks, conflicts, n_shared = [], [], [], 0
    for g in uf.groups():
        patients = sorted({pids[i] for i in g})
        exact = len({fps[i].exact for i in g}) == 1
        shared = kind in SHARED_CONTENT_IS_NATURAL and len(patients) >= template_min_patients
        n_shared += shared
        c = {"ids": [ids[i] for i in g][:20], "n": len(g), "patients": patients[:20], "n_patients": len(patients),
             "splits": sorted({s for s in (splits[i] for i in g) if s}), "exact": exact,
             "shared_content": bool(shared)}
        clusters.append(c)
        if shared:
            continue
        for n, i in enumerate(g):
            for j in g[n + 1:]:
                if splits[i] and splits[j] and splits[i] != splits[j] and pids[i] != pids[j]:
                    same = fps[i].exact == fps[j].exact
                    leaks.append({"column": col, "ids": [ids[i], ids[j]], "patient_ids": [pids[i], pids[j]],
                                  "splits": [splits[i], splits[j]], "match": "exact" if same else "near",
                                  "distance": None if (i, j) not in dist else round(dist[(i, j)], 4)})
        for lc in label_cols:
            vals = sorted({str(df.at[i, lc]) for i in g if not is_missing(df.at[i, lc])})
            if len(vals) > 1:
                conflicts.append({"column": col, "label_column": lc, "ids": c["ids"], "values": vals})
        if kind != "text":
            for tc in text_cols:
                texts = {fingerprint("text", str(df.at[i, tc])).near for i in g if not is_missing(df.at[i, tc])}
                if len(texts) > 1:
                    conflicts.append({"column": col, "paired_column": tc, "ids": c["ids"],
                                      "n_distinct_reports": len(texts)})
    return {"kind": kind, "rule": NEAR_RULES[kind], "n_read": len(rows), "n_clusters": len(clusters),
            "n_duplicate_rows": sum(c["n"] for c in clusters), "n_exact_clusters": sum(c["exact"] for c in clusters),
            "n_shared_content_clusters": n_shared, "clusters": clusters[:_MAX_LISTED], "leakage_pairs": leaks,
            "conflicts": conflicts}


def _phi_text(df: pd.DataFrame, columns: Sequence[str]) -> Dict[str, Any]:
    per_col: Dict[str, Dict[str, Any]] = {}
    for col in columns:
        counts: Counter = Counter()
        cells, examples = 0, []
        for sid, v in zip(df["id"], df[col]):
            if not isinstance(v, str):
                continue
            spans = find_phi(v)
            if not spans:
                continue
            cells += 1
            for kind, s, e in spans:
                counts[kind] += 1
                if len(examples) < 5:
                    examples.append({"id": sid, "kind": kind, "span": [s, e], "redacted": f"[{kind.upper()}]"})
        if cells:
            per_col[col] = {"cells": cells, "hits": dict(counts), "examples": examples}
    return {"columns": per_col, "n_hits": sum(sum(c["hits"].values()) for c in per_col.values()),
            "n_cells": sum(c["cells"] for c in per_col.values())}


def _phi_dicom(df: pd.DataFrame, paths: Dict[str, Dict[int, str]]) -> Dict[str, Any]:
    per_col: Dict[str, Dict[str, Any]] = {}
    for col, by_row in paths.items():
        attrs: Counter = Counter()
        cats: Counter = Counter()
        files = cells = uids = phi_files = 0
        examples = []
        for i, p in by_row.items():
            hit_cell = False
            for f in dicom_files(p):
                try:
                    found = header_phi(f)
                except Exception:  # a header pydicom cannot parse is the reader's business, not PHI
                    continue
                files += 1
                uids += bool(found.pop("uids", None))
                phi_files += bool(found)
                for cat, kws in found.items():
                    cats[cat] += 1
                    attrs.update(kws)
                if found and not hit_cell:
                    hit_cell = True
                    if len(examples) < 5:
                        examples.append({"id": df.at[i, "id"], "attributes": sorted(k for v in found.values() for k in v)})
            cells += hit_cell
        if files:
            per_col[col] = {"dicom_files": files, "files_with_phi": phi_files, "cells_with_phi": cells, "files_with_uids": uids,
                            "files_per_category": dict(cats), "attribute_counts": dict(attrs.most_common()),
                            "examples": examples}
    return {"profile": "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile", "columns": per_col,
            "n_files_with_phi": sum(c["files_with_phi"] for c in per_col.values()),
            "n_cells": sum(c["cells_with_phi"] for c in per_col.values())}


def _balance(df: pd.DataFrame, label_cols: Sequence[str], mod_cols: Sequence[str], group_col: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    keys = [_str(v) or "(none)" for v in df[group_col]] if group_col in df.columns else ["(all)"] * len(df)
    for key in sorted(set(keys)):
        sub = df[[k == key for k in keys]]
        out[key] = {"rows": int(len(sub)), "patients": int(sub["patient_id"].nunique()),
                    "modalities": {m: int(sum(not is_missing(v) for v in sub[m])) for m in mod_cols},
                    "labels": {lc: dict(Counter(_str(v) or "(none)" for v in sub[lc]).most_common()) for lc in label_cols}}
    return out


def audit_manifest(manifest: Any, *, columns: Optional[Dict[str, str]] = None, label_columns: Optional[Sequence[str]] = None,
                   site_columns: Optional[Sequence[str]] = None, template_min_patients: int = 2,
                   progress: bool = False) -> Dict[str, Any]:
    """Audit one manifest (see module docstring) → the JSON-ready record.

    Args:
        manifest: path of the manifest (CSV/TSV/JSONL/Parquet).
        columns: ``{column: adapter}``; default every column named like a registered adapter.
        label_columns / site_columns: default :data:`LABEL_COLUMNS` / :data:`SITE_COLUMNS` found in the manifest.
        template_min_patients: a text or sequence shared by this many patients is shared content, not a leak.
    Returns:
        ``{"manifest", "settings", "duplicates", "leakage", "conflicts", "phi", "balance", "skipped",
        "summary", "seconds"}``; ``summary["leakage_found"]`` decides the exit code of the command.
    """
    t0 = time.perf_counter()
    df = read_manifest(manifest)
    mod_cols = _modality_columns(df, columns)
    labels = list(label_columns) if label_columns is not None else \
        [c for c in df.columns if c in LABEL_COLUMNS or (c.startswith("label") and c not in mod_cols)]
    sites = list(site_columns) if site_columns is not None else [c for c in df.columns if c in SITE_COLUMNS]
    text_cols = [c for c, a in mod_cols.items() if a == "text"]
    fps, paths, skips = _read_cells(df, mod_cols, progress)
    if not any(fps.get(c) for c in mod_cols):  # an audit that read nothing says nothing: not a pass
        raise UnusableDataError(
            f"nothing to audit: no cell of the modality columns {sorted(mod_cols)} could be read "
            f"({len(df)} rows, {len(skips)} unreadable cells)" if mod_cols else
            f"nothing to audit: no column is named like a modality (give --column COLUMN=ADAPTER)",
            source=Path(str(manifest)).name)
    dups = {c: _duplicates(df, c, fps[c], labels, [t for t in text_cols if t != c], template_min_patients)
            for c in mod_cols}
    leaks = [p for d in dups.values() for p in d.pop("leakage_pairs")]
    conflicts = [c for d in dups.values() for c in d.pop("conflicts")]
    split = df["split"] if "split" in df.columns else pd.Series([None] * len(df))
    by_patient: Dict[str, set] = defaultdict(set)
    for pid, s in zip(df["patient_id"], split):
        if _str(s):
            by_patient[pid].add(str(s))
    across = [{"patient_id": p, "splits": sorted(s)} for p, s in sorted(by_patient.items()) if len(s) > 1]
    free_text = [c for c in df.columns if c not in _ID_COLUMNS and c not in labels and c not in sites
                 and (c not in mod_cols or get_modality(mod_cols[c]).input_kind == "value")]
    phi = {"text": _phi_text(df, free_text), "dicom": _phi_dicom(df, paths)}
    summary = {"rows": int(len(df)), "leakage_found": bool(leaks or across), "n_leakage_pairs": len(leaks),
               "n_patients_across_splits": len(across), "n_conflicts": len(conflicts),
               "n_duplicate_clusters": sum(d.get("n_clusters", 0) for d in dups.values()),
               "phi_text_hits": phi["text"]["n_hits"], "phi_dicom_cells": phi["dicom"]["n_cells"],
               "n_skipped": len(skips)}
    return {"kind": "medfm-audit-data", "manifest": {"name": Path(str(manifest)).name, "sha256": df.attrs.get("sha256"),
                                                     "rows": int(len(df))},
            "settings": {"columns": mod_cols, "label_columns": labels, "site_columns": sites,
                         "template_min_patients": template_min_patients, "near_rules": NEAR_RULES,
                         "free_text_columns": free_text},
            "summary": summary, "duplicates": dups,
            "leakage": {"pairs": leaks[:_MAX_LISTED], "n_pairs": len(leaks), "patients_across_splits": across[:_MAX_LISTED]},
            "conflicts": conflicts[:_MAX_LISTED], "phi": phi,
            "balance": {"split": _balance(df, labels, list(mod_cols), "split"),
                        **{f"site:{s}": _balance(df, labels, list(mod_cols), s) for s in sites}},
            "skipped": skips[:_MAX_LISTED], "seconds": round(time.perf_counter() - t0, 2)}
