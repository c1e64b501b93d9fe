"""The masked-modelling objective: MAE for patch towers, MLM for token towers.

The masking itself (random per-sample masks, visible-token encoding, the light
decoder, per-patch normalised targets) lives in the model's towers; this module only
asks ``model.masked_loss`` for every modality present in the batch and averages.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import nn

from medfm.registry import register_objective

from .contrastive import zero_loss

__all__ = ["MaskedObjective"]


@register_objective("masked")
class MaskedObjective(nn.Module):
    """Mean of ``model.masked_loss(mod, x, mask=..., mask_ratio=...)["loss"]`` over modalities.

    Args:
        modalities: modalities to reconstruct; ``None`` = every modality with at least
            one present row in the batch.
        mask_ratio: overrides each tower's configured ratio when given.

    Called as ``objective(model, batch, cache)`` with the collated batch
    (``batch["inputs"][mod] = {"x": (n_present, ...), optional "mask": (n_present, L)}``).
    Returns ``{"loss": scalar, "<mod>": float, ...}``; a batch without any such
    modality gives a graph-connected 0 loss.
    """

    def __init__(self, modalities: Optional[Sequence[str]] = None, mask_ratio: Optional[float] = None):
        super().__init__()
        self.modalities = None if modalities is None else list(modalities)
        self.mask_ratio = mask_ratio

    def forward(self, model: nn.Module, batch: Dict, cache: Optional[Dict] = None) -> Dict:
        inputs = batch.get("inputs", {})
        names = list(inputs) if self.modalities is None else self.modalities
        losses, logs = [], {}
        for mod in names:
            inp = inputs.get(mod)
            if inp is None or inp["x"].shape[0] == 0:
                continue
            out = model.masked_loss(mod, inp["x"], mask=inp.get("mask"), mask_ratio=self.mask_ratio)
            losses.append(out["loss"])
            logs[mod] = float(out["loss"].detach())
        if losses:
            loss = torch.stack(losses).mean()
        else:
            loss = zero_loss(getattr(model, "logit_scale", None), *list(model.parameters())[:1])
        return {"loss": loss, **logs}
