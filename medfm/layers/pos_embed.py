"""Positional embeddings over 1D/2D/3D token grids, and their resampling."""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / max(dim / 2.0, 1.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed(width: int, grid: Sequence[int]) -> torch.Tensor:
    """Fixed sin-cos embedding for a token grid, as in MAE.

    Args:
        width: embedding width ``D``.
        grid: token grid, e.g. ``(Nt,)``, ``(Nh, Nw)`` or ``(Nd, Nh, Nw)``.

    Returns:
        ``(prod(grid), D)`` float32 tensor, tokens in row-major grid order.
    """
    nd = len(grid)
    per_axis = (width // (2 * nd)) * 2
    coords = np.meshgrid(*[np.arange(g, dtype=np.float64) for g in grid], indexing="ij")
    parts = [_sincos_1d(per_axis, c) for c in coords]
    emb = np.concatenate(parts, axis=1)
    if emb.shape[1] < width:
        emb = np.concatenate([emb, np.zeros((emb.shape[0], width - emb.shape[1]))], axis=1)
    return torch.from_numpy(emb).float()


def resample_pos_embed(pos: torch.Tensor, old_grid: Sequence[int], new_grid: Sequence[int]) -> torch.Tensor:
    """Interpolate a grid of positional embeddings to another grid size.

    Args:
        pos: ``(1, prod(old_grid), D)`` embeddings in row-major grid order.
        old_grid / new_grid: grid sizes with the same number of axes (1, 2 or 3).

    Returns:
        ``(1, prod(new_grid), D)``; ``pos`` itself when the grids are equal.
    """
    old_grid, new_grid = tuple(int(g) for g in old_grid), tuple(int(g) for g in new_grid)
    if old_grid == new_grid:
        return pos
    if len(old_grid) != len(new_grid):
        raise ValueError(f"cannot resample a {len(old_grid)}-D grid to {len(new_grid)}-D")
    mode = {1: "linear", 2: "bicubic", 3: "trilinear"}[len(old_grid)]
    d = pos.shape[-1]
    grid = pos.reshape(1, *old_grid, d).movedim(-1, 1).float()
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    out = F.interpolate(grid, size=new_grid, mode=mode, **kwargs)
    return out.movedim(1, -1).reshape(1, -1, d).to(pos.dtype)
