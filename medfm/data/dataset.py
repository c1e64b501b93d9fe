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
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataError, MedFMError
from .cache import PreprocessCache
from .confine import Confinement, confinement
from .manifest import is_missing
from .skips import SkipLedger
from ..modality import file_reference

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


def augmentation_rng(seed: int, epoch: int, index: int, modality: str) -> np.random.Generator:
    """The generator of the train-time augmentation of one cell: seeded by ``(seed, epoch, manifest
    row, modality)``, so views do not depend on worker scheduling, survive a resume, are the same
    from shards and from a manifest, and two columns read by the same kind of adapter (two crops of
    one ECG as contrastive views) get independent augmentations."""
    return np.random.default_rng([int(seed), int(epoch), int(index), zlib.crc32(modality.encode())])


class ManifestDataset(Dataset):
    """One item per manifest row: each present modality read and preprocessed by its adapter.

    Args:
        df: a manifest from :func:`read_manifest`.
        adapters: ``{modality: adapter}``; modalities without a column are absent everywhere.
        train: apply train-time augmentation.
        label_columns: columns turned into integer labels (``label_vocab`` or the manifest's values).
        columns: ``{modality: column}`` when a column is not named after its modality.
        base_dir: folder that relative paths resolve against (default: the manifest's folder).
        data_roots: the data roots recorded in the manifest's sidecar (default: ``df.attrs["data_roots"]``).
        cache_dir: on-disk cache of the deterministic preprocessing (see :class:`PreprocessCache`).
        root: reads of path cells are confined to this folder: a cell that leaves it (``../``,
            an absolute path elsewhere) is a :class:`DataError` for that sample (logged, counted,
            skipped in a run). ``None`` with ``confine=True`` (the default): the manifest's folder
            and the data roots ``medfm manifest`` recorded (``df.attrs["data_roots"]``); a manifest
            of absolute paths only and without recorded roots is not confined. The one rule is
            :mod:`medfm.data.confine`. Both the path and what it leads to (symlinks resolved) must be inside.
        confine: ``False`` turns the confinement off.
        log_first: skips of one reason (:func:`~medfm.data.skips.reason_key`) logged in full; further
            ones are counted and logged at 10, 100, 1000, ... (:mod:`medfm.log_summary`), so a broken
            cohort gives a readable log; a flag's note is logged once. Every skip and flag is still
            counted and reported in the batch.
        seed: base seed; the augmentation of sample ``i`` in epoch ``e`` uses ``(seed, e, i, modality)``,
            so results do not depend on worker scheduling and a resumed run sees the same views.

    An item is ``{"id", "patient_id", "index", "inputs": {mod: {...}}, "labels": {col: int},
    "errors": [(id, modality, reason)], "flags": [(id, modality, note)]}``. A sample of which no
    modality could be read (or that holds none) is ``{"skipped": True, "id", "errors", "flags"}``:
    the collate counts it as skipped (unusable when ``errors`` is not empty, else not applicable).
    A modality that fails is logged and dropped from that sample; the run goes on.
    """

    def __init__(self, df: pd.DataFrame, adapters: Mapping[str, Any], *, train: bool = False,
                 label_columns: Sequence[str] = (), label_vocab: Optional[Dict[str, List[str]]] = None,
                 columns: Optional[Mapping[str, str]] = None, base_dir: Optional[os.PathLike] = None,
                 cache_dir: Optional[os.PathLike] = None, seed: int = 0, root: Optional[os.PathLike] = None,
                 confine: bool = True, data_roots: Optional[Sequence[os.PathLike]] = None, log_first: int = 5):
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
        #: the folders path cells must stay inside (``None``: not confined)
        self.root = self._confinement(root, confine, df.attrs.get("data_roots") if data_roots is None else data_roots)
        #: logs each skipped or flagged cell once per process, summarised per reason
        self._log = SkipLedger(log_first=log_first)
        #: the summarised skip warnings (:class:`~medfm.log_summary.RepeatedWarnings`)
        self.warnings = self._log.skip_warnings
        #: ``False`` when a training loop's own :class:`SkipLedger` logs instead
        self.warn = True

    def _confinement(self, root: Optional[os.PathLike], confine: bool,
                     recorded: Optional[Sequence[os.PathLike]]) -> Optional[Confinement]:
        cols = [self.columns[m] for m, a in self.adapters.items() if a.input_kind == "path"]
        relative = any(isinstance(v, str) and v.strip() and not Path(v.strip()).expanduser().is_absolute()
                       for c in cols if c in self.df.columns for v in self.df[c])
        return confinement(root=root, confine=confine, base_dir=self.base_dir,
                           recorded=recorded or (), has_relative_cells=relative)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._records)

    def _resolve(self, adapter, value: Any, column: Optional[str] = None) -> Any:
        """Relative paths resolve against the manifest's folder — for inline-value modalities too,
        when the cell is a file reference (``seqs.fasta#ID``, ``report.txt``) — and must stay
        inside the data roots when the reads are confined (:mod:`medfm.data.confine`)."""
        if not isinstance(value, str):
            return value
        suffix = ""
        if adapter.input_kind != "path":
            ref = file_reference(value, adapter.suffixes)
            if ref is None:
                return value
            p, suffix = ref[0], (f"#{ref[1]}" if ref[1] else "")
        else:
            p = Path(value).expanduser()
        full = p if p.is_absolute() or self.base_dir is None else self.base_dir / p
        if self.root is not None:
            self.root.check(full, value, column)
        if self.base_dir is None and not p.is_absolute():
            return value
        return str(full) + suffix

    def load_modality(self, index: int, modality: str) -> Optional[Dict[str, Any]]:
        """Read and preprocess one cell; ``None`` when the cell is empty. Raises DataError."""
        row = self._records[index]
        adapter = self.adapters[modality]
        value = adapter.source_from_row(row, self.columns[modality])
        if is_missing(value):
            return None
        sid = row["id"]
        try:
            value = self._resolve(adapter, value, self.columns[modality])
        except DataError as e:
            raise DataError(e.reason, source=sid, field=e.field) from None
        rng = augmentation_rng(self.seed, self.epoch, index, modality)
        if self.cache is not None:
            item = self.cache.get_or_compute(value, adapter.cache_signature(row),
                                             lambda: adapter.load(value, train=False, sample_id=sid, row=row),
                                             is_path=adapter.input_kind == "path")
            return adapter.augment(item, rng) if self.train else item
        return adapter.load(value, train=self.train, rng=rng, sample_id=sid, row=row)

    def log_problems(self, item: Mapping[str, Any]) -> None:
        """Log an item's (or a collated batch's) ``errors`` and ``flags`` through this dataset's ledger.

        For loaders whose worker processes read the samples: there ``warn`` is off (a worker's log
        would escape the ledger's once-then-count summary and the caller's log handlers), and the
        process that receives the items logs them here.
        """
        for sid, mod, reason in item.get("errors", ()):
            self._log.add_error(sid, mod, str(reason))
        for sid, mod, note in item.get("flags", ()):
            self._log.add_flag(sid, mod, str(note))

    def __getitem__(self, index: int) -> Dict[str, Any]:
        row = self._records[index]
        sid = row["id"]
        inputs, errors, flags = {}, [], []
        for mod in self.adapters:
            try:
                item = self.load_modality(index, mod)
            except MedFMError as e:
                if self.warn:
                    self._log.add_error(sid, mod, str(e))
                errors.append((sid, mod, str(e)))
                continue
            if item is not None:
                if "flags" in item:  # usable but suspicious input: logged and counted, not skipped
                    item = dict(item)
                    for msg in item.pop("flags") or ():
                        if self.warn:
                            self._log.add_flag(sid, mod, str(msg))
                        flags.append((sid, mod, str(msg)))
                inputs[mod] = item
        labels = {}
        for col in self.label_columns:
            v = row.get(col)
            labels[col] = -1 if is_missing(v) else self._label_index[col].get(str(v), -1)
        out = {"id": sid, "patient_id": row["patient_id"], "index": index, "inputs": inputs,
               "labels": labels, "errors": errors, "flags": flags}
        if not inputs:
            return {"skipped": True, "id": sid, "errors": errors, "flags": flags}
        return out


