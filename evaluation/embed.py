"""Embed a manifest (or a list of values) with a model; the on-disk embeddings format.

Embeddings file (one format, ``.safetensors``)::

    tensor   "embeddings"   (N, D) float32, L2-normalised, row i belongs to ids[i]
    metadata (strings)      "format": "medfm-embeddings", "format_version": "1",
                            "modality", "model_fingerprint", "model_dir",
                            "ids": JSON list of N sample ids (manifest ``id``),
                            "skipped": JSON list of {"id", "reason"} for unreadable samples,
                            "absent": JSON list of ids whose cell for the modality is empty

Read it back with :func:`load_embeddings` (or ``safetensors.numpy.load_file`` +
``safe_open(...).metadata()``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from medfm.errors import CheckpointError, ConfigError, DataError, MedFMError

from .embed_loader import ValueDataset, inference_loader, inference_threads
from .index import model_fingerprint
import medfm
from medfm.models.init import apply_init, init_fingerprint, model_config_with_init
from medfm.models import resolve_config
from medfm.checkpoint import is_checkpoint
from medfm.data import ManifestDataset, MultiModalCollate, read_manifest, select_split
from medfm.data.skips import ledger_of
import hashlib

FORMAT = "medfm-embeddings"
FORMAT_VERSION = "1"


@dataclass
class Embeddings:
    """``emb (N, D)`` float32 with ``ids (N,)``; ``skipped`` = [{"id", "reason"}]; ``absent`` = [id]."""

    ids: List[str]
    emb: np.ndarray
    skipped: List[Dict[str, str]] = field(default_factory=list)
    absent: List[str] = field(default_factory=list)
    meta: Dict[str, Any] = field(default_factory=dict)


#: fingerprint → imported weight sources of models loaded with ``init`` (copied into results.json)
_INIT_SOURCES: Dict[str, Dict[str, Any]] = {}
#: fingerprint → key reports of imports made at load time (written as init_report.json beside the outputs)
INIT_REPORTS: Dict[str, Dict[str, Any]] = {}


def write_init_report_for(fingerprint: Optional[str], path: Any) -> Optional[Path]:
    """``init_report.json`` at ``path`` when the model of ``fingerprint`` imported weights at load time."""
    rep = INIT_REPORTS.get(fingerprint or "")
    if not rep:
        return None
    p = Path(str(path))
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(rep, indent=2))
    return p


def load_model(model_dir: Any, init: Optional[Dict[str, Any]] = None):
    """``(model in eval mode, fingerprint)`` of a checkpoint directory.

    ``init`` (``{modality: spec}``, the ``--init`` flags) imports tower weights on top: into a
    checkpoint directory's towers, or — when ``model_dir`` is a model config (preset name or YAML)
    rather than a directory — into a model built from it, whose architecture the sources then
    fix (see :mod:`medfm.models.init`). The fingerprint then also covers the sources' sha256.
    """

    d = Path(str(model_dir))
    if init and not is_checkpoint(d):

        model = medfm.create_model(resolve_config(model_config_with_init(str(model_dir), init)))
        base = hashlib.sha256(json.dumps(model.config, sort_keys=True, default=str).encode()).hexdigest()
        fp = init_fingerprint(base, model.init_sources)
        _INIT_SOURCES[fp] = model.init_sources
        INIT_REPORTS[fp] = model.init_reports
        return model.eval(), fp
    if not d.is_dir():
        raise CheckpointError(f"{d}: model directory not found")
    fp = model_fingerprint(d)
    model = medfm.load_pretrained(d)
    if init:
        apply_init(model, init)
        fp = init_fingerprint(fp, {m: model.init_sources[m] for m in init})
        INIT_REPORTS[fp] = model.init_reports
    if getattr(model, "init_sources", None):
        _INIT_SOURCES[fp] = model.init_sources
    model.eval()
    return model, fp


def require_modality(model: Any, modality: str) -> Any:
    """The model's adapter for ``modality`` or a :class:`ConfigError` listing the available ones."""
    adapters = getattr(model, "adapters", {})
    if modality not in adapters:
        raise ConfigError(f"the model has no {modality!r} modality; it has: {', '.join(sorted(adapters)) or '(none)'}")
    return adapters[modality]


def logit_scale(model: Any, cap: float = 100.0) -> float:
    """``exp(model.logit_scale)`` clamped at ``cap`` (CLIP's convention); 100 when absent."""
    ls = getattr(model, "logit_scale", None)
    return float(min(cap, float(torch.exp(ls.detach()).item()))) if ls is not None else cap


@torch.inference_mode()
def encode_batch_items(model: Any, modality: str, items: List[Dict[str, Any]]) -> np.ndarray:
    """Collate preprocessed items with the modality's adapter and encode → ``(B, D)`` float32."""
    batch = model.adapters[modality].collate(items)
    z = model.encode(modality, batch["x"], batch.get("mask"))
    return z.float().cpu().numpy()


