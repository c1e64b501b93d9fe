"""What every tower built by an outside library shares (``timm``, ``hf_encoder``, ``monai``).

A library tower wraps a backbone that a well-kept library builds and loads (timm, transformers,
MONAI). It adds what the engine needs around it:

* ``width`` — the size of the pooled feature the model's projection reads;
* ``forward(x, mask) -> (B, width)`` — the backbone's pooled feature, through an optional
  ``head`` (``{"type": "mlp", "hidden": H}``: ``Linear(width, H, bias=False) → GELU``; the
  model's projection is then the second linear layer, as open_clip's ``mlp`` text projection);
* ``forward_features(x, mask) -> (B, N, C)`` — the backbone's tokens (a CNN's feature map is
  flattened to ``(B, H·W[·D], C)``);
* ``backbone_families`` — the layer-naming families of the backbone (``"resnet"``, ``"clip"``, ...):
  fine-tuning's ``target_modules: auto`` adapts the layers those families' recipes adapt
  (:mod:`medfm.finetune.lora_targets`);
* frozen normalisation layers keep their running statistics in training mode (:meth:`LibraryTower.train`);
* ``objectives`` — what the tower supports. Masked pretraining (MAE/MLM) is medfm's own
  ``vit`` tower's: :meth:`LibraryTower.masked_loss` refuses it by name.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ..errors import ConfigError

#: the objectives a library tower supports (every one that only needs ``encode``)
LIBRARY_OBJECTIVES = ("clip", "siglip", "label_aware", "multi", "views")


def build_head(head: Optional[Mapping[str, Any]], width: int, where: str) -> Tuple[Optional[nn.Module], int]:
    """``None`` or ``{"type": "mlp", "hidden": H}`` → ``(module or None, output width)``."""
    if not head:
        return None, width
    head = dict(head)
    kind = head.pop("type", "mlp")
    hidden = head.pop("hidden", None)
    if kind != "mlp" or hidden is None or head:
        raise ConfigError(f"{where}: head must be {{type: mlp, hidden: N}}, got {dict(head, type=kind)}")
    return nn.Sequential(nn.Linear(width, int(hidden), bias=False), nn.GELU()), int(hidden)


class LibraryTower(nn.Module):
    """Base of the towers whose backbone a library builds; subclasses set ``backbone_name`` and ``width``."""

    #: tower type name (the registry key), for messages
    kind = "library"
    objectives = LIBRARY_OBJECTIVES
    #: ``forward`` is the pooled feature (an export calls it instead of ``pool(forward_features)``)
    pools_in_forward = True

    def masked_loss(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                    mask_ratio: Optional[float] = None) -> Dict[str, Any]:
        """Refused: masked pretraining (MAE/MLM) is for medfm's own ``vit`` tower."""
        raise ConfigError(
            f"masked pretraining is not supported by the {self.kind!r} tower ({self.backbone_name}): MAE/MLM "
            f"run on medfm's own 'vit' tower only; a {self.kind} tower trains with the contrastive objectives "
            f"({', '.join(self.objectives)}) or is fine-tuned (LoRA or full)")

    def train(self, mode: bool = True) -> "LibraryTower":
        """``nn.Module.train``, but a normalisation layer whose parameters are frozen keeps its running
        statistics (eval mode): a frozen or LoRA-adapted CNN does not drift from the weights it loaded, whose
        statistics an adapter-only save could not carry (open_clip's ``lock(freeze_bn_stats=True)``)."""
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._NormBase) and not any(
                        p.requires_grad for p in m.parameters(recurse=False)):
                    m.eval()
        return self

    def pool(self, tokens: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, N, C)`` → ``(B, C)``: the mean of the (real) tokens; towers pool their own way in ``forward``."""
        if mask is None or mask.shape[:2] != tokens.shape[:2]:
            return tokens.mean(1)
        m = mask.to(tokens.dtype).unsqueeze(-1)
        return (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)

    def apply_head(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(B, backbone width)`` → ``(B, width)`` through the optional head."""
        head = getattr(self, "head", None)
        return pooled if head is None else head(pooled)


def flatten_map(feats: torch.Tensor) -> torch.Tensor:
    """A CNN feature map ``(B, C, *spatial)`` → tokens ``(B, prod(spatial), C)``; tokens pass through."""
    if feats.ndim <= 3:
        return feats
    return feats.flatten(2).transpose(1, 2)
