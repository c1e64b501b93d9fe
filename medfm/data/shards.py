"""Preprocessed WebDataset shards of a cohort: writing them once, reading them anywhere (fsspec).

Layout of a shard directory (local path or any fsspec URL: ``file://``, ``s3://``, ``gs://``, ``memory://``)::

    plan.json              what the shards are made of: manifest hash, modalities and their
                           preprocessing signatures, shard size (written first; a resumed run must match)
    shard-000000.tar       WebDataset tar: per sample, members sharing the key ``<row index:010d>``:
        KEY.json               {"id", "patient_id", "index" (manifest row), "row" (the manifest row),
                                "meta": {modality: non-tensor metadata}, "values": {modality: inline value},
                                "errors": [[id, modality, reason]]}
                           (a row with no modality at all is counted as empty, not stored)
        KEY.<mod>.safetensors  eval-mode preprocessed tensors of a file modality ("x", ["mask"], ...)
    shard-000000.json      sidecar of a committed shard: samples, rows covered, counts per modality,
                           bytes, the unreadable samples/modalities of those rows
    index.json             written last: every shard with its counts, totals per modality, the
                           unreadable samples listed, the errors per modality ({"id", "modality",
                           "reason", "row": manifest row}), label vocabularies

File modalities (CT, OCT, X-ray, ECG) are stored after the deterministic (eval) preprocessing —
what :class:`~medfm.data.cache.PreprocessCache` caches — so training applies only the adapters'
``augment()``. Inline modalities (text, DNA) are stored as their cell value and tokenised at load
time, because their token ids depend on the tokenizer a run fits.

A shard is committed by renaming its ``.tar.tmp`` and then writing its sidecar, so a killed run
resumes after the last committed shard (:func:`write_shards` with the same arguments).

Reading the shards without medfm, with webdataset's own pipeline: JSON members decode by
webdataset's default handlers, the tensor members with safetensors' ``load`` (one handler)::

    import safetensors.torch, webdataset as wds
    ds = wds.WebDataset("DIR/shard-{000000..000003}.tar", shardshuffle=False).decode(
        wds.handle_extension("safetensors", safetensors.torch.load))
    # each sample: {"__key__", "json": {"id", "patient_id", "index", "row", "meta", "values", "errors"},
    #               "<modality>.safetensors": {"x": tensor, ...}} (tensors as eval preprocessing gives them)

:func:`wds_decoder` is that handler (``.decode(medfm.data.shards.wds_decoder)``).
"""
from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import fsspec
import numpy as np
import pandas as pd
import torch
from braceexpand import braceexpand
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from webdataset import TarWriter
from webdataset.tariterators import group_by_keys, tar_file_iterator

from ..errors import ConfigError, DataError, MedFMError
from .dataset import ManifestDataset, augmentation_rng
from .manifest import is_missing
from .dataset import build_label_vocab
from .skips import SkipLedger

log = logging.getLogger("medfm.data")

FORMAT = "medfm-shards"
FORMAT_VERSION = 1
TAR_OVERHEAD = 1024  # tar header + padding per member, for the size budget


def wds_decoder(key: str, data: bytes) -> Optional[Dict[str, torch.Tensor]]:
    """webdataset handler for the ``<modality>.safetensors`` members (``WebDataset(url).decode(wds_decoder)``).

    Same as ``wds.handle_extension("safetensors", safetensors.torch.load)``: ``None`` for other members,
    which webdataset's default handlers then decode.
    """
    return st_load(data) if key.lower().endswith(".safetensors") or key.lower() == "safetensors" else None


