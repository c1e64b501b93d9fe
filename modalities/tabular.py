"""Clinical tables as a modality (``tabular``): age, sex, labs, diagnosis codes, with values missing.

The cell of a sample is not one manifest column but the row's **feature columns**, declared by
the options ``features`` (names or ``fnmatch`` patterns such as ``"lab_*"``) less ``exclude``;
with ``table`` they come from a second table joined on ``join_on`` (``patient_id`` or ``id``).
``id``, ``patient_id``, ``split`` and the label columns of a task (:func:`check_label_not_feature`)
are never features.

:meth:`TabularAdapter.fit` (the training rows) fixes, per feature column:

* **numeric** (every present value parses as a number): mean and standard deviation of the
  training values; a value is standardised, ``(v - mean) / std``, clipped to ``±clip``;
* **categorical** (any other, or named in ``categorical``): a vocabulary of the values held by at
  least ``min_patients`` distinct patients; any other value is the column's own *unknown* token;
* **codes** (named in ``codes``): multi-valued cells ``I10|E11.9`` split on ``code_separator``,
  each code learnt as a category; up to ``max_codes`` codes per cell.

The statistics and vocabularies are saved with the checkpoint (``tabular_features.json``), with
the vocabulary rule; a value of fewer patients never enters a vocabulary (no identifiers).

Tensors (``preprocess``), for ``F`` feature columns and ``K = max_codes``:
``{"x": (F, 1 + K) float32, "mask": (F,) int64}``. ``x[f, 0]`` is the standardised value of a
numeric feature (0 otherwise), ``x[f, 1:]`` the global vocabulary ids of a categorical (one id)
or code feature (0 = padding). ``mask[f]`` is 1 when feature ``f`` was measured and 0 when it is
missing: a missing feature is no token at all — nothing is imputed. A row whose features are all
missing has no tabular input (the modality is absent for it).
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from medfm.errors import ConfigError, DataError
from medfm.input_files import open_bounded
from medfm.modality import ModalityAdapter, Record
from medfm.registry import register_modality

from . import tabular_tower  # noqa: F401  (registers the "tabular" tower)

#: columns that are never features (identifiers, the split, the label columns `medfm manifest` writes)
RESERVED_COLUMNS = ("id", "patient_id", "split", "label", "labels")
STATE_FILE = "tabular_features.json"
PAD, FIRST_ID = 0, 1  # id 0 pads code slots; each column's ids start with its unknown token


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def _as_float(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def check_label_not_feature(adapter: Any, label_columns: Iterable[str]) -> None:
    """:class:`ConfigError` when a task's label column is (or would be) a feature of a tabular adapter."""
    if getattr(adapter, "name", None) != "tabular" and not isinstance(adapter, TabularAdapter):
        return
    for label in label_columns:
        if label and adapter.is_feature(str(label)):
            raise ConfigError(f"tabular: the label column {label!r} is one of the features "
                              f"(features: {adapter.options['features']}); add it to exclude")