def encode_values(model: Any, modality: str, values: Sequence[Any], *, batch_size: int = 64,
                  source: str = "query", num_workers: int = 0, threads: Optional[int] = None) -> np.ndarray:
    """Encode raw cells (texts, sequences, file paths) of ``modality`` → ``(N, D)`` float32.

    Any unreadable value raises :class:`DataError` naming it (this is for prompts and queries,
    where skipping silently would change the answer). ``num_workers`` processes read the values
    (default 0: one query or a few prompts load faster here than a worker starts);
    ``threads``: the encoder's (:func:`~.embed_loader.inference_threads`).
    """
    adapter = require_modality(model, modality)
    labels = [v if adapter.input_kind == "path" else f"{source}[{j}]" for j, v in enumerate(values)]
    ds = ValueDataset(adapter, list(values), labels)
    out = []
    with inference_threads(threads):
        for items in inference_loader(ds, list, batch_size=batch_size, workers=num_workers):
            out.append(encode_batch_items(model, modality, items))
    if not out:
        return np.zeros((0, getattr(model, "embed_dim", 0)), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)


def embed_manifest(model: Any, df: pd.DataFrame, modality: str, *, batch_size: int = 32,
                   base_dir: Optional[Any] = None, column: Optional[str] = None, num_workers: Optional[int] = None,
                   threads: Optional[int] = None, cache_dir: Optional[Any] = None, progress: bool = True,
                   root: Optional[Any] = None, confine: bool = True) -> Embeddings:
    """Embed every row of ``df`` that holds ``modality``.

    Rows whose cell is empty are listed in ``absent``; rows that cannot be read are
    skipped and listed with their reason in ``skipped`` (never silently dropped).
    ``root``/``confine``: where path cells may lead (``data.root``, ``data.confine_paths``;
    :mod:`medfm.data.confine`). ``num_workers`` (``--workers``) processes read and preprocess while
    this one encodes with ``threads`` (``--threads``) intra-op threads under ``torch.inference_mode``;
    ``None`` chooses from the cores (:mod:`.embed_loader`). Workers do not change the result; another
    thread count changes it by float rounding only (≤ 1e-6, tested).
    ``cache_dir``: the on-disk preprocessing cache training uses (``data.cache_dir``;
    :class:`medfm.data.cache.PreprocessCache`), read and filled here.

    Returns:
        :class:`Embeddings` with ``emb (N_ok, embed_dim)`` in manifest order.
    """

    adapter = require_modality(model, modality)
    col = column or modality
    if col not in df.columns and not getattr(adapter, "reads_row", False):  # tabular: the row's feature columns
        raise DataError(f"manifest has no column {col!r} for modality {modality!r}",
                        source=df.attrs.get("source", "manifest"), field=col)
    adapters = {modality: adapter}
    ds = ManifestDataset(df, adapters, train=False, columns={modality: col}, base_dir=base_dir, root=root,
                         confine=confine, cache_dir=cache_dir)
    dl = inference_loader(ds, MultiModalCollate(adapters), batch_size=batch_size, workers=num_workers)
    if dl.num_workers:  # workers read; this process logs what they met
        ds.warn = False
    bar = tqdm(total=len(ds), desc=f"embed {modality}", unit="sample", disable=not progress)
    with inference_threads(threads):
        emb = encode_batches(model, modality, dl, bar=bar, on_batch=ds.log_problems if dl.num_workers else None)
    bar.close()
    seen = set(emb.ids) | {s["id"] for s in emb.skipped}
    emb.absent = [str(i) for i in df["id"] if str(i) not in seen]
    return emb


@torch.inference_mode()
def encode_batches(model: Any, modality: str, batches: Iterable[Dict[str, Any]], *, bar: Any = None,
                   on_batch: Optional[Callable[[Dict[str, Any]], None]] = None) -> Embeddings:
    """Encode the ``modality`` rows of :class:`~medfm.data.MultiModalCollate` batches, in order
    (``on_batch(batch)`` first, e.g. to log what worker processes met).

    The batches' ``errors`` become ``skipped`` ({"id", "reason"}); ``absent`` is left empty (the
    caller knows which rows it asked for). Returns ``emb (N_present, embed_dim)`` float32.
    """
    ids: List[str] = []
    embs: List[np.ndarray] = []
    skipped: List[Dict[str, str]] = []
    for batch in batches:
        if on_batch is not None:
            on_batch(batch)
        for sid, _mod, reason in batch.get("errors", []):
            skipped.append({"id": str(sid), "reason": str(reason)})
        present = batch["present"].get(modality)
        if present is not None and bool(present.any()):
            inp = batch["inputs"][modality]
            z = model.encode(modality, inp["x"], inp.get("mask"))
            embs.append(z.float().cpu().numpy())
            ids.extend(str(i) for i, p in zip(batch["id"], present.tolist()) if p)
        if bar is not None:
            bar.update(len(batch["id"]) + batch.get("n_skipped", 0))
    dim = getattr(model, "embed_dim", 0)
    emb = np.concatenate(embs).astype(np.float32) if embs else np.zeros((0, dim), dtype=np.float32)
    return Embeddings(ids, emb, skipped, [], {"modality": modality})


