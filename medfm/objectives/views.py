"""View-contrastive objective (SimCLR): two random views of one sample are a positive pair.

The views come from the tower's embedder (``embedder.random_view(x, mask) -> (x', mask')``;
for DNA barcodes: a random crop and offset plus point mutations, see
``medfm.modalities.dna.KmerBagEmbedder``), so the objective itself knows nothing about a
modality. Loss: symmetric InfoNCE (:func:`.contrastive.clip_loss`, NT-Xent between the two
views, other samples of the batch — all ranks' in a distributed run — as negatives) at a
fixed temperature.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from medfm.errors import ConfigError
from medfm.registry import register_objective

from .contrastive import clip_loss, mean_over_modalities

__all__ = ["ViewsObjective"]


@register_objective("views")
class ViewsObjective(nn.Module):
    """SimCLR between two random views of every present sample of ``modalities``.

    Args:
        modalities: modalities to train (``None`` = every modality of the batch whose
            embedder has ``random_view``).
        temperature: fixed softmax temperature τ (SimCLR: 0.1).
        view: keyword arguments of ``random_view`` (e.g. ``{"crop": 0.8, "mutation": 0.02}``).

    Returns ``{"loss": mean over modalities, "<mod>": float}``.
    """

    def __init__(self, modalities: Optional[Sequence[str]] = None, temperature: float = 0.1,
                 view: Optional[Dict] = None):
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"views objective: temperature must be > 0, got {temperature}")
        self.modalities = None if modalities is None else list(modalities)
        self.log_scale = math.log(1.0 / float(temperature))
        self.view = dict(view or {})

    def forward(self, model: nn.Module, batch: Dict, cache: Optional[Dict] = None) -> Dict:
        def loss_of(mod: str, inp: Dict) -> Optional[torch.Tensor]:
            embedder = getattr(model.tower(mod), "embedder", None)
            if not hasattr(embedder, "random_view"):
                if self.modalities is None:
                    return None  # every present modality was asked for: this one has no views
                raise ConfigError(f"views objective: the {mod!r} tower has no random_view (e.g. dna with kmer_bag)")
            x, m = inp["x"], inp.get("mask")
            z1 = model.encode(mod, *embedder.random_view(x, m, **self.view))
            z2 = model.encode(mod, *embedder.random_view(x, m, **self.view))
            return clip_loss(z1.float(), z2.float(), torch.tensor(self.log_scale, device=z1.device))

        return mean_over_modalities(batch, self.modalities, loss_of, fallback=list(model.parameters())[:1])
