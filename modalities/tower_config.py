"""The tower config an imaging adapter asks the engine for (:meth:`~medfm.modality.ModalityAdapter.tower_config`)."""
from __future__ import annotations

from typing import Any, Dict


def vit_tower(embedder: Dict[str, Any], *, mask_ratio: float, pool: str = "mean",
              norm_pix_loss: bool = False) -> Dict[str, Any]:
    """The engine's ViT tower config with an MAE target."""
    return {"type": "vit", "embedder": embedder, "pool": pool,
            "masked": {"kind": "mae", "mask_ratio": float(mask_ratio), "norm_pix_loss": bool(norm_pix_loss)}}
