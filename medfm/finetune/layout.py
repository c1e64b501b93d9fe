"""Fine-tuned checkpoints: only what was trained, next to a reference to the base checkpoint.

Layout of a fine-tuned directory::

    config.json                  {"format": "medfm", "model": <base model config>,
                                  "finetune": {"base_name": ..., "base_relative": ..., "base_sha256": ...,
                                               "method": "lora"|"full"|"linear", "modalities": [...],
                                               "task": {...}, "head": {...}, "merged": false}}
    adapter_config.json          peft LoraConfig            (method "lora")
    adapter_model.safetensors    peft LoRA weights          (method "lora")
    finetuned.safetensors        the trained encoder tensors (method "full")
    head.safetensors             the task head

A merged export (``export_merged``) is a complete model directory instead
(``model.safetensors`` + ``modalities/`` as ``save_pretrained`` writes them) whose
``config.json`` carries the same ``finetune`` section with ``"merged": true``.

:class:`medfm.finetune.model.FineTunedModel` reads and writes these directories; this module
holds only the layout (file names, the ``finetune`` section, finding and pinning the base).
``MultiModalModel.from_pretrained`` hands any directory whose ``config.json`` has a
``finetune`` key to ``FineTunedModel.from_pretrained`` (a registered checkpoint kind), so
such a directory works with ``medfm embed``, ``zeroshot`` and ``evaluate``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List

from ..errors import CheckpointError
from ..io import hash_file, write_json
from ..models.multimodal import (CONFIG_NAME, FORMAT, FORMAT_VERSION, WEIGHTS_NAME as BASE_WEIGHTS,
                                read_checkpoint_config)
from .heads import TaskHead, TaskSpec

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FULL_WEIGHTS = "finetuned.safetensors"
HEAD_WEIGHTS = "head.safetensors"


def base_sha256(base: os.PathLike) -> str:
    """sha256 (hex) of a base checkpoint's ``model.safetensors``: how a fine-tuned checkpoint pins it."""
    return hash_file(Path(base) / BASE_WEIGHTS).hexdigest()


def write_config(directory: Path, encoder, meta: Dict[str, Any]) -> None:
    """``config.json`` of a fine-tuned directory: the base model config + the ``finetune`` section."""
    cfg = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": encoder.config_with_adapters(),
           "finetune": meta}
    if getattr(encoder, "init_sources", None):  # the weight files the base started from
        cfg["init_sources"] = encoder.init_sources
    write_json(directory / CONFIG_NAME, cfg)


def finetune_meta(base: os.PathLike, out_dir: os.PathLike, method: str, modalities, task: TaskSpec,
                  head: TaskHead, **extra: Any) -> Dict[str, Any]:
    """The ``finetune`` section of ``config.json`` (base given by its folder name, relative path + hash).

    In memory the section also holds ``"base"``, the base's absolute path on this machine (where
    the model was built or loaded from); :func:`portable_meta` drops it before anything is written.
    """
    base = Path(base).resolve()
    return {"base": str(base), "base_name": base.name, "base_relative": os.path.relpath(base, Path(out_dir).resolve()),
            "base_sha256": base_sha256(base) if (base / BASE_WEIGHTS).is_file() else None,
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


def weight_files(directory: os.PathLike) -> List[Path]:
    """The weight files a (fine-tuned or merged) checkpoint directory holds, in a fixed order.

    For fingerprints: ``config.json`` (which records the base's ``base_sha256``) plus
    these files identify a fine-tuned model completely.
    """
    d = Path(directory)
    names = (BASE_WEIGHTS, ADAPTER_CONFIG, ADAPTER_WEIGHTS, FULL_WEIGHTS, HEAD_WEIGHTS)
    return [d / n for n in names if (d / n).is_file()]


def resolve_base(directory: Path, meta: Dict[str, Any]) -> Path:
    """The base checkpoint of a fine-tuned directory: its relative path first, then the absolute one
    (``base``, recorded by medfm versions that wrote it)."""
    candidates = []
    if meta.get("base_relative"):
        candidates.append((directory / meta["base_relative"]).resolve())
    if meta.get("base"):
        candidates.append(Path(meta["base"]))
    for c in candidates:
        if (c / CONFIG_NAME).is_file():
            return c
    raise CheckpointError(f"{directory}: base checkpoint not found (looked at {', '.join(map(str, candidates))}); "
                          "keep the base next to the fine-tuned directory or export with --merge")


def read_finetune_meta(directory: os.PathLike) -> Dict[str, Any]:
    """The full ``config.json`` of a fine-tuned directory; CheckpointError if it is not one."""
    cfg = read_checkpoint_config(directory)
    if "finetune" not in cfg:
        raise CheckpointError(f"{Path(directory) / CONFIG_NAME}: not a fine-tuned checkpoint (no 'finetune' section)")
    return cfg
