"""Generic token embedders configured by the modality adapters.

Every embedder maps an input batch to tokens ``(B, N, D)`` with positional
embeddings added, and knows the masked-modelling target of each token
(:meth:`targets`): the raw patch values for patch embedders (MAE), the token ids
for the discrete embedder (MLM). Positional embeddings are learnable, start as
fixed sin-cos (MAE), and are resampled when an input's size differs from the
configured one.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn as nn

from ..errors import ConfigError, DataError
from ..layers.pos_embed import resample_pos_embed, sincos_pos_embed
from ..registry import register_embedder
from ..registry import EMBEDDERS


def _tuple(v, n: int) -> Tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        if len(v) != n:
            raise ConfigError(f"expected {n} values, got {list(v)}")
        return tuple(int(i) for i in v)
    return (int(v),) * n


class TokenEmbedder(nn.Module):
    """Interface: ``forward(x) -> (B, N, D)`` tokens with positions, ``targets(x) -> (B, N, P)``."""

    #: "mae" when targets are continuous patches, "mlm" when they are token ids
    target_kind = "mae"
    width: int
    num_tokens: int
    target_dim: int

    def grid_for(self, x: torch.Tensor) -> Tuple[int, ...]:
        """Token grid of an input batch."""
        raise NotImplementedError

    def pos_for(self, pos: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """``pos`` ``(1, N0, C)`` on the configured grid → ``(1, N, C)`` on ``grid``."""
        return resample_pos_embed(pos, self.grid, grid)


class PatchEmbedND(TokenEmbedder):
    """Non-overlapping patches of a 1D, 2D or 3D input, projected by a strided convolution.

    Args:
        ndim: 1 (signals ``(B, C, T)``), 2 (images ``(B, C, H, W)``) or 3 (volumes ``(B, C, D, H, W)``).
        in_chans: input channels ``C``.
        input_size: configured spatial size (``T``, ``(H, W)`` or ``(D, H, W)``).
        patch_size: patch (tubelet) size per axis, e.g. ``(4, 16, 16)``.
        width: token width.
        per_channel: 1D only — one token per (channel, time patch) with a learned
            channel embedding, instead of one token per time patch across channels.
    """

    def __init__(self, ndim: int, in_chans: int, input_size, patch_size, width: int, per_channel: bool = False):
        super().__init__()
        if per_channel and ndim != 1:
            raise ConfigError("per_channel tokens are only defined for 1D signals (patch1d)")
        self.ndim, self.in_chans, self.width, self.per_channel = ndim, int(in_chans), int(width), bool(per_channel)
        self.input_size = _tuple(input_size, ndim)
        self.patch_size = _tuple(patch_size, ndim)
        for s, p in zip(self.input_size, self.patch_size):
            if s % p:
                raise ConfigError(f"input size {self.input_size} is not divisible by patch size {self.patch_size}")
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[ndim]
        conv_in = 1 if per_channel else self.in_chans
        self.proj = conv(conv_in, width, kernel_size=self.patch_size, stride=self.patch_size)
        self.patch_grid = tuple(s // p for s, p in zip(self.input_size, self.patch_size))
        # positional grid: (channels, time patches) for per-channel signals
        self.grid = self.patch_grid
        self.pos_embed = nn.Parameter(sincos_pos_embed(width, self.grid)[None])
        if per_channel:
            self.channel_embed = nn.Parameter(torch.zeros(1, self.in_chans, 1, width))
            nn.init.trunc_normal_(self.channel_embed, std=0.02)
        self.num_tokens = math.prod(self.grid) * (self.in_chans if per_channel else 1)
        patch_vol = math.prod(self.patch_size)
        self.target_dim = patch_vol if per_channel else patch_vol * self.in_chans

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != self.ndim + 2 or x.shape[1] != self.in_chans:
            raise DataError(
                f"expected input of shape (B, {self.in_chans}, {', '.join('*' * self.ndim)}) for a "
                f"{self.ndim}D patch embedder, got {tuple(x.shape)}", field="x")
        for s, p in zip(x.shape[2:], self.patch_size):
            if s % p:
                raise DataError(f"input size {tuple(x.shape[2:])} is not divisible by patch size {self.patch_size}", field="x")

    def grid_for(self, x: torch.Tensor) -> Tuple[int, ...]:
        return tuple(s // p for s, p in zip(x.shape[2:], self.patch_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, *spatial)`` → ``(B, N, D)``; N = prod(grid) (× C if per_channel)."""
        if torch.jit.is_tracing():
            # export (ONNX / TorchScript trace): only the batch axis is dynamic, the spatial size is the
            # configured one (the exported input shape declares it and the runtime enforces it), so the
            # grid is the static one; checks on x.shape would be frozen into the trace (TracerWarning)
            grid = self.grid
        else:
            self._check(x)
            grid = self.grid_for(x)
        pos = self.pos_for(self.pos_embed, grid)
        if self.per_channel:
            b, c, t = x.shape
            tok = self.proj(x.reshape(b * c, 1, t)).transpose(1, 2)  # (B*C, Nt, D)
            tok = tok.reshape(b, c, -1, self.width) + pos[:, None] + self.channel_embed
            return tok.reshape(b, -1, self.width)
        tok = self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)
        return tok + pos

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """Raw patch values in token order: ``(B, N, target_dim)``."""
        self._check(x)
        b, c = x.shape[:2]
        grid = self.grid_for(x)
        if self.per_channel:
            (p,) = self.patch_size
            return x.reshape(b, c, grid[0], p).reshape(b, c * grid[0], p)
        # (B, C, g1, p1, g2, p2, ...) → (B, g1, g2, ..., p1, p2, ..., C)
        shape = [b, c]
        for g, p in zip(grid, self.patch_size):
            shape += [g, p]
        v = x.reshape(shape)
        nd = self.ndim
        grid_axes = [2 + 2 * i for i in range(nd)]
        patch_axes = [3 + 2 * i for i in range(nd)]
        v = v.permute(0, *grid_axes, *patch_axes, 1)
        return v.reshape(b, math.prod(grid), -1)

    def pos_for(self, pos: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        out = resample_pos_embed(pos, self.grid, grid)
        return out

    def expand_pos(self, pos: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """Positional embedding of every token (repeats over channels when per_channel): ``(1, N, C)``."""
        pos = self.pos_for(pos, grid)
        if self.per_channel:
            pos = pos[:, None].expand(1, self.in_chans, pos.shape[1], pos.shape[2]).reshape(1, -1, pos.shape[2])
        return pos


@register_embedder("patch1d")
def patch1d(width: int, in_chans: int, input_size, patch_size, per_channel: bool = False, **_):
    return PatchEmbedND(1, in_chans, input_size, patch_size, width, per_channel=per_channel)


@register_embedder("patch2d")
def patch2d(width: int, in_chans: int, input_size, patch_size, **_):
    return PatchEmbedND(2, in_chans, input_size, patch_size, width)


@register_embedder("patch3d")
def patch3d(width: int, in_chans: int, input_size, patch_size, **_):
    return PatchEmbedND(3, in_chans, input_size, patch_size, width)


@register_embedder("tokens")
class DiscreteTokenEmbedder(TokenEmbedder):
    """Token ids → embeddings + learned positions (k-mers, word pieces).

    Args:
        vocab_size: size of the vocabulary.
        max_len: longest sequence ``L``; longer inputs are an error.
        pad_id / mask_id: ids of the padding and mask tokens.
        special_ids: ids never chosen for masking (CLS, SEP, PAD, ...).
    """

    target_kind = "mlm"

    def __init__(self, width: int, vocab_size: int, max_len: int, pad_id: int = 0, mask_id: int = 1,
                 special_ids: Sequence[int] = (), **_):
        super().__init__()
        self.width, self.vocab_size, self.max_len = int(width), int(vocab_size), int(max_len)
        self.pad_id, self.mask_id = int(pad_id), int(mask_id)
        self.special_ids = sorted({int(i) for i in special_ids} | {self.pad_id, self.mask_id})
        self.embed = nn.Embedding(self.vocab_size, self.width, padding_idx=self.pad_id)
        nn.init.trunc_normal_(self.embed.weight, std=0.02)
        self.grid = (self.max_len,)
        self.pos_embed = nn.Parameter(sincos_pos_embed(self.width, self.grid)[None])
        self.num_tokens = self.max_len
        self.target_dim = self.vocab_size

    def grid_for(self, x: torch.Tensor) -> Tuple[int, ...]:
        return (x.shape[1],)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, L)`` int ids, ``L <= max_len`` → ``(B, L, D)``."""
        if x.dim() != 2 or x.dtype not in (torch.int64, torch.int32):
            raise DataError(f"expected (B, L) integer token ids, got {tuple(x.shape)} {x.dtype}", field="x")
        # not while tracing: the exported length axis is dynamic and a Python check would be frozen into
        # the trace (TracerWarning); preprocessing.json records max_len for a deployment
        if not torch.jit.is_tracing() and x.shape[1] > self.max_len:
            raise DataError(f"sequence of {x.shape[1]} tokens exceeds max_len={self.max_len}", field="x")
        return self.embed(x) + self.pos_embed[:, : x.shape[1]]

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def expand_pos(self, pos: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        return pos[:, : grid[0]]


def build_embedder(cfg: dict, width: int) -> TokenEmbedder:
    """Build an embedder from ``{"type": name, **kwargs}``."""

    cfg = dict(cfg)
    kind = cfg.pop("type")
    return EMBEDDERS.get(kind)(width=width, **cfg)