@register_modality("tabular")
class TabularAdapter(ModalityAdapter):
    """Clinical table features: numeric (standardised), categorical and multi-valued codes, with a missing mask.

    Options: ``features`` (names/patterns, required), ``exclude``, ``categorical``, ``codes``,
    ``code_separator`` (``"|"``), ``max_codes`` (8), ``min_patients`` (5), ``clip`` (10),
    ``missing_values`` (strings read as missing), ``table`` + ``join_on`` (a joined table),
    ``pool`` (``"mean"``).
    """

    name = "tabular"
    input_kind = "value"
    suffixes = ()
    suffix_priority = 80  # reads no file: chosen for no suffix
    #: the cell is built from the row's feature columns: the manifest needs no ``tabular`` column
    reads_row = True
    defaults: Dict[str, Any] = {
        "features": [],
        "exclude": [],
        "categorical": [],
        "codes": [],
        "code_separator": "|",
        "max_codes": 8,
        "min_patients": 5,
        "clip": 10.0,
        "missing_values": ["", "na", "n/a", "nan", "none", "null", "unknown", "?"],
        "table": None,
        "join_on": "patient_id",
        "pool": "mean",
    }
    mask_ratio = 0.3  # TIP corrupts 30% of the features

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.options
        if isinstance(o["features"], str):
            o["features"] = [o["features"]]
        for key in ("exclude", "categorical", "codes"):
            if isinstance(o[key], str):
                o[key] = [o[key]]
        if int(o["max_codes"]) < 1 or int(o["min_patients"]) < 1:
            raise ConfigError("tabular: max_codes and min_patients must be at least 1")
        self._missing = {str(s).strip().lower() for s in o["missing_values"]}
        self.columns: List[str] = []  # fitted feature columns, in order
        self.kinds: List[str] = []  # "num" | "cat" | "codes" per column
        self.stats: Dict[str, Tuple[float, float]] = {}
        self.vocab: Dict[str, Dict[str, int]] = {}  # column -> value -> global id
        self.ranges: List[Tuple[int, int]] = []  # [start, end) of each column's ids
        self._table: Optional[Dict[str, Dict[str, Any]]] = None

    # ----------------------------------------------------------- columns
    def is_feature(self, column: str) -> bool:
        """Whether ``column`` is a feature by the options (fitted or not)."""
        o = self.options
        if column in RESERVED_COLUMNS or _matches(column, o["exclude"]):
            return False
        return column in self.columns or _matches(column, o["features"])

    def _candidates(self, row: Mapping[str, Any]) -> List[str]:
        return [c for c in row if isinstance(c, str) and self.is_feature(c)]

    def _joined(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        """The row of the joined table (``table`` + ``join_on``), or the manifest row itself."""
        if not self.options["table"]:
            return row
        if self._table is None:
            import pandas as pd  # deferred: only for a joined table

            path = Path(str(self.options["table"])).expanduser()
            key = str(self.options["join_on"])
            try:
                sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
                with open_bounded(path, what="joined table") as fh:  # capped by max_file_mb
                    df = pd.read_csv(fh, sep=sep, dtype=str, keep_default_na=False)
            except (OSError, ValueError) as e:
                raise DataError(f"cannot read the joined table: {e}", source=str(path)) from None
            if key not in df.columns:
                raise DataError(f"joined table has no column {key!r} (join_on)", source=str(path), field=key)
            if df[key].duplicated().any():
                raise DataError(f"joined table has repeated {key!r} values; one row per key", source=str(path), field=key)
            self._table = {str(k): r for k, r in zip(df[key], df.to_dict("records"))}
        key = row.get(self.options["join_on"])
        return self._table.get(str(key), {}) if key is not None else {}

    def source_from_row(self, row: Mapping[str, Any], column: str) -> Any:
        """``{feature column: raw value}`` of the row (``None`` when every feature is missing)."""
        src = self._joined(row)
        cols = self.columns or self._candidates(src)
        values = {c: src.get(c) for c in cols}
        return values if any(not self._is_missing(v) for v in values.values()) else None

    def _is_missing(self, value: Any) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return True
        return isinstance(value, str) and value.strip().lower() in self._missing

    def _codes(self, value: Any) -> List[str]:
        return [c.strip() for c in str(value).split(self.options["code_separator"]) if c.strip()]

    # ----------------------------------------------------------- fitting
    def fit(self, values: Iterable[Any], patient_ids: Optional[Sequence[Any]] = None) -> None:
        """Fix the feature columns, their kinds, numeric statistics and vocabularies from training rows.

        ``values``: the ``{column: value}`` cells of :meth:`source_from_row`; ``patient_ids[i]``
        the patient of ``values[i]`` (without ids each row is its own patient).
        """
        o = self.options
        if not o["features"]:
            raise ConfigError("tabular: give the feature columns (option features: names or patterns)")
        rows = [v for v in values if isinstance(v, Mapping)]
        if not rows:
            raise DataError("tabular: no training row has a feature value", field="features")
        pids = list(patient_ids) if patient_ids is not None else [None] * len(rows)
        pids = [p if p is not None else f"row{i}" for i, p in enumerate(pids)]
        columns = sorted({c for r in rows for c in r if self.is_feature(c)})
        if not columns:
            raise ConfigError(f"tabular: no column matches features {o['features']}")
        self.columns, self.kinds, self.stats, self.vocab, self.ranges = [], [], {}, {}, []
        next_id = FIRST_ID
        for col in columns:
            present = [(r[col], p) for r, p in zip(rows, pids) if col in r and not self._is_missing(r[col])]
            if not present:
                continue  # never measured in training: no feature
            if _matches(col, o["codes"]):
                kind = "codes"
            elif _matches(col, o["categorical"]):
                kind = "cat"
            else:
                nums = [_as_float(v) for v, _ in present]
                kind = "num" if all(n is not None for n in nums) else "cat"
            self.columns.append(col)
            self.kinds.append(kind)
            if kind == "num":
                arr = np.array([float(v) for v, _ in present], dtype=np.float64)
                std = float(arr.std())
                self.stats[col] = (float(arr.mean()), std if std > 1e-12 else 1.0)
                self.ranges.append((0, 0))
                continue
            holders: Dict[str, set] = {}
            for v, p in present:
                for token in (self._codes(v) if kind == "codes" else [str(v).strip()]):
                    holders.setdefault(token, set()).add(p)
            kept = sorted(t for t, ps in holders.items() if len(ps) >= int(o["min_patients"]))
            start = next_id  # start = the column's unknown token
            self.vocab[col] = {t: start + 1 + i for i, t in enumerate(kept)}
            next_id = start + 1 + len(kept)
            self.ranges.append((start, next_id))
        self.vocab_size = next_id

    @property
    def fitted(self) -> bool:
        return bool(self.columns)

    def _require_fit(self) -> None:
        if not self.fitted:
            raise ConfigError("tabular: the adapter is not fitted (fit it on the training rows, or load a checkpoint)")

    # ----------------------------------------------------------- reading
    def read(self, source: Any, *, sample_id: Optional[str] = None, row: Optional[Mapping[str, Any]] = None) -> Record:
        """``{column: value}`` (or a manifest row) → ``Record((F, 1 + K) float32, meta{"mask": (F,)})``."""
        self._require_fit()
        if not isinstance(source, Mapping):
            raise DataError("tabular input must be the row's feature values", source=sample_id, field="tabular")
        K = int(self.options["max_codes"])
        clip = float(self.options["clip"])
        x = np.zeros((len(self.columns), 1 + K), dtype=np.float32)
        mask = np.zeros(len(self.columns), dtype=np.int64)
        unknown = 0
        for f, (col, kind) in enumerate(zip(self.columns, self.kinds)):
            value = source.get(col)
            if self._is_missing(value):
                continue
            mask[f] = 1
            if kind == "num":
                v = _as_float(value)
                if v is None:
                    raise DataError(f"value {str(value)[:20]!r} of numeric feature {col!r} is not a number",
                                    source=sample_id, field=col)
                mean, std = self.stats[col]
                x[f, 0] = float(np.clip((v - mean) / std, -clip, clip))
                continue
            start = self.ranges[f][0]
            tokens = self._codes(value)[:K] if kind == "codes" else [str(value).strip()]
            ids = [self.vocab[col].get(t, start) for t in tokens]
            unknown += sum(i == start for i in ids)
            x[f, 1:1 + len(ids)] = ids
        if not mask.any():
            raise DataError("every tabular feature is missing", source=sample_id, field="tabular")
        return Record(x, {"mask": mask, "n_present": int(mask.sum()), "n_unknown_values": unknown,
                          "columns": self.columns, "kinds": self.kinds, "ranges": self.ranges})

    def preprocess(self, record: Record, *, train: bool = False, rng: Optional[np.random.Generator] = None) -> Dict[str, Any]:
        """→ ``{"x": (F, 1 + K) float32, "mask": (F,) int64}`` (1 = measured)."""
        return {"x": torch.from_numpy(np.ascontiguousarray(record.data, dtype=np.float32)),
                "mask": torch.from_numpy(np.asarray(record.meta["mask"], dtype=np.int64))}

    # ------------------------------------------------------------ model
    def tower_config(self) -> Dict[str, Any]:
        self._require_fit()
        return {"type": "tabular", "kinds": list(self.kinds), "ranges": [list(r) for r in self.ranges],
                "vocab_size": int(self.vocab_size), "max_codes": int(self.options["max_codes"]),
                "pool": self.options["pool"], "masked": {"mask_ratio": float(self.mask_ratio)}}

    def state(self) -> Dict[str, Any]:
        """What :meth:`fit` learnt, as saved in the checkpoint (``tabular_features.json``)."""
        return {"columns": self.columns, "kinds": self.kinds,
                "numeric": {c: {"mean": m, "std": s} for c, (m, s) in self.stats.items()},
                "vocabularies": self.vocab, "ranges": self.ranges, "vocab_size": getattr(self, "vocab_size", 0),
                "vocabulary_rule": {"min_patients": int(self.options["min_patients"]),
                                    "rule": "a category or code is learnt when at least min_patients distinct "
                                            "training patients hold it; others map to the column's unknown token"},
                "fitted_on": "training split"}

    def save_pretrained(self, directory: os.PathLike) -> None:
        self._require_fit()
        Path(directory, STATE_FILE).write_text(json.dumps(self.state(), indent=1, sort_keys=True))

    def load_pretrained(self, directory: os.PathLike) -> None:
        from medfm.config_files import load_data_file  # deferred: only when a checkpoint is loaded

        path = Path(directory, STATE_FILE)
        if not path.is_file():
            raise DataError(f"{STATE_FILE} missing: the tabular adapter's statistics are not saved", source=str(directory))
        s = load_data_file(path, kind="json")
        self.columns, self.kinds = list(s["columns"]), list(s["kinds"])
        self.stats = {c: (float(v["mean"]), float(v["std"])) for c, v in s["numeric"].items()}
        self.vocab = {c: {str(k): int(i) for k, i in v.items()} for c, v in s["vocabularies"].items()}
        self.ranges = [tuple(int(i) for i in r) for r in s["ranges"]]
        self.vocab_size = int(s["vocab_size"])

    def cache_signature(self, row: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        sig = super().cache_signature(row)
        sig["state"] = self.state() if self.fitted else None  # statistics change the tensors
        return sig
