"""What an adapter sees in one file: canonical metadata and a PNG preview (``medfm inspect``).

Modality-agnostic: it calls ``adapter.read`` (native units, metadata) and
``adapter.preprocess(train=False)`` (the tensor the encoder receives), and draws the
preview from the tensor's layout:

* ``(C, D, H, W)`` volumes (CT, OCT): the three mid-slices of the first channel after
  windowing/normalisation, plus the raw mid-slice in native units;
* ``(C, H, W)`` images (X-ray, fundus): the image after VOI LUT/windowing and resizing;
* ``(12, T)`` signals (ECG): one trace per lead, derived leads dashed, missing leads named;
* ``(L,)`` token ids (DNA, text): token counts and the first tokens.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from medfm.errors import DataError, MedFMError, UsageError
from medfm.modality import check_format, file_reference
from medfm.registry import get_modality

from .choose import choose_modality
from .dicom_series import split_series_reference
from .ecg_leads import LEADS


def guess_modality(path: Any, modalities: Optional[Dict[str, Any]] = None) -> str:
    """The adapter of a file, from the adapters' declared facts (:func:`medfm.modalities.choose.choose_modality`)."""
    return choose_modality(path, modalities)


def inspect_source(path: Any, modality: Optional[str] = None, adapters: Optional[Dict[str, Any]] = None
                   ) -> Dict[str, Any]:
    """What ``medfm inspect PATH`` shows, without the preview: :func:`inspect_file` with the adapter
    named ``modality``, else the one :func:`guess_modality` chooses among ``adapters`` (instances;
    default: the registry's adapters with their default options)."""
    if adapters is None:
        name = modality or guess_modality(split_series_reference(path)[0])
        adapter = get_modality(name)
    else:
        name = modality or guess_modality(split_series_reference(path)[0], adapters)
        if name not in adapters:
            raise UsageError(f"the model has no {name!r} modality; it has {', '.join(sorted(adapters))}")
        adapter = adapters[name]
    return inspect_file(path, adapter)


def _describe(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype == bool and value.ndim == 1:
            return int(value.sum())
        return f"array{tuple(value.shape)}"
    if isinstance(value, (list, tuple)) and len(value) > 16:
        return f"list[{len(value)}]"
    if isinstance(value, float):
        return round(value, 4)
    return value


def inspect_file(path: Any, adapter: Any) -> Dict[str, Any]:
    """``{"modality", "source", "read": {...}, "meta": {...}, "tensor": {...}[, "notes": [...]]}`` and the
    arrays to draw. ``notes`` are the reader's flags (a NIfTI read as CT, a DICOM without Modality)."""
    src = str(path)
    if adapter.input_kind == "path":
        check_format(split_series_reference(src)[0], adapter.name, adapter.suffixes)  # FOLDER#UID: a series
    elif file_reference(src, adapter.suffixes) is None:
        raise DataError(f"not a {adapter.name} file reference; supported: {' '.join(adapter.suffixes)} "
                        "(FILE or FILE#RECORD_ID)", source=src)
    record = adapter.read(src)
    info: Dict[str, Any] = {"modality": adapter.name, "source": src}
    data = record.data
    if isinstance(data, np.ndarray):
        finite = data[np.isfinite(data)] if data.size else data
        info["read"] = {"shape": list(data.shape), "dtype": str(data.dtype),
                        "min": float(finite.min()) if finite.size else None,
                        "max": float(finite.max()) if finite.size else None,
                        "mean": float(finite.mean()) if finite.size else None}
    else:
        info["read"] = {"length": len(str(data)), "head": str(data)[:80]}
    meta = {k: _describe(v) for k, v in record.meta.items() if k not in ("affine", "flags")}
    if record.meta.get("flags"):
        info["notes"] = [str(f) for f in record.meta["flags"]]
    for key in ("lead_mask", "derived_mask"):
        if key in record.meta and hasattr(adapter, "options"):
            mask = np.asarray(record.meta[key], dtype=bool)
            meta["leads_found" if key == "lead_mask" else "leads_derived"] = [LEADS[i] for i in np.flatnonzero(mask)]
            meta.pop(key, None)
    info["meta"] = meta
    try:
        item = adapter.preprocess(record, train=False)
    except MedFMError as e:  # text without a fitted tokenizer (give --model)
        info["tensor"] = {"note": str(e)}
        return {"info": info, "record": record, "item": None}
    x = item["x"]
    tensor = {"shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", "")}
    if x.is_floating_point():
        tensor.update(min=float(x.min()), max=float(x.max()))
    mask = item.get("mask")
    if not x.is_floating_point():
        tensor["tokens"] = int(mask.sum()) if mask is not None else int(x.numel())
    else:
        tensor["tokens"] = n_patch_tokens(adapter)
    info["tensor"] = tensor
    return {"info": info, "record": record, "item": item}


