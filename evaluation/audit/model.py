"""``medfm audit model MODEL --manifest M``: membership inference, adversarial robustness, backdoor scan.

For every non-text modality of the model that the manifest pairs with a report (``text`` column):

* membership inference (:mod:`.membership`) over all rows with a split;
* PGD robustness (:mod:`.robustness`) on the held-out rows (splits other than ``train``; all rows when
  none): images at ε = 1/255 and 4/255 of the intensity range, ECG at 10 and 50 µV;
* a backdoor scan (:mod:`.backdoor`) for 2D image modalities, on the held-out rows, with the manifest's
  distinct reports as the candidate targets.

Every part is bounded by ``max_rows`` (drawn by ``seed``) so the audit of a demo-sized cohort stays in
minutes on a laptop CPU; the record holds every setting.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from medfm.data.manifest import is_missing, read_manifest
from medfm.errors import ConfigError
from medfm.evaluation.embed import load_model

from .backdoor import backdoor_scan
from .inputs import folder_name, load_pairs
from .membership import membership_audit
from .robustness import robustness_audit

__all__ = ["CHECKS", "audit_model"]

CHECKS = ("membership", "robustness", "backdoor")


def _prompts(path: Optional[str]):
    if not path:
        return None
    # deferred: the zero-shot protocol's prompt-set parser
    from medfm.config_files import load_data_file
    # deferred: as above
    from medfm.evaluation.zeroshot import parse_prompt_set

    return parse_prompt_set(load_data_file(Path(path), kind="yaml"), str(path))


def audit_model(model: Any, manifest: Any, *, modalities: Optional[Sequence[str]] = None, text_column: str = "text",
                text_modality: str = "text", label_column: Optional[str] = "label", prompts: Optional[str] = None,
                checks: Sequence[str] = CHECKS, image_budgets: Sequence[int] = (1, 4),
                ecg_budgets_uv: Sequence[float] = (10.0, 50.0), pgd_steps: int = 10, max_rows: int = 200,
                n_boot: int = 1000, membership_flag_above: float = 0.55, scan_sizes: Sequence[int] = (2, 4, 6, 8),
                scan_steps: int = 30, scan_flag_above: float = 0.7, scan_size: Optional[int] = None, max_targets: int = 16,
                scan_rows: int = 64,
                asr_goal: float = 0.8, seed: int = 0,
                num_threads: Optional[int] = None) -> Dict[str, Any]:
    """Audit a checkpoint folder (or a loaded model) on a manifest → the JSON-ready record (module docstring)."""
    t0 = time.perf_counter()
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        raise ConfigError(f"unknown audit check(s) {unknown}; known: {', '.join(CHECKS)}")
    if num_threads:
        torch.set_num_threads(int(num_threads))
    name = getattr(model, "name_or_path", None)
    if isinstance(model, (str, Path)):
        name = folder_name(model)
        model, _ = load_model(model)
    model.eval()
    model.requires_grad_(False)  # attacks take gradients with respect to inputs only
    torch.manual_seed(seed)
    df = read_manifest(manifest)
    if text_modality not in model.adapters or text_column not in df.columns:
        raise ConfigError(f"the model audit needs a {text_modality!r} tower and a {text_column!r} column")
    mods = list(modalities) if modalities else [m for m in model.adapters if m != text_modality and m in df.columns]
    if not mods:
        raise ConfigError(f"no modality of the model ({sorted(model.adapters)}) is a column of the manifest")
    ps = _prompts(prompts)
    held = [s for s in {str(v) for v in df.get("split", []) if not is_missing(v)} if s != "train"] or None
    rec: Dict[str, Any] = {"kind": "medfm-audit-model", "model": {"name": name or "model"},
                           "manifest": {"name": Path(str(manifest)).name, "sha256": df.attrs.get("sha256")},
                           "settings": {"checks": list(checks), "modalities": mods, "max_rows": max_rows, "seed": seed,
                                        "pgd": {"norm": "linf", "steps": pgd_steps, "step": "2.5 eps / steps",
                                                "image_eps": [f"{b}/255" for b in image_budgets],
                                                "ecg_uV": list(ecg_budgets_uv), "held_out_splits": held},
                                        "membership": {"n_boot": n_boot, "flag_above": membership_flag_above},
                                        "backdoor": {"sizes": list(scan_sizes), "steps": scan_steps, "scan_size": scan_size,
                                                     "max_targets": max_targets, "rows": scan_rows,
                                                     "asr_goal": asr_goal, "flag_above": scan_flag_above},
                                        "threads": torch.get_num_threads()},
                           "timings": {}}
    mem_all, rob_rows, scans = [], [], []
    for m in mods:
        if "membership" in checks:
            t = time.perf_counter()
            pairs = load_pairs(model, df, m, text_column=text_column, label_column=label_column,
                               max_rows=max_rows * 2, seed=seed)
            mem = membership_audit(model, pairs, n_boot=n_boot, seed=seed, flag_above=membership_flag_above,
                                   text_modality=text_modality)
            mem_all.append({"modality": m, **mem})
            rec["timings"][f"membership/{m}"] = round(time.perf_counter() - t, 2)
        if "robustness" in checks or "backdoor" in checks:
            pairs = load_pairs(model, df, m, text_column=text_column, label_column=label_column, splits=held,
                               max_rows=max_rows, seed=seed)
        if "robustness" in checks:
            t = time.perf_counter()
            budgets = [(float(b), f"{b:g} uV") for b in ecg_budgets_uv] if m == "ecg" else \
                [(b / 255.0, f"{b}/255") for b in image_budgets]
            rob_rows += robustness_audit(model, pairs, budgets, steps=pgd_steps, prompts=ps,
                                         text_modality=text_modality, seed=seed)
            rec["timings"][f"robustness/{m}"] = round(time.perf_counter() - t, 2)
        if "backdoor" in checks and pairs.x.ndim == 4:
            t = time.perf_counter()
            first: Dict[str, str] = {}
            for sid, txt in zip(df["id"], df[text_column]):
                if not is_missing(txt):
                    first.setdefault(str(txt), str(sid))
            cands = [(sid, txt) for txt, sid in first.items()]
            if len(cands) > max_targets:  # the most frequent reports: a planted target is repeated
                counts = df[text_column].value_counts()
                cands = sorted(cands, key=lambda c: -int(counts.get(c[1], 0)))[:max_targets]
            scan_pairs = pairs.select(np.arange(len(pairs.ids)) < scan_rows)
            scans.append({"modality": m, **backdoor_scan(model, scan_pairs, cands, size=scan_size, sizes=scan_sizes, steps=scan_steps,
                                                         max_targets=max_targets,
                                                         asr_goal=asr_goal, flag_above=scan_flag_above,
                                                         text_modality=text_modality, seed=seed)})
            rec["timings"][f"backdoor/{m}"] = round(time.perf_counter() - t, 2)
    if mem_all:
        rated = [x for x in mem_all if "auroc" in x]
        rec["membership"] = max(rated, key=lambda x: x["auroc"]) if rated else mem_all[0]
        rec["membership_per_modality"] = mem_all
    if rob_rows:
        rec["robustness"] = {"rows": rob_rows}
    if scans:
        rec["backdoor"] = max(scans, key=lambda x: x["suspicion"])
        rec["backdoor_per_modality"] = scans
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    return rec
