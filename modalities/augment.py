"""Train-time augmentation of preprocessed images and volumes, drawn from an explicit
``numpy.random.Generator`` (so a worker's seed decides every draw): flips and intensity jitter."""
from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np
import torch


def random_flip(x: torch.Tensor, dims: Sequence[int], rng: np.random.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each of ``dims`` independently with probability ``p``."""
    flip = [d for d in dims if rng.random() < p]
    return torch.flip(x, flip) if flip else x


def intensity_jitter(x: torch.Tensor, rng: np.random.Generator, *, scale: float = 0.1, shift: float = 0.1) -> torch.Tensor:
    """``x * (1 + u1) + u2`` with ``u1 ~ U(-scale, scale)``, ``u2 ~ U(-shift, shift)``."""
    a = 1.0 + float(rng.uniform(-scale, scale))
    b = float(rng.uniform(-shift, shift))
    return x * a + b


def flip_and_jitter(item: Dict[str, Any], rng: np.random.Generator, *, width_dim: int, hflip: float,
                    jitter: float) -> Dict[str, Any]:
    """Train-time view of a preprocessed image or volume: left-right flip with probability
    ``hflip`` along ``width_dim`` of ``item["x"]``, then intensity jitter of size ``jitter``."""
    x = item["x"]
    if hflip:
        x = random_flip(x, [width_dim], rng, p=hflip)
    if jitter:
        x = intensity_jitter(x, rng, scale=jitter, shift=jitter)
    return {**item, "x": x.contiguous()}
