"""A Dataset over a manifest that asks each modality adapter to read its column."""
from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..errors import DataError, MedFMError
from .cache import PreprocessCache
from .manifest import is_missing

log = logging.getLogger("medfm.data")

#: item key an adapter may set to an int ≥ 0 equal for identical content (duplicate-aware contrastive targets)
CONTENT_KEY = "content_key"


def build_label_vocab(df: pd.DataFrame, columns: Iterable[str]) -> Dict[str, List[str]]:
    """Sorted distinct non-empty values of each label column."""
    vocab = {}
    for col in columns:
        if col not in df.columns:
            raise DataError(f"label column {col!r} not in the manifest", source=df.attrs.get("source"), field=col)
        vocab[col] = sorted({str(v) for v in df[col] if not is_missing(v)})
    return vocab


class ManifestDataset(Dataset):
    """One item per manifest row: each present modality read and preprocessed by its adapter.

    Args:
        df: a manifest from :func:`read_manifest`.
        adapters: ``{modality: adapter}``; modalities without a column are absent everywhere.
        train: apply train-time augmentation.
        label_columns: columns turned into integer labels (``label_vocab`` or the manifest's values).
        columns: ``{modality: column}`` when a column is not named after its modality.
        base_dir: folder that relative paths resolve against (default: the manifest's folder).
        cache_dir: on-disk cache of the deterministic preprocessing (see :class:`PreprocessCache`).
        seed: base seed; the augmentation of sample ``i`` in epoch ``e`` uses ``(seed, e, i, modality)``,
            so results do not depend on worker scheduling and a resumed run sees the same views.

    An item is ``{"id", "patient_id", "index", "inputs": {mod: {...}}, "labels": {col: int},
    "errors": [(id, modality, reason)]}``, or ``None`` when no modality could be read
    (the collate counts it as skipped). A modality that fails is logged and dropped
    from that sample; the run goes on.
    """

    def __init__(self, df: pd.DataFrame, adapters: Mapping[str, Any], *, train: bool = False,
                 label_columns: Sequence[str] = (), label_vocab: Optional[Dict[str, List[str]]] = None,
                 columns: Optional[Mapping[str, str]] = None, base_dir: Optional[os.PathLike] = None,
                 cache_dir: Optional[os.PathLike] = None, seed: int = 0):
        self.df = df.reset_index(drop=True)
        self.adapters = dict(adapters)
        self.train = train
        self.columns = {m: (columns or {}).get(m, m) for m in self.adapters}
        self.label_columns = list(label_columns)
        self.label_vocab = label_vocab or build_label_vocab(self.df, self.label_columns)
        self._label_index = {c: {v: i for i, v in enumerate(vals)} for c, vals in self.label_vocab.items()}
        bd = base_dir if base_dir is not None else df.attrs.get("base_dir")
        self.base_dir = Path(bd) if bd else None
        self.cache = PreprocessCache(cache_dir) if cache_dir else None
        self.seed = int(seed)
        self.epoch = 0
        self._records = self.df.to_dict("records")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._records)

    def _resolve(self, adapter, value: Any) -> Any:
        if adapter.input_kind != "path" or not isinstance(value, str) or self.base_dir is None:
            return value
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else self.base_dir / p)

    def load_modality(self, index: int, modality: str) -> Optional[Dict[str, Any]]:
        """Read and preprocess one cell; ``None`` when the cell is empty. Raises DataError."""
        row = self._records[index]
        adapter = self.adapters[modality]
        value = adapter.source_from_row(row, self.columns[modality])
        if is_missing(value):
            return None
        value = self._resolve(adapter, value)
        sid = row["id"]
        # one stream per modality: two columns read by the same kind of adapter (two crops of one
        # ECG as contrastive views) get independent augmentations
        rng = np.random.default_rng([self.seed, self.epoch, index, zlib.crc32(modality.encode())])
        if self.cache is not None:
            item = self.cache.get_or_compute(value, adapter.cache_signature(row),
                                             lambda: adapter.load(value, train=False, sample_id=sid, row=row),
                                             is_path=adapter.input_kind == "path")
            return adapter.augment(item, rng) if self.train else item
        return adapter.load(value, train=self.train, rng=rng, sample_id=sid, row=row)

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        row = self._records[index]
        sid = row["id"]
        inputs, errors = {}, []
        for mod in self.adapters:
            try:
                item = self.load_modality(index, mod)
            except MedFMError as e:
                log.warning("skipping %s of sample %s: %s", mod, sid, e)
                errors.append((sid, mod, str(e)))
                continue
            if item is not None:
                inputs[mod] = item
        labels = {}
        for col in self.label_columns:
            v = row.get(col)
            labels[col] = -1 if is_missing(v) else self._label_index[col].get(str(v), -1)
        out = {"id": sid, "patient_id": row["patient_id"], "index": index, "inputs": inputs,
               "labels": labels, "errors": errors}
        if not inputs:
            return {"skipped": True, "id": sid, "errors": errors}
        return out