def n_patch_tokens(adapter: Any) -> Optional[int]:
    """Tokens the encoder sees for a patch embedder (``prod(input_size // patch_size)``), else ``None``."""
    try:
        emb = adapter.tower_config().get("embedder") or {}
    except Exception:
        return None
    size, patch = emb.get("input_size"), emb.get("patch_size")
    if size is None or patch is None:
        return None
    size = [size] if isinstance(size, int) else list(size)
    patch = [patch] * len(size) if isinstance(patch, int) else list(patch)
    return int(np.prod([s // p for s, p in zip(size, patch)]))


def render_preview(result: Dict[str, Any], out: Any) -> Path:
    """Draw the preview PNG of :func:`inspect_file`'s result (layout chosen by the tensor's shape)."""
    from matplotlib.figure import Figure  # deferred: matplotlib is slow to import and only the preview draws (no pyplot)

    fig = Figure()
    info, item, record = result["info"], result["item"], result["record"]
    title = f"{info['modality']}: {Path(info['source'].partition('#')[0]).name}"
    x = None if item is None else item["x"]
    if x is not None and x.is_floating_point() and x.ndim == 4:  # (C, D, H, W)
        v = x[0].numpy()
        raw = np.asarray(record.data, dtype=np.float32)
        fig.set_size_inches(13, 3.6)
        axes = fig.subplots(1, 4)
        d, h, w = (s // 2 for s in v.shape)
        panels = [(v[d], "axial / B-scan (mid)"), (v[:, h], "coronal (mid)"), (v[:, :, w], "sagittal (mid)"),
                  (raw[raw.shape[0] // 2], f"native mid-slice [{raw.min():.0f}, {raw.max():.0f}]")]
        for ax, (img, name) in zip(axes, panels):
            ax.imshow(img, cmap="gray", aspect="auto")
            ax.set_title(name, fontsize=8)
            ax.axis("off")
    elif x is not None and x.is_floating_point() and x.ndim == 3:  # (C, H, W)
        fig.set_size_inches(4.5, 4.8)
        ax = fig.subplots()
        img = x.numpy()
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_title("after VOI LUT / windowing / resize", fontsize=8)
        ax.axis("off")
    elif x is not None and x.is_floating_point() and x.ndim == 2:  # (leads, T)
        sig = x.numpy()
        derived = set(info["meta"].get("leads_derived") or [])
        present = set(info["meta"].get("leads_found") or LEADS)
        fig.set_size_inches(10, 1.0 * sig.shape[0])
        axes = fig.subplots(sig.shape[0], 1, sharex=True)
        fs = float(getattr(record, "meta", {}).get("fs") or 0) or None
        for i, ax in enumerate(np.atleast_1d(axes)):
            name = LEADS[i] if i < len(LEADS) else str(i)
            ls = "--" if name in derived else "-"
            ax.plot(sig[i], lw=0.6, ls=ls, color="k" if name in present else "0.7")
            ax.set_ylabel(name + (" (derived)" if name in derived else "" if name in present else " (missing)"),
                          rotation=0, ha="right", fontsize=7)
            ax.tick_params(labelsize=6)
        np.atleast_1d(axes)[-1].set_xlabel("sample (after resampling)" + (f"; native fs {fs:g} Hz" if fs else ""))
    else:  # tokens or text
        fig.set_size_inches(8, 2.8)
        ax = fig.subplots()
        ax.axis("off")
        t = info.get("tensor", {})
        lines = [f"characters read: {info['read'].get('length')}", f"tokens: {t.get('tokens', t.get('note'))}"]
        if x is not None:
            ids = x[(item.get("mask") if item.get("mask") is not None else torch.ones_like(x)).bool()].tolist()
            lines.append(f"first ids: {ids[:24]}")
        lines.append(f"head: {info['read'].get('head')}")
        ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8, wrap=True)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(out), dpi=100)
    return out
