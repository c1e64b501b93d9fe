"""One line of the demo's metric-vs-chance table (used by the pipeline's steps and by the report)."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import numpy as np


def chance_row(block: str, metric: str, value: float, chance: float, ci: Optional[Sequence[float]] = None,
               n: Optional[int] = None) -> Dict[str, Any]:
    """One line of the summary table; ``beats_chance`` uses the CI's lower bound when there is a CI."""
    lo = None if ci is None else float(ci[0])
    hi = None if ci is None else float(ci[1])
    ref = lo if lo is not None and math.isfinite(lo) else value
    return {"block": block, "metric": metric, "value": float(value), "ci_low": lo, "ci_high": hi,
            "chance": float(chance), "n": n, "beats_chance": bool(np.isfinite(value) and ref > chance)}
