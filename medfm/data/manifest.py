"""Cohort manifests: one table per cohort, one row per sample (study or visit)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ..errors import DataError
from ..input_files import check_regular, open_bounded, open_regular
from ..io import hash_file
from ..limits import check_file_size
from .confine import recorded_roots

REQUIRED_COLUMNS = ("id", "patient_id")


def _text_table(**kw):
    def read(p: Path) -> pd.DataFrame:
        with open_bounded(p, what="manifest") as fh:  # bounded by max_file_mb while reading; pandas decodes
            return pd.read_csv(fh, dtype=str, keep_default_na=False, **kw)
    return read


def _json_table(lines: bool):
    def read(p: Path) -> pd.DataFrame:
        with open_bounded(p, what="manifest", text=True) as fh:
            return pd.read_json(fh, lines=lines, dtype=False)
    return read


def _parquet(p: Path) -> pd.DataFrame:
    with open_regular(p, what="manifest") as fh:  # a regular file: its size was checked
        return pd.read_parquet(fh)


READERS = {
    ".csv": _text_table(),
    ".tsv": _text_table(sep="\t"),
    ".txt": _text_table(sep="\t"),
    ".jsonl": _json_table(True),
    ".json": _json_table(False),
    ".parquet": _parquet,
    ".pq": _parquet,
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
    check_regular(p, what="manifest")  # a FIFO or a device is named, never opened
    check_file_size(p)
    suffix = "".join(p.suffixes[-2:]) if p.suffixes[-2:] == [".csv", ".gz"] else p.suffix.lower()
    reader = READERS.get(suffix) or (READERS[".csv"] if suffix == ".csv.gz" else None)
    if reader is None:
        raise DataError(f"unknown manifest format {p.suffix!r}; use one of {sorted(READERS)}", source=str(p))
    try:
        df = reader(p)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot read manifest: {e}", source=str(p)) from e
    with open_bounded(p, what="manifest", decompress=False) as fh:
        digest = hash_file(fh).hexdigest()
    df = validate_manifest(df, source=str(p), base_dir=p.parent, modalities=modalities, sha256=digest)
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
    # ids are normalised: surrounding whitespace is not part of an id
    df["id"] = [(str(int(v)) if isinstance(v, float) else str(v)).strip() for v in df["id"]]
    df["patient_id"] = [str(v).strip() for v in df["patient_id"]]
    check_unique_ids(df["id"], source)
    df = df.reset_index(drop=True)
    df.attrs["source"] = source
    df.attrs["base_dir"] = str(base_dir) if base_dir is not None else None
    if sha256 is None:
        sha256 = hashlib.sha256(pd.util.hash_pandas_object(df.astype(str), index=False).values.tobytes()).hexdigest()
    df.attrs["sha256"] = sha256
    return df


def check_unique_ids(ids: Sequence[str], source: str) -> None:
    """Ids (normalised: stripped) must differ beyond case: ``a1`` and ``A1`` name one sample on a
    case-insensitive file system and to a reader, so they are refused as duplicates naming both rows."""
    first: Dict[str, Tuple[int, str]] = {}
    clashes = []
    for i, v in enumerate(ids):
        key = v.casefold()
        if key in first:
            j, w = first[key]
            how = "" if w == v else " (differing only in case)"
            clashes.append(f"rows {j + 1} and {i + 1}: {w!r} and {v!r}{how}")
        else:
            first[key] = (i, v)
    if clashes:
        more = f" and {len(clashes) - 5} more" if len(clashes) > 5 else ""
        raise DataError(f"duplicate sample id(s): {'; '.join(clashes[:5])}{more}; every row needs its own id "
                        "(ids are compared without surrounding spaces and case)", source=source, field="id")


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


#: split names a manifest may use (compared without case and surrounding spaces) → the split they mean
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test", "testing": "test", "eval": "test", "holdout": "test"}


def canonical_split(value) -> Optional[str]:
    """``" TRAIN "`` → ``"train"``, ``"holdout"`` → ``"test"``; ``None`` for an unknown name."""
    return SPLIT_ALIASES.get(str(value).strip().casefold())


def select_split(df: pd.DataFrame, split: Optional[str]) -> pd.DataFrame:
    """Rows whose ``split`` is ``split`` (all rows when ``split`` is None).

    Split names are case-folded and stripped and their aliases mapped (:data:`SPLIT_ALIASES`:
    ``TRAIN`` and ``training`` are ``train``, ``holdout`` is ``test``), as in
    :func:`medfm.data.splits.make_splits`. A value that is none of them is an error listing the
    values found and the known ones, never a silently dropped row.
    """
    if split is None:
        return df
    if "split" not in df.columns:
        raise DataError(f"the manifest has no 'split' column (asked for split {split!r})",
                        source=df.attrs.get("source"), field="split")
    known = ", ".join(sorted(set(SPLIT_ALIASES.values()))) + f" (aliases: {', '.join(sorted(SPLIT_ALIASES))})"
    want = canonical_split(split)
    if want is None:
        raise DataError(f"unknown split {split!r} asked for; known: {known}", source=df.attrs.get("source"),
                        field="split")
    canon = [None if is_missing(v) else canonical_split(v) for v in df["split"]]
    unknown = pd.Series([str(v) for v, c in zip(df["split"], canon) if c is None and not is_missing(v)])
    if len(unknown):
        counts = unknown.value_counts()
        found = ", ".join(f"{v!r} ({n} rows)" for v, n in counts.head(10).items())
        more = f" and {len(counts) - 10} more" if len(counts) > 10 else ""
        raise DataError(f"unknown split value(s) {found}{more}; known: {known}; fix the split column",
                        source=df.attrs.get("source"), field="split")
    out = df[[c == want for c in canon]].reset_index(drop=True)
    out.attrs.update(df.attrs)
    return out
