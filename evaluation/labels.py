"""Label cells for the evaluators: one multi-class column, a ``|``-separated multi-label column,
or several 0/1 columns (``--label-columns A,B,C``)."""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import pandas as pd

from medfm.errors import DataError, UsageError

from .retrieval import split_multi

POSITIVE = {"1", "1.0", "true", "yes", "y", "t"}
NEGATIVE = {"0", "0.0", "false", "no", "n", "f", ""}
#: the column the 0/1 columns are joined into
JOINED = "__labels__"


def parse_label_columns(spec: Optional[str]) -> List[str]:
    cols = [c.strip() for c in (spec or "").split(",") if c.strip()]
    if spec is not None and len(cols) < 1:
        raise UsageError("--label-columns needs comma-separated column names")
    return cols


def join_binary_columns(df: pd.DataFrame, columns: Sequence[str], *, source: str = "manifest") -> List[str]:
    """Rows' 0/1 cells of ``columns`` → ``"A|C"`` strings (names of the positive columns; ``""`` = none).

    Accepted cells: 1/0, true/false, yes/no (any case); an empty cell counts as 0.

    Raises:
        DataError: a missing column or a cell that is not 0/1 (named with its row id).
    """
    for c in columns:
        if c not in df.columns:
            raise DataError(f"label column {c!r} not in the manifest (columns: {list(df.columns)})",
                            source=source, field=c)
    out = []
    for i, row in enumerate(df[list(columns)].itertuples(index=False)):
        pos = []
        for c, v in zip(columns, row):
            s = "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip().lower()
            if s in POSITIVE:
                pos.append(c)
            elif s not in NEGATIVE:
                rid = df["id"].iloc[i] if "id" in df.columns else i
                raise DataError(f"label cell {v!r} is not 0/1", source=f"{source}: row {rid}", field=c)
        out.append("|".join(pos))
    return out


def is_multilabel_column(values: Sequence) -> bool:
    """True when a cell of the column lists several labels (``a|b`` or ``a;b``)."""
    return any(len(split_multi(v)) > 1 for v in values)


def multilabel_targets(values: Sequence, classes: Optional[Sequence[str]] = None):
    """``|``-separated cells → ``(Y (N, C) 0/1, classes)`` (classes sorted unless given)."""
    sets = [split_multi(v) for v in values]
    names = list(classes) if classes is not None else sorted(set().union(*sets)) if sets else []
    return np.array([[int(c in s) for c in names] for s in sets], dtype=np.int64).reshape(len(sets), len(names)), names
