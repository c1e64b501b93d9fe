"""The ``finetune`` section of a fine-tuned checkpoint: what it records and how it finds its base.

The folder's files and kinds are :mod:`medfm.checkpoint`'s (``config.json`` with the base model
config and this section; ``adapter_config.json`` + ``adapter_model.safetensors`` for method
``lora``, ``finetuned.safetensors`` for ``full``, ``head.safetensors``; a merged export is a
complete base layout whose section says ``"merged": true``). The section::

    "finetune": {"base_name": ..., "base_relative": ..., "base_sha256": ...,
                 "method": "lora"|"full"|"linear", "modalities": [...],
                 "task": {...}, "head": {...}, "merged": false}

:class:`medfm.finetune.model.FineTunedModel` reads and writes these folders;
:func:`medfm.load_pretrained` hands a folder of kind ``finetuned`` or ``merged`` to it, so such a
folder works with ``medfm embed``, ``zeroshot`` and ``evaluate``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

from .. import checkpoint as ckpt
from ..errors import CheckpointError
from .heads import TaskHead, TaskSpec


def base_sha256(base: os.PathLike) -> str:
    """sha256 (hex) of a base checkpoint's ``model.safetensors``: how a fine-tuned checkpoint pins it."""
    sha = ckpt.weights_sha256(base)
    if sha is None:
        raise CheckpointError(f"{base}: {ckpt.WEIGHTS_NAME} is missing")
    return sha


def write_config(directory: Path, encoder, meta: Dict[str, Any]) -> None:
    """``config.json`` of a fine-tuned directory: the base model config + the ``finetune`` section."""
    ckpt.write_config(directory, ckpt.new_config(encoder.config_with_adapters(), finetune=meta,
                                                 init_sources=getattr(encoder, "init_sources", None) or None))


def finetune_meta(base: os.PathLike, out_dir: os.PathLike, method: str, modalities, task: TaskSpec,
                  head: TaskHead, **extra: Any) -> Dict[str, Any]:
    """The ``finetune`` section of ``config.json`` (base given by its folder name, relative path + hash).

    In memory the section also holds ``"base"``, the base's absolute path on this machine (where
    the model was built or loaded from); :func:`portable_meta` drops it before anything is written.
    """
    base = Path(base).resolve()
    return {"base": str(base), "base_name": base.name, "base_relative": os.path.relpath(base, Path(out_dir).resolve()),
            "base_sha256": ckpt.weights_sha256(base),
            "method": method, "modalities": list(modalities), "task": task.to_dict(), "head": head.config(),
            "merged": False, **extra}


def portable_meta(meta: Dict[str, Any], directory: os.PathLike) -> Dict[str, Any]:
    """The ``finetune`` section as written into ``directory``: no absolute path of this machine.

    ``base_relative`` is recomputed from the in-memory ``base`` (so a model saved elsewhere than it
    was trained still finds its base) and ``base`` itself is left out; the base is identified by
    ``base_name``, ``base_relative`` and ``base_sha256``.
    """
    out = dict(meta)
    base = out.pop("base", None)
    if base:
        base = Path(base).resolve()
        out.setdefault("base_name", base.name)
        try:
            out["base_relative"] = os.path.relpath(base, Path(directory).resolve())
        except ValueError:  # another drive (Windows): no relative path exists
            out["base_relative"] = None
    return out


def resolve_base(directory: Path, meta: Dict[str, Any]) -> Path:
    """The base checkpoint of a fine-tuned directory: its relative path first, then the absolute one
    (``base``, recorded by medfm versions that wrote it)."""
    candidates = []
    if meta.get("base_relative"):
        candidates.append((directory / meta["base_relative"]).resolve())
    if meta.get("base"):
        candidates.append(Path(meta["base"]))
    for c in candidates:
        if ckpt.is_checkpoint(c):
            return c
    raise CheckpointError(f"{directory}: base checkpoint not found (looked at {', '.join(map(str, candidates))}); "
                          "keep the base next to the fine-tuned directory or export with --merge")


def read_finetune_meta(directory: os.PathLike) -> Dict[str, Any]:
    """The full ``config.json`` of a fine-tuned directory; CheckpointError if it is not one."""
    cfg = ckpt.read_config(directory)
    if ckpt.kind_of(cfg) == ckpt.BASE:
        raise CheckpointError(f"{Path(directory) / ckpt.CONFIG_NAME}: not a fine-tuned checkpoint (no 'finetune' section)")
    return cfg
