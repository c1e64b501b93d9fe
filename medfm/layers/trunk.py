"""The transformer trunk shared by every ``vit`` tower: timm ``Block``s with SDPA attention."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from functools import partial

from ..errors import ConfigError

from timm.layers import QuickGELU
from timm.models.vision_transformer import Block
from torch.utils.checkpoint import checkpoint


def padding_to_attn_mask(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``(B, N)`` 1 = real token → boolean SDPA mask ``(B, 1, 1, N)`` (True = may attend)."""
    if mask is None:
        return None
    return mask.bool()[:, None, None, :]


def causal_attn_mask(n: int, mask: Optional[torch.Tensor], device) -> torch.Tensor:
    """Boolean SDPA mask: token i attends to j <= i (and to real tokens only when ``mask`` (B, N) is given).

    Returns ``(1, 1, N, N)`` or ``(B, 1, N, N)``; no row is empty because token 0 is real.
    """
    causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()[None, None]
    if mask is None:
        return causal
    return causal & mask.bool()[:, None, None, :]


ACTIVATIONS = ("gelu", "quick_gelu")


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
        norm_eps: LayerNorm epsilon (1e-6 as timm ViT / MAE / RETFound; 1e-5 as MONAI and open_clip).
        pre_norm: a LayerNorm on the tokens before the first block (open_clip's ``ln_pre``, timm ``norm_pre``).
        causal: token i attends only to tokens j <= i (open_clip's text transformer).
        act: MLP activation, ``"gelu"`` (exact) or ``"quick_gelu"`` (OpenAI CLIP weights).
    """

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 qkv_bias: bool = True, norm_eps: float = 1e-6, pre_norm: bool = False, causal: bool = False,
                 act: str = "gelu"):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ConfigError(f"trunk: act must be one of {ACTIVATIONS}, got {act!r}")
        self.width, self.depth, self.heads = width, depth, heads
        self.causal = bool(causal)
        norm = partial(nn.LayerNorm, eps=float(norm_eps))
        act_layer = nn.GELU if act == "gelu" else QuickGELU
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=r, norm_layer=norm,
                  act_layer=act_layer)
            for r in rates
        )
        for blk in self.blocks:
            blk.attn.fused_attn = True
        self.norm_pre = norm(width) if pre_norm else nn.Identity()
        self.norm = norm(width)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x``: ``(B, N, D)``; ``mask``: ``(B, N)`` 1 = real token. Returns ``(B, N, D)``."""
        attn_mask = causal_attn_mask(x.shape[1], mask, x.device) if self.causal else padding_to_attn_mask(mask)
        x = self.norm_pre(x)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, attn_mask, use_reentrant=False)
            else:
                x = blk(x, attn_mask=attn_mask)
        return self.norm(x)
