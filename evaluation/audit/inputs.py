"""What the model audits share: a model's paired samples as tensors, report candidates, and budgets in input units.

:func:`load_pairs` reads the rows of a manifest that hold both ``modality`` and ``text`` through the
model's adapters (eval preprocessing) → ``x (N, ...)`` (+ mask) for differentiable encoding, the ids,
patient ids, splits, labels and normalised reports. :func:`input_budget` turns a budget stated in
the data's own units into the model's input units:

* images (``xray``, ``fundus``, ``oct``, ``ct`` with ``meanstd`` normalisation): the adapters scale each
  image to [0, 1] before ``(x - mean) / std``, so ε (a fraction of the intensity range, 1/255 = one
  grey level of an 8-bit image) is ``ε / std`` in input units, with the input clamped to the range
  ``[(0 - mean) / std, (1 - mean) / std]``;
* ECG with per-lead standardisation: ``b`` µV is ``b / 1000 / σ_lead`` per record and lead (σ_lead the
  lead's standard deviation in mV in the record), unbounded range.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from medfm.data.dataset import ManifestDataset
from medfm.data.manifest import is_missing
from medfm.errors import ConfigError, DataError
from medfm.modalities.fingerprints import normalise_text

__all__ = ["Pairs", "encode_texts", "input_budget", "load_pairs"]


@dataclass
class Pairs:
    """Rows with ``modality`` and text: inputs ``x (N, ...)``, ``mask``, and per row ids, patients, splits,
    labels and the normalised report; ``sigma (N, leads)`` (mV) for ECG rows."""

    modality: str
    x: torch.Tensor
    mask: Optional[torch.Tensor]
    ids: List[str]
    patients: List[str]
    splits: List[Optional[str]]
    labels: List[Optional[str]]
    reports: List[str]
    texts: List[str]
    sigma: Optional[torch.Tensor] = None
    skipped: List[Dict[str, str]] = field(default_factory=list)

    def select(self, keep: np.ndarray) -> "Pairs":
        idx = np.flatnonzero(keep)
        t = torch.as_tensor(idx, dtype=torch.long)
        pick = lambda v: [v[i] for i in idx]  # noqa: E731
        return Pairs(self.modality, self.x[t], None if self.mask is None else self.mask[t], pick(self.ids),
                     pick(self.patients), pick(self.splits), pick(self.labels), pick(self.reports), pick(self.texts),
                     None if self.sigma is None else self.sigma[t])


def load_pairs(model: Any, df, modality: str, *, text_column: str = "text", label_column: Optional[str] = "label",
               splits: Optional[List[str]] = None, max_rows: Optional[int] = None, seed: int = 0) -> Pairs:
    """Read the rows of ``df`` with ``modality`` and a report (optionally only ``splits``; at most ``max_rows``,
    drawn by ``seed``) through the model's adapter (eval mode). Unreadable rows are skipped and listed."""
    if modality not in getattr(model, "adapters", {}):
        raise ConfigError(f"the model has no {modality!r} modality; it has {sorted(model.adapters)}")
    rows = [i for i, r in df.iterrows() if not is_missing(r.get(modality)) and not is_missing(r.get(text_column))
            and (splits is None or r.get("split") in splits)]
    if max_rows and len(rows) > max_rows:
        rows = sorted(np.random.default_rng(seed).choice(rows, max_rows, replace=False).tolist())
    sub = df.loc[rows].reset_index(drop=True)
    sub.attrs.update(df.attrs)
    adapter = model.adapters[modality]
    ds = ManifestDataset(sub, {modality: adapter}, train=False)
    items, keep, skipped, sigma = [], [], [], []
    for i in range(len(sub)):
        try:
            item = ds.load_modality(i, modality)
        except DataError as e:
            skipped.append({"id": str(sub.at[i, "id"]), "reason": e.reason[:200]})
            continue
        items.append(item)
        keep.append(i)
        if modality == "ecg":
            src = ds._resolve(adapter, sub.at[i, modality], modality)  # noqa: SLF001 (the dataset's path rule)
            data = np.asarray(adapter.read(src, sample_id=str(sub.at[i, "id"])).data, dtype=np.float64)
            sigma.append(np.nan_to_num(data.std(axis=-1)))
    if not items:
        raise DataError(f"no row holds a readable {modality} input and a {text_column} report", source=df.attrs.get("source"))
    batch = adapter.collate(items)
    sub = sub.loc[keep].reset_index(drop=True)
    texts = [str(t) for t in sub[text_column]]
    return Pairs(modality, batch["x"], batch.get("mask"), [str(v) for v in sub["id"]], [str(v) for v in sub["patient_id"]],
                 [None if is_missing(v) else str(v) for v in sub.get("split", [None] * len(sub))],
                 [None if label_column is None or is_missing(v) else str(v)
                  for v in (sub[label_column] if label_column in sub.columns else [None] * len(sub))],
                 [normalise_text(t) for t in texts], texts,
                 torch.tensor(np.stack(sigma), dtype=torch.float32) if sigma else None, skipped)


@torch.no_grad()
def encode_texts(model: Any, texts: List[str], text_modality: str = "text", batch_size: int = 64) -> torch.Tensor:
    """``(N, D)`` L2-normalised text embeddings."""
    adapter = model.adapters[text_modality]
    out = []
    for s in range(0, len(texts), batch_size):
        batch = adapter.collate([adapter.load(t, train=False, sample_id=f"text[{s + j}]")
                                 for j, t in enumerate(texts[s:s + batch_size])])
        out.append(model.encode(text_modality, batch["x"], batch.get("mask")).float())
    return torch.cat(out)


def input_budget(model: Any, pairs: Pairs, budget: float) -> Tuple[torch.Tensor, Tuple[Optional[float], Optional[float]]]:
    """``(eps broadcastable to x, (lo, hi) input range)`` of a budget in data units (module docstring)."""
    adapter = model.adapters[pairs.modality]
    o = adapter.options
    if pairs.modality == "ecg":
        if o.get("normalize") == "lead":
            eps = (budget / 1000.0) / pairs.sigma.clamp_min(1e-3)
            return eps[:, :, None], (None, None)
        return torch.tensor(budget / 1000.0), (None, None)
    if o.get("normalize") != "meanstd":
        raise ConfigError(f"{pairs.modality}: the image budget needs meanstd normalisation, the adapter uses "
                          f"{o.get('normalize')!r}")
    mean = torch.tensor(o["mean"], dtype=torch.float32)
    std = torch.tensor(o["std"], dtype=torch.float32)
    shape = (1, -1) + (1,) * (pairs.x.ndim - 2)
    mean, std = mean.view(shape), std.view(shape)
    lo, hi = float(((0 - mean) / std).min()), float(((1 - mean) / std).max())
    return budget / std, (lo, hi)


def folder_name(path: Any) -> str:
    """The folder's name only (records never hold a path of this machine)."""
    return Path(str(path)).resolve().name
