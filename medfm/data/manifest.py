"""Cohort manifests: one table per cohort, one row per sample (study or visit)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pandas as pd

from ..errors import DataError
from ..io import hash_file
from .confine import recorded_roots

REQUIRED_COLUMNS = ("id", "patient_id")
READERS = {
    ".csv": lambda p: pd.read_csv(p, dtype=str, keep_default_na=False),
    ".tsv": lambda p: pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False),
    ".txt": lambda p: pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False),
    ".jsonl": lambda p: pd.read_json(p, lines=True, dtype=False),
    ".json": lambda p: pd.read_json(p, dtype=False),
    ".parquet": pd.read_parquet,
    ".pq": pd.read_parquet,
}


def is_missing(value) -> bool:
    """True for an empty manifest cell: None, NaN or a blank string."""
    if value is None:
        return True
    if isinstance(value, float) and value != value:
        return True
    return isinstance(value, str) and value.strip() == ""


def read_manifest(path: os.PathLike, modalities: Optional[Iterable[str]] = None) -> pd.DataFrame:
    """Read and validate a manifest (CSV, TSV, JSONL or Parquet).

    Empty cells become ``None`` (the modality or label is absent). ``id`` must be
    unique. The frame's ``attrs["base_dir"]`` is the manifest's folder (relative
    paths in modality columns resolve against it), ``attrs["data_roots"]`` the data roots
    ``medfm manifest`` recorded in its sidecar (:mod:`medfm.data.confine`) and
    ``attrs["sha256"]`` its hash.

    Raises:
        DataError: unreadable file, missing required/modality column, empty, non-scalar or
            duplicate ids (naming the row).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError("manifest not found", source=str(p))
    suffix = "".join(p.suffixes[-2:]) if p.suffixes[-2:] == [".csv", ".gz"] else p.suffix.lower()
    reader = READERS.get(suffix) or (READERS[".csv"] if suffix == ".csv.gz" else None)
    if reader is None:
        raise DataError(f"unknown manifest format {p.suffix!r}; use one of {sorted(READERS)}", source=str(p))
    try:
        df = reader(p)
    except Exception as e:
        raise DataError(f"cannot read manifest: {e}", source=str(p)) from e
    df = validate_manifest(df, source=str(p), base_dir=p.parent, modalities=modalities,
                           sha256=hash_file(p).hexdigest())
    df.attrs["data_roots"] = [str(r) for r in recorded_roots(p)]
    return df


def validate_manifest(df: pd.DataFrame, *, source: str = "<manifest>", base_dir: Optional[os.PathLike] = None,
                      modalities: Optional[Iterable[str]] = None, sha256: Optional[str] = None) -> pd.DataFrame:
    """Check required columns and ids; normalise empty cells to ``None``."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"required column(s) missing: {missing}; columns are {list(df.columns)}", source=source)
    for m in modalities or ():
        if m not in df.columns:
            raise DataError(f"no column for modality {m!r}", source=source, field=m)
    check_ids(df["id"], source)
    df = df.copy().astype(object)
    for col in df.columns:  # empty cells and NaN → None (absent modality / label)
        df[col] = pd.Series([None if is_missing(v) else v for v in df[col]], index=df.index, dtype=object)
    df["id"] = [str(int(v)) if isinstance(v, float) else str(v) for v in df["id"]]
    df["patient_id"] = df["patient_id"].astype(str)
    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise DataError(f"duplicate sample id(s): {list(dup.unique()[:5])}", source=source, field="id")
    df = df.reset_index(drop=True)
    df.attrs["source"] = source
    df.attrs["base_dir"] = str(base_dir) if base_dir is not None else None
    if sha256 is None:
        sha256 = hashlib.sha256(pd.util.hash_pandas_object(df.astype(str), index=False).values.tobytes()).hexdigest()
    df.attrs["sha256"] = sha256
    return df


def check_ids(ids: pd.Series, source: str) -> None:
    """Every id must be a non-empty string or integer; errors name the row (1 = first data row)."""
    for i, v in enumerate(ids):
        if is_missing(v):
            raise DataError(f"row {i + 1}: empty id (every row needs one)", source=source, field="id")
        if isinstance(v, float) and v.is_integer():
            continue  # a JSON number id
        if isinstance(v, bool) or not isinstance(v, (str, int, np.integer)):
            shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
            raise DataError(f"row {i + 1}: id must be a string or an integer, got {type(v).__name__} {shown}",
                            source=source, field="id")


def select_split(df: pd.DataFrame, split: Optional[str]) -> pd.DataFrame:
    """Rows whose ``split`` equals ``split`` (all rows when ``split`` is None)."""
    if split is None:
        return df
    if "split" not in df.columns:
        raise DataError(f"the manifest has no 'split' column (asked for split {split!r})",
                        source=df.attrs.get("source"), field="split")
    out = df[df["split"] == split].reset_index(drop=True)
    out.attrs.update(df.attrs)
    return out
