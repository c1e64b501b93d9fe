"""Image and volume geometry for the imaging adapters, in torch: 2D resize keeping the aspect and
padding to a square, frame-wise volume resampling, crop/pad (centred or at a random offset).

Reorientation and resampling to a physical voxel size (MONAI) are in
:mod:`medfm.modalities.volume_ops`, so that a 2D adapter importing this module never loads MONAI.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def resize_2d(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(C, H, W)`` → ``(C, size[0], size[1])``, bilinear with antialiasing."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None].float(), size=tuple(int(s) for s in size), mode="bilinear",
                         align_corners=False, antialias=True)[0]


def resize_pad_square(x: torch.Tensor, size: int, *, pad_value: float = 0.0) -> torch.Tensor:
    """Aspect-preserving resize so the long side is ``size``, then centre padding to square.

    ``(C, H, W)`` → ``(C, size, size)``.
    """
    h, w = x.shape[-2:]
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    x = resize_2d(x, (nh, nw))
    ph, pw = size - nh, size - nw
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=pad_value)


def resample_volume(vol: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(C, F, H, W)`` → ``(C, *size)``: 2D antialiased resize of each frame, then
    linear interpolation along the frame (slow) axis; frame order is preserved."""
    c, f, h, w = vol.shape
    nf, nh, nw = (int(s) for s in size)
    if (h, w) != (nh, nw):
        vol = F.interpolate(vol.reshape(c * f, 1, h, w).float(), size=(nh, nw), mode="bilinear",
                            align_corners=False, antialias=True).reshape(c, f, nh, nw)
    if f != nf:
        vol = F.interpolate(vol[None].float(), size=(nf, nh, nw), mode="trilinear", align_corners=False)[0]
    return vol


def crop_or_pad(x: torch.Tensor, size: Sequence[int], *, pad_value: float = 0.0,
                rng: Optional[np.random.Generator] = None) -> torch.Tensor:
    """Crop/pad the trailing ``len(size)`` dims of ``x`` to ``size``.

    Padding is centred. Cropping is centred, or at a random offset drawn from
    ``rng`` (train-time random crop).
    """
    nd = len(size)
    pads: List[int] = []
    for dim, target in zip(range(x.ndim - nd, x.ndim), size):
        n = x.shape[dim]
        if n > target:
            start = int(rng.integers(0, n - target + 1)) if rng is not None else (n - target) // 2
            x = x.narrow(dim, start, int(target))
    for dim, target in zip(reversed(range(x.ndim - nd, x.ndim)), reversed(list(size))):
        d = max(0, int(target) - x.shape[dim])
        pads += [d // 2, d - d // 2]
    if any(pads):
        x = F.pad(x, pads, value=pad_value)
    return x
