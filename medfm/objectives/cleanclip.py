"""CleanCLIP (Bansal et al., ICCV 2023): multimodal contrastive loss + a unimodal self-supervised loss per modality.

Fine-tuning a (possibly poisoned) contrastive model with

    loss = w_clip · CLIP(z_a, z_b)  +  w_ssl · mean_m SimCLR(view₁(x_m), view₂(x_m))

weakens the spurious link a backdoor trigger forms between a patch and one report: each modality
must also embed two random views of itself alike, on its own. Views:

* a tower whose embedder has ``random_view`` (DNA k-mer bags) uses it;
* float inputs ``(B, C, *spatial)`` (images, volumes, ECGs): a random crop of ``crop`` of each spatial
  extent, resized back (``F.interpolate``), random flips of the last axis for 2D/3D images
  (``flip``), and Gaussian noise of ``noise`` × the batch's std;
* integer token inputs ``(B, L)`` with a ``(B, L)`` mask (text, k-mers): a fraction ``token_drop`` of the
  tokens (never the first) masked out.

Config: ``{name: cleanclip, clip_weight: 1.0, ssl_weight: 1.0, temperature: 0.1, crop: 0.8, flip: true,
noise: 0.05, token_drop: 0.15, modalities: null, mode: pairs}``.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from medfm.errors import ConfigError
from medfm.registry import register_objective

from .composite import ClipObjective
from .contrastive import clip_loss, mean_over_modalities

__all__ = ["CleanClipObjective", "random_view"]


def random_view(x: torch.Tensor, mask: Optional[torch.Tensor], *, crop: float = 0.8, flip: bool = True,
                noise: float = 0.05, token_drop: float = 0.15,
                generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One random view of a batch (see module docstring). ``x``: ``(B, C, *spatial)`` float or ``(B, L)`` ids."""
    if not torch.is_floating_point(x):
        if mask is None:
            return x, mask
        keep = torch.rand(mask.shape, device=mask.device, generator=generator) >= token_drop
        keep[:, 0] = True
        return x, mask.bool() & keep
    spatial = x.shape[2:]
    out = x
    if spatial and crop < 1.0:
        sizes = [max(1, int(round(s * crop))) for s in spatial]
        starts = [int(torch.randint(0, s - c + 1, (1,), generator=generator)) for s, c in zip(spatial, sizes)]
        idx = tuple(slice(st, st + c) for st, c in zip(starts, sizes))
        out = out[(slice(None), slice(None)) + idx]
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}.get(len(spatial))
        out = F.interpolate(out, size=tuple(spatial), mode=mode, align_corners=False) if mode else x
    if flip and len(spatial) >= 2 and bool(torch.rand(1, generator=generator) < 0.5):
        out = out.flip(-1)
    if noise > 0:
        out = out + noise * out.detach().std().clamp_min(1e-6) * torch.randn(out.shape, device=out.device,
                                                                           generator=generator)
    return out, mask


@register_objective("cleanclip")
class CleanClipObjective(nn.Module):
    """``clip_weight · CLIP + ssl_weight · mean over modalities of SimCLR(two views)`` (module docstring).

    Args:
        clip_weight, ssl_weight: weights of the two terms (CleanCLIP: 1 and 1).
        temperature: fixed temperature of the unimodal InfoNCE (SimCLR: 0.1).
        crop, flip, noise, token_drop: view settings (:func:`random_view`).
        modalities: modalities of both terms (``None``: all in the batch).
        mode, anchor: the CLIP term's pairing (:class:`~medfm.objectives.composite.ClipObjective`).

    Returns ``{"loss", "clip": float, "ssl": float, "ssl/<mod>": float, "n_terms": float}``.
    """

    def __init__(self, clip_weight: float = 1.0, ssl_weight: float = 1.0, temperature: float = 0.1,
                 crop: float = 0.8, flip: bool = True, noise: float = 0.05, token_drop: float = 0.15,
                 modalities: Optional[Sequence[str]] = None, mode: str = "pairs", anchor: Optional[str] = None):
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"cleanclip: temperature must be > 0, got {temperature}")
        if not 0 < crop <= 1:
            raise ConfigError(f"cleanclip: crop must be in (0, 1], got {crop}")
        if not 0 <= token_drop < 1:
            raise ConfigError(f"cleanclip: token_drop must be in [0, 1), got {token_drop}")
        if clip_weight < 0 or ssl_weight < 0:
            raise ConfigError("cleanclip: weights must be >= 0")
        self.clip = ClipObjective(modalities=modalities, mode=mode, anchor=anchor)
        self.modalities = None if modalities is None else list(modalities)
        self.clip_weight, self.ssl_weight = float(clip_weight), float(ssl_weight)
        self.log_scale = math.log(1.0 / float(temperature))
        self.view = {"crop": float(crop), "flip": bool(flip), "noise": float(noise), "token_drop": float(token_drop)}

    def forward(self, model: nn.Module, batch: Dict, cache: Optional[Dict] = None) -> Dict:
        clip = self.clip(model, batch, cache)

        def ssl_of(mod: str, inp: Dict) -> Optional[torch.Tensor]:
            x, m = inp["x"], inp.get("mask")
            if x.shape[0] < 2:
                return None  # one sample has no negatives
            embedder = getattr(model.tower(mod), "embedder", None)
            if hasattr(embedder, "random_view"):
                v1, v2 = embedder.random_view(x, m), embedder.random_view(x, m)
            else:
                v1, v2 = random_view(x, m, **self.view), random_view(x, m, **self.view)
            z1, z2 = model.encode(mod, *v1), model.encode(mod, *v2)
            return clip_loss(z1.float(), z2.float(), torch.tensor(self.log_scale, device=z1.device))

        ssl = mean_over_modalities(batch, self.modalities, ssl_of, fallback=list(model.parameters())[:1])
        loss = self.clip_weight * clip["loss"] + self.ssl_weight * ssl["loss"]
        logs = {"clip": float(clip["loss"].detach()), "ssl": float(ssl["loss"].detach()), "n_terms": ssl["n_terms"],
                **{f"ssl/{k}": v for k, v in ssl.items() if k not in ("loss", "n_terms")},
                **{f"clip/{k}": v for k, v in clip.items() if k != "loss"}}
        return {"loss": loss, **logs}