def parse_size(text: Any) -> int:
    """``"1GB"``, ``"256MB"``, ``"512k"`` or an integer → bytes (powers of 1024)."""
    if isinstance(text, (int, float)):
        return int(text)
    s = str(text).strip().upper().rstrip("B").rstrip("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        return int(float(s[:-1]) * units[s[-1]]) if s and s[-1] in units else int(float(s))
    except (ValueError, IndexError):
        raise ConfigError(f"cannot read size {text!r}; write e.g. 1GB, 256MB or a number of bytes") from None


def _fs(url: str):
    fs, root = fsspec.core.url_to_fs(str(url))
    return fs, root.rstrip("/")


def _json_safe(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return None if isinstance(v, float) and v != v else v
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def _signature(adapter) -> Dict[str, Any]:
    return json.loads(json.dumps(adapter.cache_signature(None), sort_keys=True, default=str))


def _identity(x):
    return x


@dataclass
class ShardIndex:
    """The content of ``index.json`` plus where it lives."""

    root: str
    info: Dict[str, Any]
    fs: Any = field(repr=False, default=None)

    @property
    def shards(self) -> List[Dict[str, Any]]:
        return [s for s in self.info["shards"] if s.get("name")]

    def url(self, name: str) -> str:
        return self.fs.unstrip_protocol(posixpath.join(self.root, name))

    @property
    def modalities(self) -> Dict[str, Dict[str, Any]]:
        return self.info["modalities"]


def open_index(spec: str) -> ShardIndex:
    """Open a shard set: a directory/URL holding ``index.json``, or a brace pattern of its shards
    (``s3://bucket/ct/shard-{000000..000099}.tar``: the index of their folder, restricted to them)."""
    spec = str(spec)
    pattern = spec.endswith(".tar") or "{" in spec
    base = posixpath.dirname(spec) if pattern else spec
    fs, root = _fs(base)
    path = posixpath.join(root, "index.json")
    if not fs.exists(path):
        raise DataError("no index.json: not a finished medfm shard directory (run `medfm shard` to completion)",
                        source=fs.unstrip_protocol(path))
    try:
        info = json.loads(fs.cat_file(path))
    except Exception as e:
        raise DataError(f"unreadable shard index: {e}", source=fs.unstrip_protocol(path)) from None
    if info.get("format") != FORMAT:
        raise DataError("not a medfm shard index (format tag missing)", source=fs.unstrip_protocol(path))
    if pattern:
        wanted = {posixpath.basename(p) for p in braceexpand(posixpath.basename(spec))}
        known = {s["name"] for s in info["shards"] if s.get("name")}
        unknown = sorted(wanted - known)
        if unknown:
            raise DataError(f"shard(s) not in the index: {unknown[:5]}", source=spec)
        info = dict(info, shards=[s for s in info["shards"] if s.get("name") in wanted])
    return ShardIndex(root, info, fs)


def iter_shard(index: ShardIndex, name: str, *, select: Optional[Callable[[str], bool]] = None
               ) -> Iterator[Dict[str, Any]]:
    """Raw samples of one shard: ``{"__key__", "json": bytes, "<mod>.safetensors": bytes, ...}``."""
    url = index.url(name)
    try:
        with fsspec.open(url, "rb") as fh:
            def files():
                for f in tar_file_iterator(fh, select_files=select):
                    f["__url__"] = url
                    yield f
            yield from group_by_keys(files())
    except MedFMError:
        raise
    except Exception as e:
        raise DataError(f"unreadable shard: {type(e).__name__}: {e}", source=url) from None


def _where(raw: Mapping[str, Any], member: str) -> str:
    """``"<shard url> member <key>.<member>"``: where a raw sample's member lives, for messages."""
    return f"{raw.get('__url__', '?')} member {raw.get('__key__', '?')}.{member}"


def sample_record(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """The decoded ``KEY.json`` record of a raw shard sample.

    :class:`DataError` naming the shard, the member and the sample key when the member is missing
    or cannot be decoded (not UTF-8 JSON, or without the ``id``/``index`` every record has).
    """
    blob = raw.get("json")
    if blob is None:
        raise DataError("sample has no .json member", source=_where(raw, "json"))
    try:
        rec = json.loads(blob)
        if not isinstance(rec, dict):
            raise ValueError(f"a JSON {type(rec).__name__}, not an object")
        rec["id"], rec["index"] = str(rec["id"]), int(rec["index"])
    except (ValueError, TypeError, KeyError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"undecodable sample record ({type(e).__name__}: {e})", source=_where(raw, "json")) from None
    return rec


def decode_sample(raw: Mapping[str, Any], adapters: Mapping[str, Any], modalities: Mapping[str, Dict[str, Any]],
                  *, train: bool, seed: int, epoch: int, label_index: Mapping[str, Mapping[str, int]]
                  ) -> Dict[str, Any]:
    """A raw shard sample → a :class:`~medfm.data.ManifestDataset`-style item.

    The augmentation of a modality uses :func:`~medfm.data.dataset.augmentation_rng` with the
    manifest row ``index``, exactly as manifest training with a preprocessing cache does.
    A modality that fails (an adapter error, or a ``.safetensors`` member that does not decode)
    is logged, listed in ``errors`` and dropped from the sample; a sample whose ``.json`` member
    does not decode is logged and returned skipped (both messages name the shard and the member).
    """
    try:
        rec = sample_record(raw)
    except DataError as e:
        key = str(raw.get("__key__", "?"))
        log.warning("skipping sample %s: %s", key, e)
        return {"skipped": True, "id": key, "errors": [(key, "json", str(e))]}
    sid, index, row = rec["id"], int(rec["index"]), rec.get("row") or {}
    inputs, errors = {}, [tuple(e) for e in rec.get("errors", [])]
    for mod, adapter in adapters.items():
        kind = modalities.get(mod, {}).get("kind")
        try:
            if kind == "tensor":
                blob = raw.get(f"{mod}.safetensors")
                if blob is None:
                    continue
                try:
                    item = dict(st_load(blob))
                except Exception as e:  # noqa: BLE001 - safetensors' own SafetensorError and friends
                    raise DataError(f"undecodable tensor member ({type(e).__name__}: {e})",
                                    source=f"{_where(raw, f'{mod}.safetensors')} (sample {sid})") from None
                item.update(rec.get("meta", {}).get(mod, {}))
            elif kind == "value":
                value = rec.get("values", {}).get(mod)
                if is_missing(value):
                    continue
                item = adapter.load(value, train=False, sample_id=sid, row=row)
            else:
                continue
            if train:
                item = adapter.augment(item, augmentation_rng(seed, epoch, index, mod))
            inputs[mod] = item
        except MedFMError as e:
            log.warning("skipping %s of sample %s: %s", mod, sid, e)
            errors.append((sid, mod, str(e)))
    if not inputs:
        return {"skipped": True, "id": sid, "errors": errors}
    labels = {}
    for col, lookup in label_index.items():
        v = row.get(col)
        labels[col] = -1 if is_missing(v) else lookup.get(str(v), -1)
    return {"id": sid, "patient_id": rec["patient_id"], "index": index, "inputs": inputs, "labels": labels,
            "errors": errors}


def check_adapters(index: ShardIndex, adapters: Mapping[str, Any]) -> None:
    """Refuse to train a modality from shards preprocessed with other options (:class:`ConfigError`)."""
    for mod, adapter in adapters.items():
        entry = index.modalities.get(mod)
        if entry is None:
            continue  # not in the shards: absent everywhere
        if entry["kind"] == "tensor" and entry["signature"] != _signature(adapter):
            raise ConfigError(f"shards in {index.root} hold {mod} preprocessed with {entry['signature']['options']}, "
                              f"the model's {mod} adapter uses {_signature(adapter)['options']}; re-shard with the "
                              f"model's options")


# ------------------------------------------------------------------ writing
class _ShardWriter:
    def __init__(self, fs, root: str, number: int):
        self.fs, self.root, self.number = fs, root, number
        self.name = f"shard-{number:06d}.tar"
        self.tmp = posixpath.join(root, self.name + ".tmp")
        self.fh = fs.open(self.tmp, "wb")
        self.tar = TarWriter(self.fh, encoder=False, mtime=0.0)
        self.n, self.bytes, self.counts = 0, 0, {}
        self.first_row: Optional[int] = None

    def write(self, sample: Dict[str, bytes], index: int, mods: Sequence[str]) -> None:
        self.tar.write(sample)
        self.n += 1
        self.bytes += sum(len(v) + TAR_OVERHEAD for k, v in sample.items() if k != "__key__")
        for m in mods:
            self.counts[m] = self.counts.get(m, 0) + 1

    def commit(self, first_row: int, last_row: int, errors: List[Dict[str, Any]], unreadable: List[str],
               n_empty: int) -> Dict[str, Any]:
        self.tar.close()
        self.fh.close()
        name = None
        if self.n:
            self.fs.mv(self.tmp, posixpath.join(self.root, self.name))
            name = self.name
        else:
            self.fs.rm(self.tmp)
        side = {"number": self.number, "name": name, "n_samples": self.n, "first_row": first_row,
                "last_row": last_row, "counts": self.counts, "bytes": self.bytes, "errors": errors,
                "unreadable": unreadable, "n_empty": n_empty}
        self.fs.pipe_file(posixpath.join(self.root, f"shard-{self.number:06d}.json"), json.dumps(side).encode())
        return side


def write_shards(df: pd.DataFrame, adapters: Mapping[str, Any], out: str, *, shard_size: Any = "1GB",
                 max_samples: Optional[int] = None, columns: Optional[Mapping[str, str]] = None,
                 label_columns: Sequence[str] = (), num_workers: int = 0, progress: bool = True,
                 on_commit: Optional[Callable[[Dict[str, Any]], None]] = None,
                 data_root: Optional[str] = None, confine: bool = True,
                 max_skip_fraction: Optional[float] = None) -> ShardIndex:
    """Read and preprocess (eval mode) every row of ``df`` once and write WebDataset shards to ``out``.

    Args:
        adapters: ``{modality: adapter}`` (fitted when they need it; inline modalities are stored raw).
        shard_size: a shard is closed once its payload reaches this size (``"1GB"``).
        max_samples: also close a shard after this many samples.
        label_columns: columns whose sorted distinct values are recorded in the index
            (every column is kept in each sample's ``row``).
        num_workers: DataLoader workers that read and preprocess.
        on_commit: called with each committed shard's sidecar (progress reporting, tests).
        data_root, confine: where path cells may lead (``data.root``, ``data.confine_paths``;
            :mod:`medfm.data.confine`).
        max_skip_fraction: the largest share of the rows holding one of the modalities that may have an
            unreadable cell (``None``: 0.5). Above it — or with no sample written — the set is not finished:
            :class:`~medfm.errors.UnusableDataError` with a summary by reason, and no ``index.json``
            (the committed shards stay; a rerun with a higher limit finishes the set without re-reading).

    Resumes after the last committed shard when ``out`` holds a matching ``plan.json``.
    Returns the :class:`ShardIndex` of the finished set.
    """
    fs, root = _fs(out)
    fs.makedirs(root, exist_ok=True)
    columns = {m: (columns or {}).get(m, m) for m in adapters}
    for m, col in columns.items():
        if col not in df.columns:
            raise DataError(f"no column {col!r} for modality {m!r}", source=df.attrs.get("source"), field=col)
    limit = parse_size(shard_size)
    modalities = {m: {"kind": "value" if a.input_kind == "value" else "tensor", "column": columns[m],
                      "signature": _signature(a)} for m, a in adapters.items()}
    plan = {"format": FORMAT, "format_version": FORMAT_VERSION, "manifest_sha256": df.attrs.get("sha256"),
            "n_rows": len(df), "modalities": modalities, "shard_size": limit, "max_samples": max_samples}
    plan_path = posixpath.join(root, "plan.json")
    if fs.exists(plan_path):
        old = json.loads(fs.cat_file(plan_path))
        if old != plan:
            raise DataError("the folder holds shards of another manifest or other preprocessing options; "
                            "choose a new --out (or delete it)", source=fs.unstrip_protocol(root))
    else:
        fs.pipe_file(plan_path, json.dumps(plan, sort_keys=True).encode())
    sides = []
    for p in sorted(fs.glob(posixpath.join(root, "shard-*.json"))):
        sides.append(json.loads(fs.cat_file(p)))
    sides.sort(key=lambda s: s["number"])
    start = sides[-1]["last_row"] + 1 if sides else 0
    if sides:
        log.info("resuming: %d committed shard(s), continuing at row %d of %d", len(sides), start, len(df))
    for stale in fs.glob(posixpath.join(root, "shard-*.tar.tmp")):
        fs.rm(stale)

    tensor_adapters = {m: a for m, a in adapters.items() if modalities[m]["kind"] == "tensor"}
    value_mods = [m for m in adapters if modalities[m]["kind"] == "value"]
    records = df.reset_index(drop=True).to_dict("records")
    ds = (ManifestDataset(df, tensor_adapters, train=False, columns=columns, root=data_root,
                                    confine=confine)
          if tensor_adapters else None)
    rows = range(start, len(df))
    it: Any = rows
    parent_logs = ds is not None and bool(num_workers)
    if parent_logs:  # workers read; this process logs what they met (ManifestDataset.log_problems)
        ds.warn = False
    if ds is not None:
        it = DataLoader(ds, batch_size=None, sampler=list(rows), collate_fn=_identity, num_workers=num_workers,
                        prefetch_factor=4 if num_workers else None)
    bar = tqdm(total=len(df), initial=start, desc="shard", unit="sample", disable=not progress)
    writer: Optional[_ShardWriter] = None
    errors: List[Dict[str, Any]] = []
    unreadable: List[str] = []
    first = start
    number = len(sides)
    n_empty = 0
    for i, item in zip(rows, it):
        row = records[i]
        sid = str(row["id"])
        if ds is None:
            item = {"id": sid, "inputs": {}, "errors": []}
        elif parent_logs:
            ds.log_problems(item)
        errs = list(item.get("errors", []))
        inputs = {} if item.get("skipped") else dict(item["inputs"])
        values = {}
        for m in value_mods:
            v = adapters[m].source_from_row(row, columns[m])
            if not is_missing(v):
                values[m] = _json_safe(v)
        if not inputs and not values:
            n_empty += not errs
            if errs:
                unreadable.append(sid)
                for s, m, reason in errs:
                    errors.append({"id": str(s), "modality": m, "reason": reason, "row": i})
            bar.update(1)
            continue
        for s, m, reason in errs:
            errors.append({"id": str(s), "modality": m, "reason": reason, "row": i})
        meta = {m: _json_safe({k: v for k, v in it_.items() if not isinstance(v, torch.Tensor)})
                for m, it_ in inputs.items()}
        rec = {"id": sid, "patient_id": str(row["patient_id"]), "index": i, "row": _json_safe(row), "meta": meta,
               "values": values, "errors": [list(e) for e in errs]}
        sample = {"__key__": f"{i:010d}", "json": json.dumps(rec).encode()}
        for m, it_ in inputs.items():
            sample[f"{m}.safetensors"] = st_save({k: v.contiguous() for k, v in it_.items()
                                                  if isinstance(v, torch.Tensor)})
        if writer is None:
            writer = _ShardWriter(fs, root, number)
        writer.write(sample, i, list(inputs) + list(values))
        bar.update(1)
        if writer.bytes >= limit or (max_samples and writer.n >= max_samples):
            side = writer.commit(first, i, errors, unreadable, n_empty)
            sides.append(side)
            number, writer, errors, unreadable, first, n_empty = number + 1, None, [], [], i + 1, 0
            if on_commit:
                on_commit(side)
    bar.close()
    if writer is not None or errors or unreadable or n_empty:
        writer = writer or _ShardWriter(fs, root, number)
        side = writer.commit(first, len(df) - 1, errors, unreadable, n_empty)
        sides.append(side)
        if on_commit:
            on_commit(side)
    shard_ledger(sides).check(what=f"medfm shard ({len(df)} rows)", knob="--max-skip-fraction F",
                              max_skip_fraction=max_skip_fraction, source=df.attrs.get("source"))
    return _finish(fs, root, df, plan, sides, label_columns)


def shard_ledger(sides: Sequence[Mapping[str, Any]]) -> SkipLedger:
    """The :class:`~medfm.data.skips.SkipLedger` of a shard set from its sidecars (every committed
    shard, those of an interrupted earlier run included): stored samples are used rows, rows with no
    modality are not applicable, unreadable rows are dropped."""
    ledger = SkipLedger(warn=False)  # the reader logged each cell already
    for s in sides:
        for e in s["errors"]:
            ledger.add_error(e["id"], e["modality"], e["reason"])
        unusable = len({e["row"] for e in s["errors"]})
        ledger.add_rows(used=s["n_samples"], not_applicable=s.get("n_empty", 0), dropped=len(s["unreadable"]),
                        unusable=unusable)
    return ledger


def _finish(fs, root: str, df: pd.DataFrame, plan: Dict[str, Any], sides: List[Dict[str, Any]],
            label_columns: Sequence[str]) -> ShardIndex:

    totals: Dict[str, int] = {}
    for s in sides:
        for m, c in s["counts"].items():
            totals[m] = totals.get(m, 0) + c
    modalities = {m: dict(v, count=totals.get(m, 0)) for m, v in plan["modalities"].items()}
    errors = [e for s in sides for e in s["errors"]]
    info = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "manifest": {"source": df.attrs.get("source"), "sha256": plan["manifest_sha256"], "n_rows": len(df)},
            "n_samples": sum(s["n_samples"] for s in sides), "bytes": sum(s["bytes"] for s in sides),
            "modalities": modalities,
            "shards": [{k: s[k] for k in ("name", "n_samples", "counts", "bytes", "first_row", "last_row")}
                       for s in sides if s["name"]],
            "n_empty": sum(s.get("n_empty", 0) for s in sides),
            "n_unreadable": sum(len(s["unreadable"]) for s in sides),
            "unreadable": [i for s in sides for i in s["unreadable"]],
            "n_modality_errors": len(errors), "errors": errors,
            "label_vocab": build_label_vocab(df, label_columns)}
    fs.pipe_file(posixpath.join(root, "index.json"), json.dumps(info, indent=1).encode())
    return ShardIndex(root, info, fs)


def fit_frame(index: ShardIndex) -> pd.DataFrame:
    """The manifest rows stored in the shards (one per stored sample), as a frame.

    Used to fit adapters (tokenizers) when a run trains from shards without its manifest.
    """
    rows = []
    for s in index.shards:
        for raw in iter_shard(index, s["name"], select=lambda n: n.endswith(".json")):
            rows.append(json.loads(raw["json"])["row"])
    df = pd.DataFrame(rows)
    df.attrs["source"] = index.url("index.json")
    return df
