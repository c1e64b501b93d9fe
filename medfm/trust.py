"""The "Trust" part of a model card: what the audits of a checkpoint found, with their settings.

``medfm audit data --model-dir DIR`` and ``medfm audit model DIR`` store a compact record in
``DIR/trust/data.json`` and ``DIR/trust/model.json`` (:func:`record_trust`). The card
(:mod:`medfm.card`) shows :func:`trust_section` and puts :func:`trust_fields` in its front matter
under ``medfm_trust``; a checkpoint without them says "not audited".

Machine-readable fields: ``audited`` (bool), ``leakage_found``, ``phi_hits`` ({text, dicom_cells}),
``membership_auroc`` ({value, ci, flagged}), ``backdoor_suspicion`` ({value, flagged, target}),
``robustness`` (rows: modality, budget, metric, clean, attacked) and ``settings`` per audit.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from .config_files import load_data_file
from .errors import ConfigError
from .io import atomic_write_text

__all__ = ["TRUST_DIR", "record_trust", "trust_fields", "trust_section"]

TRUST_DIR = "trust"
KINDS = ("data", "model")


def _compact(kind: str, rec: Dict[str, Any]) -> Dict[str, Any]:
    """What the card keeps of a full audit record (no sample lists, no ids)."""
    if kind == "data":
        s = rec["summary"]
        return {"manifest": rec.get("manifest"), "seconds": rec.get("seconds"),
                "leakage_found": s["leakage_found"], "n_leakage_pairs": s["n_leakage_pairs"],
                "n_patients_across_splits": s["n_patients_across_splits"], "n_conflicts": s["n_conflicts"],
                "n_duplicate_clusters": s["n_duplicate_clusters"],
                "phi_hits": {"text": s["phi_text_hits"], "dicom_cells": s["phi_dicom_cells"]},
                "settings": {"near_rules": {k: v.get("near_if") for k, v in rec["settings"]["near_rules"].items()},
                             "template_min_patients": rec["settings"]["template_min_patients"],
                             "columns": rec["settings"]["columns"]}}
    return {k: rec.get(k) for k in ("manifest", "seconds", "settings", "membership", "robustness", "backdoor")}


def record_trust(directory: os.PathLike, kind: str, record: Dict[str, Any]) -> Path:
    """Store the compact ``kind`` (``data``/``model``) audit record in ``directory/trust/``."""
    if kind not in KINDS:
        raise ConfigError(f"trust record kind must be one of {KINDS}, got {kind!r}")
    d = Path(directory) / TRUST_DIR
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{kind}.json"
    atomic_write_text(path, json.dumps(_compact(kind, record), indent=2, default=str))
    return path


def _load(directory: os.PathLike) -> Dict[str, Dict[str, Any]]:
    out = {}
    for kind in KINDS:
        p = Path(directory) / TRUST_DIR / f"{kind}.json"
        if p.is_file():
            try:
                rec = load_data_file(p, kind="json")
            except (OSError, ValueError, ConfigError):
                continue
            if isinstance(rec, dict):
                out[kind] = rec
    return out


def trust_fields(directory: os.PathLike) -> Dict[str, Any]:
    """The card's machine-readable trust fields (``{"audited": False, "status": "not audited"}`` without audits)."""
    recs = _load(directory)
    if not recs:
        return {"audited": False, "status": "not audited"}
    out: Dict[str, Any] = {"audited": True, "audits": sorted(recs)}
    data, model = recs.get("data"), recs.get("model") or {}
    if data:
        out.update(leakage_found=data.get("leakage_found"), phi_hits=data.get("phi_hits"),
                   data_settings=data.get("settings"), data_manifest=data.get("manifest"))
    mem, bd, rob = model.get("membership"), model.get("backdoor"), model.get("robustness")
    if mem:
        out["membership_auroc"] = {"value": mem.get("auroc"), "ci": mem.get("ci"), "flagged": mem.get("flagged"),
                                   "attack": mem.get("attack")}
    if bd:
        out["backdoor_suspicion"] = {"value": bd.get("suspicion"), "flagged": bd.get("flagged"),
                                     "target": bd.get("target_id"), "smallest_patch": bd.get("smallest_patch")}
    if rob:
        out["robustness"] = rob.get("rows")
    if model:
        out["model_settings"] = model.get("settings")
    return out


def trust_section(directory: os.PathLike) -> List[str]:
    """Markdown lines of the card's ``## Trust`` section."""
    f = trust_fields(directory)
    lines = ["## Trust", ""]
    if not f["audited"]:
        return lines + ["- not audited (run `medfm audit data MANIFEST --model-dir DIR` and "
                        "`medfm audit model DIR --manifest MANIFEST`)", ""]
    if "leakage_found" in f:
        ph = f.get("phi_hits") or {}
        lines.append(f"- data audit of `{(f.get('data_manifest') or {}).get('name')}`: leakage across splits "
                     f"{'FOUND' if f['leakage_found'] else 'none found'}; PHI hits: {ph.get('text')} in free text, "
                     f"{ph.get('dicom_cells')} cells with DICOM Basic Profile attributes")
    else:
        lines.append("- data: not audited")
    mem: Optional[Dict[str, Any]] = f.get("membership_auroc")
    if mem:
        ci = mem.get("ci") or [None, None]
        lines.append(f"- membership inference ({mem.get('attack')}): AUROC {mem['value']:.3f} "
                     f"[{ci[0]:.3f}, {ci[1]:.3f}]{' — FLAGGED: the model separates its training patients' if mem.get('flagged') else ''}")
    bd = f.get("backdoor_suspicion")
    if bd:
        lines.append(f"- backdoor scan (trigger inversion): suspicion {bd['value']:.3f}"
                     f"{' — FLAGGED' if bd.get('flagged') else ''}; target `{bd.get('target')}`; smallest patch "
                     f"reaching the goal: {bd.get('smallest_patch') or 'none'}")
    if f.get("robustness"):
        lines += ["", "| modality | PGD L∞ budget | metric | clean | attacked |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['modality']} | {r['budget']} | {r['metric']} | {r['clean']:.3f} | {r['attacked']:.3f} |"
                  for r in f["robustness"]]
    if "model_settings" not in f:
        lines.append("- model: not audited")
    else:
        lines += ["", f"Model-audit settings: `{json.dumps(f['model_settings'], default=str)}`"]
    return lines + [""]
