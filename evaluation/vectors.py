"""Row-wise L2 normalisation of embedding arrays (numpy), the one definition evaluation code uses."""
from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """``x / max(||x||, eps)`` along ``axis``: (N, D) → (N, D) unit rows (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)
