"""Partial inputs at evaluation: re-embed an ECG with only some leads present (the others absent).

:func:`masked_leads` swaps the model's ECG adapter, for the duration of a ``with`` block, for a copy
whose :meth:`collate` zeroes the leads outside the subset and clears them in ``lead_mask`` — what
the adapter itself does for a lead a file lacks (absent leads are zeros after per-lead
standardisation). Derived limb leads are not re-derived from the kept ones: the model sees exactly
the subset, as a device that records only those leads would deliver it with ``derive_limb_leads``
off. Lead subsets are parsed by :func:`medfm.modalities.ecg_lead_sets.parse_lead_spec`.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List

import numpy as np
import torch

from medfm.errors import UsageError
from medfm.modalities.ecg_lead_sets import lead_names, parse_lead_spec


def mask_batch(batch: Dict[str, Any], keep: np.ndarray) -> Dict[str, Any]:
    """Zero the leads outside ``keep (12,)`` in ``batch["x"] (B, 12, T)``; clear them in the masks."""
    k = torch.as_tensor(np.asarray(keep, bool))
    x = batch["x"]
    if x.ndim != 3 or x.shape[1] != k.numel():
        raise UsageError(f"--leads needs (B, {k.numel()}, T) ECG batches, got shape {tuple(x.shape)}")
    batch = dict(batch)
    batch["x"] = x * k.to(x.dtype)[None, :, None]
    for key in ("lead_mask", "derived_mask"):
        if isinstance(batch.get(key), torch.Tensor):
            batch[key] = batch[key] & k[None, :]
    return batch


@contextmanager
def masked_leads(model: Any, modality: str, spec: str) -> Iterator[List[str]]:
    """``with masked_leads(model, "ecg", "limb") as kept:`` embeds with only those leads; yields their names."""
    keep = parse_lead_spec(spec)
    original = model.adapters[modality]
    if getattr(original, "name", modality) != "ecg":
        raise UsageError(f"--leads applies to ECG, but the {modality!r} modality is {original.name!r}")
    masked = copy.copy(original)
    masked.collate = lambda items: mask_batch(original.collate(items), keep)
    model.adapters[modality] = masked
    try:
        yield lead_names(keep)
    finally:
        model.adapters[modality] = original
