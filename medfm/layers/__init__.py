"""Reusable layers: positional embeddings, token embedders, the transformer trunk."""
from .pos_embed import resample_pos_embed, sincos_pos_embed
from .trunk import Trunk, padding_to_attn_mask

__all__ = ["resample_pos_embed", "sincos_pos_embed", "Trunk", "padding_to_attn_mask"]
