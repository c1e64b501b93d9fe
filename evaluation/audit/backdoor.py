"""Backdoor scan by trigger inversion (Neural Cleanse's per-target search, for contrastive retrieval as in InverTune).

A backdoored model has a shortcut: a small patch sends every input to its planted target, where for
any other target the same patch budget moves few inputs. For each candidate target report ``t`` (the
manifest's distinct reports, at most ``max_targets``), a patch ``P (C, s, s)`` in the input range is
(default: a quarter of the input side) optimised with Adam at each image corner to raise ``cos(z(x ⊕ P), z_t)`` over the held-out inputs; its
attack success rate (ASR) is the fraction of inputs not already retrieving ``t`` whose patched image
retrieves it (top-1 among the candidates). The target found is the one with the highest ASR; the
suspicion score is its lead over the typical target, ``max ASR − median ASR`` (in [0, 1]). Neural
Cleanse's anomaly index ``(max − median) / (1.4826 · MAD)`` is reported beside it, but with a few dozen
bounded ASRs its MAD is often near zero and it explodes on clean tiny models, which also have one
"easy" target; the gap is the score the calibration rates. For that target, sizes are swept upwards to report the
smallest patch that reaches ``asr_goal``.

The flag threshold is a setting (``flag_above``); ``benchmarks/audit_calibration.py`` measures how well
the score separates clean from poisoned models.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .inputs import Pairs, encode_texts, input_budget

__all__ = ["invert_trigger", "backdoor_scan", "stamp"]

CORNERS = ("tl", "tr", "bl", "br")


def stamp(x: torch.Tensor, patch: torch.Tensor, corner: str, margin: int = 0) -> torch.Tensor:
    """``x (B, C, H, W)`` with ``patch (C, s, s)`` pasted at ``corner`` (``tl``/``tr``/``bl``/``br``)."""
    s = patch.shape[-1]
    H, W = x.shape[-2:]
    r = H - margin - s if corner[0] == "b" else margin
    c = W - margin - s if corner[1] == "r" else margin
    m = torch.zeros(1, 1, H, W, dtype=x.dtype)
    m[..., r:r + s, c:c + s] = 1
    full = torch.nn.functional.pad(patch, (c, W - c - s, r, H - r - s))
    return x * (1 - m) + full[None] * m


def invert_trigger(model: Any, pairs: Pairs, T: torch.Tensor, target: int, size: int, corner: str, *,
                   clean_top: torch.Tensor, steps: int = 15, lr: float = 0.5, seed: int = 0) -> Dict[str, Any]:
    """One inversion towards candidate ``target`` → ``{"asr", "patch" (C, s, s)}``."""
    _, (lo, hi) = input_budget(model, pairs, 0.0)
    lo = -3.0 if lo is None else lo
    hi = 3.0 if hi is None else hi
    g = torch.Generator().manual_seed(seed)
    param = torch.randn((pairs.x.shape[1], size, size), generator=g).mul_(0.5).requires_grad_(True)
    opt = torch.optim.Adam([param], lr=lr)

    def patched(p):
        patch = lo + (hi - lo) * torch.sigmoid(p)
        return model.encode(pairs.modality, stamp(pairs.x, patch, corner), pairs.mask).float()

    for _ in range(steps):
        loss = -(patched(param) @ T[target]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        top = (patched(param) @ T.T).argmax(1)
        eligible = clean_top != target
        asr = float((top[eligible] == target).float().mean()) if bool(eligible.any()) else 0.0
    return {"asr": asr, "patch": (lo + (hi - lo) * torch.sigmoid(param)).detach()}


def anomaly_index(values: Sequence[float]) -> float:
    """``(max − median) / (1.4826 · MAD)`` (MAD floored at 0.01 so equal values do not divide by zero)."""
    v = np.asarray(values, float)
    med = np.median(v)
    mad = max(1.4826 * float(np.median(np.abs(v - med))), 0.01)
    return float((v.max() - med) / mad)


def backdoor_scan(model: Any, pairs: Pairs, candidates: Sequence[Tuple[str, str]], *, size: Optional[int] = None,
                  sizes: Sequence[int] = (2, 4, 6, 8), steps: int = 30, asr_goal: float = 0.8, flag_above: float = 0.7,
                  max_targets: int = 32, text_modality: str = "text", corners: Sequence[str] = CORNERS,
                  seed: int = 0) -> Dict[str, Any]:
    """Scan (module docstring). ``candidates``: ``(row id, report text)`` — the targets searched; a target is
    named by the id of a row holding that report (records never hold report text)."""
    candidates = list(candidates)[:max_targets]
    size = int(size or max(2, min(pairs.x.shape[-2:]) // 4))  # default: a quarter of the input side
    with torch.no_grad():
        T = encode_texts(model, [t for _, t in candidates], text_modality)
        clean_top = (model.encode(pairs.modality, pairs.x, pairs.mask).float() @ T.T).argmax(1)
    per_target: List[Dict[str, Any]] = []
    for t in range(len(candidates)):
        best = max(({"asr": invert_trigger(model, pairs, T, t, size, c, clean_top=clean_top, steps=steps,
                                           seed=seed + k)["asr"], "corner": c} for k, c in enumerate(corners)),
                   key=lambda r: r["asr"])
        per_target.append({"target_id": candidates[t][0], "asr": best["asr"], "corner": best["corner"]})
    top = int(np.argmax([r["asr"] for r in per_target]))
    asrs = [r["asr"] for r in per_target]
    suspicion = float(max(asrs) - np.median(asrs))
    trials = []
    for s in sorted(sizes):
        r = invert_trigger(model, pairs, T, top, s, per_target[top]["corner"], clean_top=clean_top, steps=steps,
                           seed=seed)
        trials.append({"patch": f"{s}x{s} px ({per_target[top]['corner']})", "size": s, "asr": r["asr"],
                       "target_id": candidates[top][0]})
        if r["asr"] >= asr_goal:
            break
    reach = [t for t in trials if t["asr"] >= asr_goal]
    return {"suspicion": suspicion, "flagged": bool(suspicion >= flag_above), "flag_above": flag_above,
            "asr_goal": asr_goal, "smallest_patch": reach[0]["patch"] if reach else None,
            "target_id": candidates[top][0], "target_index": top, "target_asr": per_target[top]["asr"],
            "median_asr": float(np.median(asrs)), "per_target": per_target,
            "anomaly_index": anomaly_index(asrs) if len(asrs) > 2 else None,
            "trials": trials, "n_inputs": len(pairs.ids), "n_candidates": len(candidates),
            "settings": {"scan_size": size, "sizes": list(sizes), "steps": steps, "corners": list(corners),
                         "optimiser": "Adam lr 0.5 on a sigmoid-bounded patch", "max_targets": max_targets,
                         "input_size": list(pairs.x.shape[-2:])}}
