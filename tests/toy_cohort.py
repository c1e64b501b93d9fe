"""A structured synthetic two-modality cohort for engine tests (class → signal shape)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _enc(x: np.ndarray) -> str:
    return ";".join(" ".join(f"{v:.4f}" for v in ch) for ch in x)


def write_toy_manifest(path: Path, n: int = 64, n_classes: int = 4, seed: int = 0, missing_every: int = 5,
                       corrupt: tuple = ()) -> Path:
    """Manifest with ``toy`` (2×32) and ``toyb`` (3×32) signals whose frequency encodes a hidden class.

    ``toyb`` is absent every ``missing_every``-th sample; ids in ``corrupt`` get unreadable cells.
    The ``split`` column is assigned per sample, so patients straddle train and test: tests use it
    as the leakage case that patient-grouped splitting must refuse.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(32)
    rows = []
    for i in range(n):
        c = i % n_classes
        a = np.stack([np.sin(2 * np.pi * (c + 1) * t / 32), np.cos(2 * np.pi * (c + 1) * t / 32)])
        b = np.stack([np.sign(np.sin(2 * np.pi * (c + 1) * t / 32))] * 3)
        a = a + rng.normal(0, 0.3, a.shape)
        b = b + rng.normal(0, 0.3, b.shape)
        sid = f"s{i:03d}"
        rows.append({"id": sid, "patient_id": f"p{i // 2:03d}", "split": "train" if i % 8 else "test",
                     "toy": "oops" if sid in corrupt else _enc(a),
                     "toyb": "" if (missing_every and i % missing_every == 0) else ("bad" if sid in corrupt else _enc(b)),
                     "label": f"class{c}"})
    path = Path(path)
    df = pd.DataFrame(rows)
    if path.suffix == ".parquet":
        df.to_parquet(path)
    elif path.suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    elif path.suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    else:
        df.to_csv(path, index=False)
    return path