class MultiModalCollate:
    """Batch dataset items: per modality, the present rows stacked by its adapter + presence masks.

    Output::

        {"id": [str] * B, "patient_id": [str] * B, "index": LongTensor(B),
         "present": {mod: BoolTensor(B)},
         "inputs": {mod: adapter.collate(rows of samples that have mod)},
         "labels": {col: LongTensor(B)  (-1 = missing)},
         "keys": {mod: LongTensor(B)  (-1 = absent or no key)},
         "n_skipped": int, "errors": [(id, modality, reason)]}

    ``keys`` are the items' ``"content_key"`` entries (an int ≥ 0 that is equal for
    identical content, e.g. the hash of a normalised report; see
    :data:`CONTENT_KEY`), taken out of the inputs; the contrastive objectives treat
    equal keys as positives. Every modality gets a row of keys (all -1 when its adapter
    sets none), so every rank of a distributed run gathers the same ones.
    """

    def __init__(self, adapters: Mapping[str, Any]):
        self.adapters = dict(adapters)

    def __call__(self, items: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        errors = [e for it in items if it for e in it.get("errors", [])]
        kept = [it for it in items if it is not None and not it.get("skipped")]
        n_skipped = len(items) - len(kept)
        batch: Dict[str, Any] = {
            "id": [it["id"] for it in kept],
            "patient_id": [it["patient_id"] for it in kept],
            "index": torch.tensor([it["index"] for it in kept], dtype=torch.long),
            "present": {}, "inputs": {}, "labels": {}, "keys": {},
            "n_skipped": n_skipped, "errors": errors,
        }
        for mod, adapter in self.adapters.items():
            present = torch.tensor([mod in it["inputs"] for it in kept], dtype=torch.bool)
            batch["present"][mod] = present
            rows = [it["inputs"][mod] for it in kept if mod in it["inputs"]]
            batch["keys"][mod] = torch.tensor([int(it["inputs"][mod].get(CONTENT_KEY, -1)) if mod in it["inputs"]
                                               else -1 for it in kept], dtype=torch.long)
            rows = [{k: v for k, v in r.items() if k != CONTENT_KEY} if CONTENT_KEY in r else r for r in rows]
            if rows:
                batch["inputs"][mod] = adapter.collate(rows)
        if kept:
            for col in kept[0]["labels"]:
                batch["labels"][col] = torch.tensor([it["labels"][col] for it in kept], dtype=torch.long)
        return batch


def move_batch(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    """Move every tensor of a collated batch to ``device``."""
    def mv(v):
        if isinstance(v, torch.Tensor):
            return v.to(device, non_blocking=True)
        if isinstance(v, dict):
            return {k: mv(x) for k, x in v.items()}
        return v
    return {k: mv(v) for k, v in batch.items()}