def save_embeddings(path: Any, emb: Embeddings, *, modality: str, model_fingerprint: Optional[str] = None,
                    model_dir: Optional[str] = None) -> Path:
    """Write :class:`Embeddings` as one safetensors file (see the module docstring)."""
    p = Path(str(path))
    if p.suffix != ".safetensors":
        raise ConfigError(f"{p}: embeddings are written as .safetensors; name the file *.safetensors")
    p.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "modality": modality,
            "model_fingerprint": model_fingerprint or "", "model_dir": str(model_dir or ""),
            "ids": json.dumps(emb.ids), "skipped": json.dumps(emb.skipped), "absent": json.dumps(emb.absent)}
    save_file({"embeddings": np.ascontiguousarray(emb.emb, dtype=np.float32)}, str(p), metadata=meta)
    write_init_report_for(model_fingerprint, p.with_name(p.stem + ".init_report.json"))
    return p


def load_embeddings(path: Any) -> Embeddings:
    """Read a file written by :func:`save_embeddings`."""
    p = Path(str(path))
    if not p.is_file():
        raise DataError("embeddings file not found", source=str(p))
    try:
        with safe_open(str(p), framework="numpy") as f:
            meta = f.metadata() or {}
            arr = f.get_tensor("embeddings")
    except MedFMError:
        raise
    except Exception as e:
        raise DataError(f"not a medfm embeddings file: {e}", source=str(p)) from None
    if meta.get("format") != FORMAT:
        raise DataError("not a medfm embeddings file (format tag missing)", source=str(p))
    ids = json.loads(meta["ids"])
    return Embeddings(ids, arr, json.loads(meta.get("skipped", "[]")), json.loads(meta.get("absent", "[]")),
                      {k: v for k, v in meta.items() if k not in ("ids", "skipped", "absent")})


# ------------------------------------------------------- helpers for the CLI
def open_manifest(path: Any, *, split: Optional[str] = None, require: Sequence[str] = ()) -> pd.DataFrame:
    """``read_manifest`` + optional split selection + required columns (DataError naming them)."""

    df = read_manifest(path)
    for col in require:
        if col not in df.columns:
            raise DataError(f"column {col!r} not in the manifest (columns: {list(df.columns)})",
                            source=str(path), field=col)
    df = select_split(df, split)
    if len(df) == 0:
        raise DataError(f"no rows{' in split ' + repr(split) if split else ''}", source=str(path))
    return df


def base_record(task: str, model_dir: Any, fingerprint: str, manifest_path: Any, df: pd.DataFrame,
                **extra: Any) -> Dict[str, Any]:
    """The common head of every ``results.json`` (model identity, manifest hash, task)."""
    rec = {"task": task, "model": {"dir": str(model_dir), "fingerprint": fingerprint},
           "manifest": {"path": str(manifest_path), "sha256": df.attrs.get("sha256")}}
    if _INIT_SOURCES.get(fingerprint):  # the weight files the model started from (name + sha256)
        rec["model"]["init_sources"] = _INIT_SOURCES[fingerprint]
    rec.update(extra)
    return rec


def rows_for(df: pd.DataFrame, ids: Sequence[str]) -> pd.DataFrame:
    """Manifest rows of ``ids``, in that order."""
    return df.set_index(df["id"].astype(str)).loc[list(ids)].reset_index(drop=True)


def check_usable(emb: Embeddings, modality: str, *, what: str, max_skip_fraction: Optional[float] = None,
                 source: Any = None, knob: str = "--max-skip-fraction F") -> None:
    """Fail (:class:`~medfm.errors.UnusableDataError`, with a summary by reason) when nothing could be
    embedded or a larger share than ``max_skip_fraction`` (default 0.5) of the rows holding ``modality``
    were unreadable; rows without a cell (``absent``) do not count (:mod:`medfm.data.skips`)."""
    ledger_of(emb.ids, emb.skipped, emb.absent, modality=modality).check(
        what=what, knob=knob, max_skip_fraction=max_skip_fraction, source=None if source is None else str(source))


def report_skipped(emb: Embeddings, what: str, limit: int = 10) -> str:
    """One line on skipped samples for the terminal (ids only, never their content)."""
    if not emb.skipped:
        return ""
    ids = ", ".join(s["id"] for s in emb.skipped[:limit]) + (" …" if len(emb.skipped) > limit else "")
    return f"skipped {len(emb.skipped)} unreadable {what} sample(s): {ids}"
