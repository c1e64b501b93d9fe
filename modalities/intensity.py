"""Image intensity for the imaging adapters: named HU windows, per-sample normalisation, CLAHE.

:func:`hu_windows` (MONAI) lives in :mod:`medfm.modalities.volume_ops` with the other MONAI
operations, so that a 2D adapter importing this module never loads MONAI.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from medfm.errors import ConfigError

#: Named HU windows as (center, width).
HU_WINDOWS: Dict[str, Tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft_tissue": (40.0, 400.0),
    "abdomen": (60.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}


def resolve_windows(windows: Sequence[Any]) -> List[Tuple[float, float]]:
    """Names (``"lung"``) or ``[center, width]`` pairs → list of (center, width)."""
    out = []
    for w in windows:
        if isinstance(w, str):
            if w not in HU_WINDOWS:
                raise ConfigError(f"unknown HU window {w!r}; known: {sorted(HU_WINDOWS)}")
            out.append(HU_WINDOWS[w])
        else:
            c, wd = (float(v) for v in w)
            if wd <= 0:
                raise ConfigError(f"HU window width must be > 0, got {w!r}")
            out.append((c, wd))
    return out


def normalize(x: torch.Tensor, mode: str, *, mean: Optional[Sequence[float]] = None,
              std: Optional[Sequence[float]] = None, eps: float = 1e-6) -> torch.Tensor:
    """Per-sample intensity normalisation of ``(C, ...)``.

    ``"minmax"`` → [0, 1] over the whole sample; ``"zscore"`` → zero mean, unit std
    per channel; ``"meanstd"`` → ``(x - mean[c]) / std[c]`` with given constants;
    ``"none"`` → unchanged.
    """
    if mode == "none":
        return x
    if mode == "minmax":
        lo, hi = x.min(), x.max()
        return (x - lo) / (hi - lo).clamp_min(eps)
    if mode == "zscore":
        dims = tuple(range(1, x.ndim))
        return (x - x.mean(dim=dims, keepdim=True)) / x.std(dim=dims, keepdim=True).clamp_min(eps)
    if mode == "meanstd":
        shape = (-1,) + (1,) * (x.ndim - 1)
        m = torch.as_tensor(mean, dtype=x.dtype).view(shape)
        s = torch.as_tensor(std, dtype=x.dtype).view(shape)
        return (x - m) / s
    raise ConfigError(f"unknown normalisation {mode!r}; use minmax, zscore, meanstd or none")


def clahe(img: np.ndarray, *, clip_limit: float = 0.01, tile: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a [0, 1] image ``(H, W)`` or ``(H, W, 3)``.

    Uses scikit-image's ``equalize_adapthist`` or OpenCV's CLAHE, whichever is
    installed (both come with the ``medfm[oct-vendor]`` extra); otherwise a
    :class:`ConfigError` says what to install.
    """
    try:
        from skimage.exposure import equalize_adapthist  # deferred: optional extra medfm[oct-vendor]

        kernel = (max(1, img.shape[0] // tile), max(1, img.shape[1] // tile))
        return equalize_adapthist(np.clip(img, 0, 1), kernel_size=kernel, clip_limit=clip_limit).astype(np.float32)
    except ImportError:
        pass
    try:
        import cv2  # deferred: optional extra medfm[oct-vendor] (the fallback)
    except ImportError:
        raise ConfigError("clahe=True needs scikit-image or opencv-python (pip install scikit-image)") from None
    u16 = (np.clip(img, 0, 1) * 65535).astype(np.uint16)
    op = cv2.createCLAHE(clipLimit=max(1.0, clip_limit * 100), tileGridSize=(tile, tile))
    if u16.ndim == 3:
        out = np.stack([op.apply(u16[..., c]) for c in range(u16.shape[-1])], -1)
    else:
        out = op.apply(u16)
    return out.astype(np.float32) / 65535.0
