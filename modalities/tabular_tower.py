"""The ``tabular`` tower: one token per measured feature into medfm's trunk, pooled; TIP-style masked features.

A feature token is ``value embedding + column embedding``: a linear map of the standardised
value for a numeric column, the embedding of its category for a categorical one, the mean of its
codes' embeddings for a multi-valued code column. Missing features are no tokens (the trunk's
padding mask), so nothing imputed is ever seen as measured.

:meth:`TabularTower.masked_feature_loss` (TIP, Du et al. 2024): among each sample's measured
features a share ``mask_ratio`` (at least one, never all) is replaced by a learned mask token;
the trunk sees the rest and per-token heads predict the masked ones — the standardised value
(mean squared error), the category (cross-entropy over that column's vocabulary) and the codes
(binary cross-entropy over that column's vocabulary). ``masked_loss`` is the same, so the generic
``masked`` objective trains it too.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from medfm.errors import ConfigError, DataError
from medfm.layers.trunk import Trunk
from medfm.registry import register_tower


@register_tower("tabular")
class TabularTower(nn.Module):
    """Feature tokens → trunk → pooled ``(B, D)``.

    Args:
        kinds: ``"num"``, ``"cat"`` or ``"codes"`` per feature column (``F``).
        ranges: ``[start, end)`` of each column's ids in the shared vocabulary (``start`` = its unknown token).
        vocab_size: ids of all categorical/code columns (0 = padding).
        max_codes: ``K``, code slots per feature.
        trunk: the (possibly shared) :class:`~medfm.layers.trunk.Trunk`.
        pool: ``"mean"`` over measured features or ``"cls"``.
        masked: ``{"mask_ratio": r}``, the fallback ratio of the masked objectives.
    Input: ``x`` ``(B, F, 1 + K)`` and ``mask`` ``(B, F)`` 1 = measured (see :mod:`medfm.modalities.tabular`).
    """

    def __init__(self, kinds: Sequence[str], ranges: Sequence[Sequence[int]], vocab_size: int, max_codes: int,
                 trunk: Trunk, pool: str = "mean", masked: Optional[Dict[str, Any]] = None,
                 decoder: Any = None, **unused: Any):
        super().__init__()
        if unused:
            raise ConfigError(f"tabular tower: unknown option(s) {sorted(unused)}")
        if pool not in ("mean", "cls"):
            raise ConfigError(f"tabular tower: pool must be 'mean' or 'cls', got {pool!r}")
        if len(kinds) != len(ranges) or not kinds or set(kinds) - {"num", "cat", "codes"}:
            raise ConfigError(f"tabular tower: kinds {list(kinds)} and ranges must name the same features")
        self.width, self.trunk, self.pool_kind = trunk.width, trunk, pool
        self.n_features, self.max_codes, self.vocab_size = len(kinds), int(max_codes), max(int(vocab_size), 1)
        kind = torch.tensor([{"num": 0, "cat": 1, "codes": 2}[k] for k in kinds])
        self.register_buffer("kind", kind, persistent=False)
        self.register_buffer("start", torch.tensor([int(r[0]) for r in ranges]), persistent=False)
        self.register_buffer("end", torch.tensor([int(r[1]) for r in ranges]), persistent=False)
        d = self.width
        self.column_embed = nn.Parameter(torch.zeros(1, self.n_features, d))
        self.num_embed = nn.Linear(1, d)
        self.cat_embed = nn.Embedding(self.vocab_size, d, padding_idx=0)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if pool == "cls" else None
        for p in (self.column_embed, self.mask_token, self.cat_embed.weight) + ((self.cls_token,) if pool == "cls" else ()):
            nn.init.trunc_normal_(p, std=0.02)
        with torch.no_grad():
            self.cat_embed.weight[0].zero_()
        self.num_head = nn.Linear(d, 1)
        self.cat_head = nn.Linear(d, self.vocab_size)
        self.mask_ratio = float((masked or {}).get("mask_ratio", 0.3))

    # ---------------------------------------------------------- encoding
    def _check(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing():
            return
        if x.dim() != 3 or x.shape[1] != self.n_features or x.shape[2] != 1 + self.max_codes:
            raise DataError(f"expected tabular input (B, {self.n_features}, {1 + self.max_codes}), "
                            f"got {tuple(x.shape)}", field="x")

    def tokens(self, x: torch.Tensor, hide: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` ``(B, F, 1 + K)`` → ``(B, F, D)``; ``hide`` ``(B, F)`` bool: features shown as the mask token."""
        self._check(x)
        num = self.num_embed(x[..., :1].float())
        ids = x[..., 1:].round().long().clamp(0, self.vocab_size - 1)
        n_ids = (ids > 0).sum(-1, keepdim=True).clamp_min(1).to(num.dtype)
        cat = self.cat_embed(ids).sum(2) / n_ids  # padding rows are zero
        val = torch.where((self.kind == 0)[None, :, None], num, cat.to(num.dtype))
        if hide is not None:
            val = torch.where(hide[..., None], self.mask_token.to(val.dtype).expand_as(val), val)
        return val + self.column_embed

    def _trunk(self, tok: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        if self.cls_token is not None:
            tok = torch.cat([self.cls_token.expand(tok.shape[0], -1, -1), tok], dim=1)
            if mask is not None:
                mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        return self.trunk(tok, mask)

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, [1+]F, D)`` trunk tokens; ``mask`` ``(B, F)`` 1 = measured."""
        return self._trunk(self.tokens(x), mask)

    def pool(self, tokens: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.cls_token is not None:
            return tokens[:, 0]
        if mask is None:
            return tokens.mean(1)
        m = mask.to(tokens.dtype)[..., None]
        return (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pooled ``(B, D)`` over the measured features."""
        return self.pool(self.forward_features(x, mask), mask)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.grad_checkpointing = enable

    # ------------------------------------------------- masked features
    def choose_masked(self, present: torch.Tensor, ratio: float) -> torch.Tensor:
        """``(B, F)`` bool: ``round(ratio · n)`` of each sample's ``n`` measured features, in ``[1, n - 1]`` (none when n < 2)."""
        n = present.sum(1)
        k = torch.round(n.float() * float(ratio)).long().clamp(min=1)
        k = torch.minimum(k, (n - 1).clamp_min(0))
        noise = torch.rand(present.shape, device=present.device).masked_fill(~present, 2.0)
        ranks = noise.argsort(1).argsort(1)
        return ranks < k[:, None]

    def masked_feature_loss(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                            mask_ratio: Optional[float] = None, numeric_weight: float = 1.0,
                            categorical_weight: float = 1.0) -> Dict[str, Any]:
        """Reconstruct masked numeric values, classify masked categories and codes.

        Returns ``{"loss", "numeric", "categorical", "codes", "n_masked"}`` (a part absent from the
        batch logs 0 and adds nothing).
        """
        ratio = self.mask_ratio if mask_ratio is None else float(mask_ratio)
        present = (mask.bool() if mask is not None
                   else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device))
        hide = self.choose_masked(present, ratio)
        h = self._trunk(self.tokens(x, hide), present.long())
        if self.cls_token is not None:
            h = h[:, 1:]
        parts, logs = [], {"numeric": 0.0, "categorical": 0.0, "codes": 0.0, "n_masked": int(hide.sum())}
        sel = hide & (self.kind == 0)[None]
        if sel.any():
            pred = self.num_head(h[sel]).squeeze(-1).float()
            loss = F.mse_loss(pred, x[..., 0][sel].float())
            parts.append(numeric_weight * loss)
            logs["numeric"] = float(loss.detach())
        cols = torch.arange(self.vocab_size, device=x.device)
        for kind, name in ((1, "categorical"), (2, "codes")):
            sel = hide & (self.kind == kind)[None]
            if not sel.any():
                continue
            feat = sel.nonzero(as_tuple=True)[1]
            in_range = (cols[None] >= self.start[feat][:, None]) & (cols[None] < self.end[feat][:, None])
            logits = self.cat_head(h[sel]).float()
            ids = x[..., 1:][sel].round().long()
            if kind == 1:
                loss = F.cross_entropy(logits.masked_fill(~in_range, float("-inf")), ids[:, 0])
            else:
                target = torch.zeros_like(logits).scatter_(1, ids, 1.0)
                target[:, 0] = 0.0  # padding slots
                per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
                loss = (per * in_range).sum() / in_range.sum().clamp_min(1)
            parts.append(categorical_weight * loss)
            logs[name] = float(loss.detach())
        loss = torch.stack(parts).sum() / len(parts) if parts else h.sum() * 0.0
        return {"loss": loss, **logs}

    def masked_loss(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                    mask_ratio: Optional[float] = None) -> Dict[str, Any]:
        """The generic ``masked`` objective's entry: :meth:`masked_feature_loss`."""
        return self.masked_feature_loss(x, mask, mask_ratio)
