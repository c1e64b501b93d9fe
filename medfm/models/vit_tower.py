"""The ``vit`` tower: token embedder → transformer trunk → pooling, with MAE / MLM heads."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..layers.pos_embed import sincos_pos_embed
from ..layers.trunk import Trunk
from ..registry import register_tower
from .embedders import TokenEmbedder, build_embedder
from .masking import mlm_mask, random_masking


class MAEDecoder(nn.Module):
    """Light MAE decoder: visible latents + mask tokens → per-token predictions.

    Args:
        embedder: the tower's embedder (gives the token grid and target size).
        in_width: encoder width. width / depth / heads: decoder size.
    """

    def __init__(self, embedder: TokenEmbedder, in_width: int, width: int = 128, depth: int = 2, heads: int = 4):
        super().__init__()
        self.embedder = [embedder]  # not a submodule (owned by the tower)
        self.embed = nn.Linear(in_width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.mask_token, std=0.02)
        self.pos_embed = nn.Parameter(sincos_pos_embed(width, embedder.grid)[None], requires_grad=False)
        self.trunk = Trunk(width, depth, heads)
        self.head = nn.Linear(width, embedder.target_dim)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid, has_cls: bool) -> torch.Tensor:
        """``latent``: ``(B, [1+] N_vis, D)`` → predictions ``(B, N, target_dim)`` in token order."""
        x = self.embed(latent)
        if has_cls:
            x = x[:, 1:]
        b, n = ids_restore.shape
        masks = self.mask_token.expand(b, n - x.shape[1], -1)
        x = torch.cat([x, masks], dim=1)
        x = torch.gather(x, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
        x = x + self.embedder[0].expand_pos(self.pos_embed, grid)
        return self.head(self.trunk(x))


@register_tower("vit")
class ViTTower(nn.Module):
    """Token embedder + transformer trunk + pooling; masked modelling by the embedder's target kind.

    Args:
        embedder: embedder config ``{"type": "patch3d", ...}`` (see :mod:`medfm.models.embedders`).
        trunk: a :class:`Trunk` (possibly shared with other towers).
        pool: ``"mean"`` over real tokens, ``"cls"`` (a learned class token, pooled first) or
            ``"last"`` (the last real token: the end-of-text token of a causal text transformer,
            as open_clip's ``argmax``/``eos`` pooling over right-padded ids).
        cls_token: prepend a learned class token even when ``pool`` is not ``"cls"`` (an imported
            MAE/RETFound/timm ViT attends over one; mean/last pooling then skips it, as timm's ``avg``).
        masked: ``{"kind": "mae"|"mlm", "mask_ratio": float, "norm_pix_loss": bool}``; ``mask_ratio``
            is the fallback the adapter proposes (its modality's recipe), used when
            :meth:`masked_loss` is given none — the masked objective owns the setting.
        decoder: MAE decoder size ``{"width", "depth", "heads"}``.
    """

    def __init__(self, embedder: Dict[str, Any], trunk: Trunk, pool: str = "mean",
                 masked: Optional[Dict[str, Any]] = None, decoder: Optional[Dict[str, Any]] = None,
                 cls_token: bool = False, **unused):
        super().__init__()
        if unused:
            raise ConfigError(f"vit tower: unknown option(s) {sorted(unused)}")
        if pool not in ("mean", "cls", "last"):
            raise ConfigError(f"vit tower: pool must be 'mean', 'cls' or 'last', got {pool!r}")
        self.width = trunk.width
        self.embedder = build_embedder(embedder, self.width)
        self.trunk = trunk
        self.pool_kind = pool
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.width)) if (pool == "cls" or cls_token) else None
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        # an embedder with a global path (e.g. a bag of k-mers) adds it to the pooled tokens,
        # which are scaled by a learnt gate (0 at start: the tower begins as the global path alone)
        self.trunk_gate = (nn.Parameter(torch.tensor(float(getattr(self.embedder, "trunk_gate_init", 1.0))))
                           if hasattr(self.embedder, "global_features") else None)
        masked = dict(masked or {})
        self.masked_kind = masked.pop("kind", self.embedder.target_kind)
        self.mask_ratio = float(masked.pop("mask_ratio", 0.75 if self.masked_kind == "mae" else 0.15))
        self.norm_pix_loss = bool(masked.pop("norm_pix_loss", False))
        if masked:
            raise ConfigError(f"vit tower: unknown masked option(s) {sorted(masked)}")
        if self.masked_kind != self.embedder.target_kind:
            raise ConfigError(f"{self.masked_kind!r} masking does not fit a {type(self.embedder).__name__}")
        if self.masked_kind == "mae":
            self.decoder = MAEDecoder(self.embedder, self.width, **(decoder or {}))
        else:
            self.mlm_head = nn.Sequential(nn.Linear(self.width, self.width), nn.GELU(), nn.LayerNorm(self.width),
                                          nn.Linear(self.width, self.embedder.vocab_size))

    # ----------------------------------------------------------- encoding
    def _with_cls(self, tok: torch.Tensor, mask: Optional[torch.Tensor]):
        if self.cls_token is None:
            return tok, mask
        tok = torch.cat([self.cls_token.expand(tok.shape[0], -1, -1), tok], dim=1)
        if mask is not None:
            mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        return tok, mask

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x``: the embedder's input; ``mask``: ``(B, N)`` 1 = real token. Returns ``(B, [1+]N, D)``."""
        tok, mask = self._with_cls(self.embedder(x), mask)
        return self.trunk(tok, mask)

    def pool(self, tokens: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, [1+]N, D)`` → ``(B, D)``; ``mask`` ``(B, N)`` is over the N input tokens."""
        if self.pool_kind == "cls":
            return tokens[:, 0]
        if self.cls_token is not None:  # a class token the pooling does not use
            tokens = tokens[:, 1:]
        if self.pool_kind == "last":
            if mask is None:
                return tokens[:, -1]
            last = (mask.long().sum(1) - 1).clamp_min(0)  # right-padded: index of the last real token
            return tokens[torch.arange(tokens.shape[0], device=tokens.device), last]
        if mask is None:
            return tokens.mean(dim=1)
        m = mask.to(tokens.dtype)[..., None]
        return (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pooled features ``(B, D)``: ``pool(trunk tokens)``, or with a global embedder path
        ``trunk_gate · pool(trunk tokens) + embedder.global_features(x, mask)``."""
        pooled = self.pool(self.forward_features(x, mask), mask)
        if self.trunk_gate is None:
            return pooled
        return self.trunk_gate * pooled + self.embedder.global_features(x, mask)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.grad_checkpointing = enable

    # ----------------------------------------------------- masked modelling
    def encode_visible(self, x: torch.Tensor, mask_ratio: float):
        """MAE encoder pass on visible tokens only.

        Returns ``(latent (B, [1+]N_vis, D), token_mask (B, N) 1 = masked, ids_restore (B, N), grid)``.
        """
        tok = self.embedder(x)
        b, n, d = tok.shape
        ids_keep, ids_restore, token_mask = random_masking(b, n, mask_ratio, device=tok.device)
        visible = torch.gather(tok, 1, ids_keep[..., None].expand(-1, -1, d))
        visible, _ = self._with_cls(visible, None)
        return self.trunk(visible), token_mask, ids_restore, self.embedder.grid_for(x)

    def reconstruction_loss(self, pred: torch.Tensor, target: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over masked tokens only. pred/target ``(B, N, P)``, token_mask ``(B, N)``."""
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_token = ((pred.float() - target.float()) ** 2).mean(dim=-1)
        return (per_token * token_mask).sum() / token_mask.sum().clamp_min(1.0)

    def masked_loss(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                    mask_ratio: Optional[float] = None) -> Dict[str, Any]:
        """MAE (patch embedders) or MLM (token embedder) loss for a batch; returns ``{"loss", ...}``."""
        ratio = self.mask_ratio if mask_ratio is None else float(mask_ratio)
        if self.masked_kind == "mae":
            latent, token_mask, ids_restore, grid = self.encode_visible(x, ratio)
            pred = self.decoder(latent, ids_restore, grid, has_cls=self.cls_token is not None)
            loss = self.reconstruction_loss(pred, self.embedder.targets(x), token_mask)
            return {"loss": loss, "pred": pred, "token_mask": token_mask}
        emb = self.embedder
        attn = mask if mask is not None else (x != emb.pad_id).long()
        corrupted, chosen = mlm_mask(x, attn, mask_ratio=ratio, mask_id=emb.mask_id, vocab_size=emb.vocab_size,
                                     special_ids=emb.special_ids)
        tokens = self.forward_features(corrupted, mask)
        if self.cls_token is not None:
            tokens = tokens[:, 1:]
        logits = self.mlm_head(tokens[chosen])
        loss = F.cross_entropy(logits.float(), x[chosen]) if chosen.any() else tokens.sum() * 0.0
        return {"loss": loss, "n_masked": int(chosen.sum())}
