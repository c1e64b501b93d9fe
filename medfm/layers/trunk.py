"""The transformer trunk shared by every ``vit`` tower: timm ``Block``s with SDPA attention."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from functools import partial

from timm.models.vision_transformer import Block
from torch.utils.checkpoint import checkpoint


#: LayerNorm as in timm's ViT, MAE, RETFound (eps 1e-6), so imported weights reproduce exactly
_norm = partial(nn.LayerNorm, eps=1e-6)


def padding_to_attn_mask(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``(B, N)`` 1 = real token → boolean SDPA mask ``(B, 1, 1, N)`` (True = may attend)."""
    if mask is None:
        return None
    return mask.bool()[:, None, None, :]


class Trunk(nn.Module):
    """A stack of pre-norm transformer blocks followed by a LayerNorm.

    Attention runs through ``torch.nn.functional.scaled_dot_product_attention``
    (timm's fused path), so flash / memory-efficient kernels are used where the
    device has them.

    Args:
        width: token width ``D``.
        depth: number of blocks.
        heads: attention heads (``D`` must be divisible by it).
        mlp_ratio: hidden width of the MLP relative to ``D``.
        drop_path: stochastic-depth rate at the last block (linear ramp).
    """

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 qkv_bias: bool = True):
        super().__init__()
        self.width, self.depth, self.heads = width, depth, heads
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=r, norm_layer=_norm)
            for r in rates
        )
        for blk in self.blocks:
            blk.attn.fused_attn = True
        self.norm = _norm(width)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x``: ``(B, N, D)``; ``mask``: ``(B, N)`` 1 = real token. Returns ``(B, N, D)``."""
        attn_mask = padding_to_attn_mask(mask)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, attn_mask, use_reentrant=False)
            else:
                x = blk(x, attn_mask=attn_mask)
        return self.norm(x)
