"""Patient-grouped train / validation / test splits that refuse patient leakage.

Two sources, in this order:

1. the manifest's split column (``train``/``val``/``test``; also ``training``, ``valid``,
   ``validation``, ``dev``, ``eval``, ``holdout``). When it names no validation rows, a
   validation set is carved out of the training patients deterministically.
2. otherwise a deterministic split by patient: patients are ordered by a keyed hash
   ``blake2b(seed:patient_id)`` and cut at the requested fractions, so a patient's
   assignment does not depend on row order and all their samples stay together.

Every result is checked by :func:`check_no_leakage`: a patient in two splits is a
:class:`~medfm.errors.DataError` naming the manifest's (pseudonymous) patient id and a sample.
Fine-tuning (:mod:`medfm.finetune`) and the probes (:mod:`medfm.evaluation.probes`) both split here.
"""
from __future__ import annotations

import hashlib
from typing import Dict, List, Optional, Sequence

import pandas as pd

from .manifest import SPLIT_ALIASES, is_missing
from ..errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
ALIASES = SPLIT_ALIASES


def _patient_order(patients: Sequence[str], seed: int) -> List[str]:
    key = lambda p: hashlib.blake2b(f"{seed}:{p}".encode(), digest_size=8).hexdigest()  # noqa: E731
    return sorted(set(patients), key=lambda p: (key(p), p))


def assign_patients(patients: Sequence[str], fractions: Dict[str, float], seed: int = 0) -> Dict[str, str]:
    """Map each distinct patient to a split, deterministically.

    Args:
        patients: patient ids (repeats allowed).
        fractions: e.g. ``{"val": 0.15, "test": 0.15}``; the rest goes to ``"train"``.
            A split with a positive fraction gets at least one patient when there are
            enough patients to leave one for training.
    Returns:
        ``{patient_id: split}``.
    """
    order = _patient_order(patients, seed)
    n = len(order)
    total = sum(fractions.values())
    if any(f < 0 for f in fractions.values()) or total >= 1.0:
        raise ConfigError(f"split fractions must be >= 0 and sum to < 1, got {fractions}")
    out: Dict[str, str] = {}
    start = 0
    for name, frac in fractions.items():
        k = int(round(frac * n))
        if frac > 0 and k == 0 and n - start > 1:
            k = 1
        k = min(k, max(n - start - 1, 0))
        for p in order[start:start + k]:
            out[p] = name
        start += k
    for p in order[start:]:
        out[p] = "train"
    return out


def check_no_leakage(patient_ids: Sequence, splits: Sequence[str], *, ids: Optional[Sequence] = None,
                     source: Optional[str] = None) -> None:
    """Raise :class:`DataError` when one patient has samples in two splits.

    Args:
        patient_ids / splits: one entry per sample; an empty split name means "not used".
        ids: sample ids, to name an offending sample in the message.
    """
    owner: Dict[str, str] = {}
    first: Dict[str, str] = {}
    leaks: List[str] = []
    ids = list(ids) if ids is not None else [None] * len(list(patient_ids))
    for sid, pid, name in zip(ids, patient_ids, splits):
        name = str(name)
        if not name:
            continue
        prev = owner.setdefault(str(pid), name)
        if prev != name and str(pid) not in first:
            first[str(pid)] = f"patient {str(pid)!r} in {prev!r} and {name!r}" + (f" (sample {sid})" if sid else "")
            leaks.append(str(pid))
    if leaks:
        raise DataError(f"patient leakage: {len(leaks)} patient(s) have samples in several splits, e.g. "
                        f"{'; '.join(first[p] for p in leaks[:3])}; a patient's samples must all be in one split",
                        source=source, field="patient_id")


def _check_frames(splits: Dict[str, pd.DataFrame]) -> None:
    frames = [(name, df) for name, df in splits.items()]
    check_no_leakage([p for _, df in frames for p in df["patient_id"]],
                     [name for name, df in frames for _ in range(len(df))],
                     ids=[i for _, df in frames for i in df["id"]],
                     source=next(iter(splits.values())).attrs.get("source"))


def _subset(df: pd.DataFrame, mask) -> pd.DataFrame:
    out = df[mask].reset_index(drop=True)
    out.attrs.update(df.attrs)
    return out


def make_splits(df: pd.DataFrame, split_column: Optional[str] = "split", val_fraction: float = 0.15,
                test_fraction: float = 0.15, seed: int = 0) -> Dict[str, pd.DataFrame]:
    """Split a manifest into ``{"train", "val", "test"}`` frames grouped by ``patient_id``.

    Args:
        df: a manifest (``read_manifest``).
        split_column: column with the split of each row; ``None`` or an absent column →
            deterministic split by patient with ``val_fraction`` / ``test_fraction``.
        val_fraction: share of training patients held out for validation when the manifest
            gives no validation rows.
        seed: key of the patient hash.
    Raises:
        DataError: unknown split names, rows without a split while others have one, patient leakage.
    """
    source = df.attrs.get("source")
    if split_column and split_column in df.columns:
        values = list(df[split_column])
        empty = [sid for sid, v in zip(df["id"], values) if is_missing(v)]
        if empty and len(empty) < len(values):
            raise DataError(f"{len(empty)} row(s) have no split while others do, e.g. {empty[:5]}",
                            source=source, field=split_column)
        if not empty:
            names = []
            for sid, v in zip(df["id"], values):
                key = str(v).strip().lower()
                if key not in ALIASES:
                    raise DataError(f"unknown split {v!r} of sample {sid}; use one of {sorted(ALIASES)}",
                                    source=source, field=split_column)
                names.append(ALIASES[key])
            names = pd.Series(names, index=df.index)
            splits = {s: _subset(df, names == s) for s in SPLITS}
            _check_frames(splits)
            if len(splits["val"]) == 0 and val_fraction > 0:
                train = splits["train"]
                assign = assign_patients(train["patient_id"], {"val": val_fraction}, seed)
                which = train["patient_id"].map(assign)
                splits["val"] = _subset(train, which == "val")
                splits["train"] = _subset(train, which == "train")
            if len(splits["train"]) == 0:
                raise DataError("the split column names no training rows", source=source, field=split_column)
            return splits
    assign = assign_patients(df["patient_id"], {"test": test_fraction, "val": val_fraction}, seed)
    which = df["patient_id"].map(assign)
    splits = {s: _subset(df, which == s) for s in SPLITS}
    _check_frames(splits)
    return splits
