"""Membership inference: does the model tell its training patients from held-out ones?

Similarity attack (the contrastive analogue of a loss attack): a sample's score is the cosine
similarity of its own pair, ``cos(z_modality, z_report)``, and a patient's score the mean over their
samples. Contrastive training pulls the pairs it has seen together, so a model that memorised its
patients scores them higher. AUROC of members (``train`` split) vs non-members (the held-out splits),
with a percentile bootstrap interval that resamples patients within each group.

An AUROC near 0.5 is the claim to make; the audit flags the model when the interval's lower end
lies above ``flag_above`` (default 0.55).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from .inputs import Pairs, encode_texts

__all__ = ["membership_audit", "membership_auroc"]


def membership_auroc(member_scores: Sequence[float], nonmember_scores: Sequence[float], *, n_boot: int = 1000,
                     seed: int = 0) -> Dict[str, Any]:
    """AUROC of per-patient scores (members positive) and its 95 % percentile bootstrap interval
    (members and non-members resampled separately)."""
    m, n = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    y = np.r_[np.ones(len(m)), np.zeros(len(n))]
    auc = float(roc_auc_score(y, np.r_[m, n]))
    rng = np.random.default_rng(seed)
    reps = [float(roc_auc_score(y, np.r_[rng.choice(m, len(m)), rng.choice(n, len(n))])) for _ in range(n_boot)]
    return {"auroc": auc, "ci": [float(np.percentile(reps, 2.5)), float(np.percentile(reps, 97.5))],
            "n_boot": n_boot}


@torch.no_grad()
def membership_audit(model: Any, pairs: Pairs, *, member_split: str = "train", n_boot: int = 1000, seed: int = 0,
                     flag_above: float = 0.55, text_modality: str = "text", batch_size: int = 64) -> Dict[str, Any]:
    """The membership record of ``pairs`` (rows of every split): AUROC, interval, flag, counts."""
    zs = []
    for s in range(0, len(pairs.ids), batch_size):
        sl = slice(s, s + batch_size)
        zs.append(model.encode(pairs.modality, pairs.x[sl], None if pairs.mask is None else pairs.mask[sl]).float())
    z = torch.cat(zs)
    t = encode_texts(model, pairs.texts, text_modality)
    sim = (z * t).sum(-1).cpu().numpy()
    by_patient: Dict[str, List[float]] = defaultdict(list)
    member: Dict[str, bool] = {}
    for pid, split, v in zip(pairs.patients, pairs.splits, sim):
        if split is None:
            continue
        by_patient[pid].append(float(v))
        member[pid] = member.get(pid, False) or split == member_split
    mem = [np.mean(v) for p, v in by_patient.items() if member[p]]
    non = [np.mean(v) for p, v in by_patient.items() if not member[p]]
    if len(mem) < 2 or len(non) < 2:
        return {"attack": "pair cosine similarity", "skipped": f"needs >= 2 member and non-member patients, got "
                f"{len(mem)} and {len(non)}"}
    res = membership_auroc(mem, non, n_boot=n_boot, seed=seed)
    return {"attack": f"pair cosine similarity ({pairs.modality}-text), mean per patient", **res,
            "n_members": len(mem), "n_nonmembers": len(non), "member_split": member_split,
            "flag_above": flag_above, "flagged": bool(res["ci"][0] > flag_above),
            "mean_similarity": {"members": float(np.mean(mem)), "nonmembers": float(np.mean(non))}}
