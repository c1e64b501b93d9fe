"""Reusable layers: positional embeddings, token embedders, the transformer trunk.

Names are imported on first use (:mod:`medfm.lazy`)."""
from medfm.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".pos_embed": ["resample_pos_embed", "sincos_pos_embed"],
    ".trunk": ["Trunk", "padding_to_attn_mask"],
})

__all__ = ["resample_pos_embed", "sincos_pos_embed", "Trunk", "padding_to_attn_mask"]