class MultiModalCollate:
    """Batch dataset items: per modality, the present rows stacked by its adapter + presence masks.

    Output::

        {"id": [str] * B, "patient_id": [str] * B, "index": LongTensor(B),
         "present": {mod: BoolTensor(B)},
         "inputs": {mod: adapter.collate(rows of samples that have mod)},
         "labels": {col: LongTensor(B)  (-1 = missing)},
         "keys": {mod: LongTensor(B)  (-1 = absent or no key)},
         "n_skipped": int, "errors": [(id, modality, reason)], "flags": [(id, modality, warning)],
         "n_not_applicable": int (skipped rows holding none of the modalities),
         "n_unusable": int (rows with at least one unreadable cell)}

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
        flags = [f for it in items if it for f in it.get("flags", [])]
        kept = [it for it in items if it is not None and not it.get("skipped")]
        n_skipped = len(items) - len(kept)
        # rows holding none of the modalities are not skips of unusable data (medfm.data.skips)
        n_not_applicable = sum(1 for it in items if it is None or (it.get("skipped") and not it.get("errors")))
        n_unusable = sum(1 for it in items if it is not None and it.get("errors"))
        batch: Dict[str, Any] = {
            "id": [it["id"] for it in kept],
            "patient_id": [it["patient_id"] for it in kept],
            "index": torch.tensor([it["index"] for it in kept], dtype=torch.long),
            "present": {}, "inputs": {}, "labels": {}, "keys": {},
            "n_skipped": n_skipped, "n_not_applicable": n_not_applicable, "n_unusable": n_unusable,
            "errors": errors, "flags": flags,
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


def manifest_loader(dataset: ManifestDataset, *, batch_size: int, seed: Optional[int] = None, shuffle: bool = False,
                    sampler: Optional[Sampler] = None, num_workers: int = 0, drop_last: bool = False,
                    pin_memory: bool = False, prefetch_factor: Optional[int] = None,
                    adapters: Optional[Mapping[str, Any]] = None) -> DataLoader:
    """The DataLoader over a :class:`ManifestDataset` (pretraining, fine-tuning and embedding build theirs here).

    Batches are collated by :class:`MultiModalCollate` of ``adapters`` (default: the dataset's).
    With ``seed`` the loader draws from its own ``torch.Generator`` (shuffling, worker seeds), so
    creating and iterating it leaves the global RNG alone (MAE masks draw from it and a resume
    restores it); without, torch's default (the global RNG) is kept.
    """
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=shuffle, sampler=sampler,
                      num_workers=int(num_workers or 0), collate_fn=MultiModalCollate(adapters or dataset.adapters),
                      drop_last=drop_last, pin_memory=pin_memory,
                      prefetch_factor=prefetch_factor if num_workers else None,
                      generator=None if seed is None else torch.Generator().manual_seed(int(seed)))


def move_batch(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    """Move every tensor of a collated batch to ``device``."""
    def mv(v):
        if isinstance(v, torch.Tensor):
            return v.to(device, non_blocking=True)
        if isinstance(v, dict):
            return {k: mv(x) for k, x in v.items()}
        return v
    return {k: mv(v) for k, v in batch.items()}
