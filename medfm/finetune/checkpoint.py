"""Fine-tuned checkpoints: only what was trained, next to a reference to the base checkpoint.

Layout of a fine-tuned directory::

    config.json                  {"format": "medfm", "model": <base model config>,
                                  "finetune": {"base": ..., "base_relative": ..., "base_sha256": ...,
                                               "method": "lora"|"full"|"linear", "modalities": [...],
                                               "task": {...}, "head": {...}, "merged": false}}
    adapter_config.json          peft LoraConfig            (method "lora")
    adapter_model.safetensors    peft LoRA weights          (method "lora")
    finetuned.safetensors        the trained encoder tensors (method "full")
    head.safetensors             the task head

A merged export (``export_merged``) is a complete model directory instead
(``model.safetensors`` + ``modalities/`` as ``save_pretrained`` writes them) whose
``config.json`` carries the same ``finetune`` section with ``"merged": true``.

``MultiModalModel.from_pretrained`` hands any directory whose ``config.json`` has a
``finetune`` key to :func:`load_finetuned`, so such a directory works with ``medfm
embed``, ``zeroshot`` and ``evaluate``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from safetensors.torch import load_file, load_model, save_file

from ..errors import CheckpointError
from ..io import hash_file, write_json
from ..registry import get_modality
from .heads import TaskHead, TaskSpec
from .lora import apply_lora, lora_state_dict, load_lora_state_dict, merge_lora

CONFIG_NAME = "config.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FULL_WEIGHTS = "finetuned.safetensors"
HEAD_WEIGHTS = "head.safetensors"
BASE_WEIGHTS = "model.safetensors"


def file_sha256(path: os.PathLike) -> str:
    """sha256 of a file (hex): how a fine-tuned checkpoint pins its base weights."""
    return hash_file(path).hexdigest()


def _state(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def _write_config(directory: Path, model, meta: Dict[str, Any]) -> None:
    from ..models.multimodal import FORMAT, FORMAT_VERSION

    cfg = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.config_with_adapters(), "finetune": meta}
    if getattr(model, "init_sources", None):  # the weight files the base started from
        cfg["init_sources"] = model.init_sources
    write_json(directory / CONFIG_NAME, cfg)


def finetune_meta(base: os.PathLike, out_dir: os.PathLike, method: str, modalities, task: TaskSpec,
                  head: TaskHead, **extra: Any) -> Dict[str, Any]:
    """The ``finetune`` section of ``config.json`` (base given by absolute and relative path + hash)."""
    base = Path(base).resolve()
    weights = base / BASE_WEIGHTS
    return {"base": str(base), "base_relative": os.path.relpath(base, Path(out_dir).resolve()),
            "base_sha256": file_sha256(weights) if weights.is_file() else None,
            "method": method, "modalities": list(modalities), "task": task.to_dict(), "head": head.config(),
            "merged": False, **extra}


def save_finetuned(model, head: TaskHead, directory: os.PathLike, meta: Dict[str, Any],
                   trained: Optional[Dict[str, torch.Tensor]] = None) -> Path:
    """Write a fine-tuned directory (see module docstring); weights first, ``config.json`` last.

    Args:
        model: the ``MultiModalModel`` with LoRA applied (method ``lora``) or trained in full.
        head: the task head.
        meta: from :func:`finetune_meta`.
        trained: method ``full``: the trained encoder tensors by name.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    method = meta["method"]
    if method == "lora":
        cfg = model.peft_config["default"]
        save_file(lora_state_dict(model), str(d / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        cfg.save_pretrained(str(d))
    elif method == "full":
        save_file({k: v.detach().cpu().contiguous() for k, v in (trained or {}).items()}, str(d / FULL_WEIGHTS))
    save_file(_state(head), str(d / HEAD_WEIGHTS))
    _write_config(d, model, meta)
    return d


def weight_files(directory: os.PathLike) -> list:
    """The weight files a (fine-tuned or merged) checkpoint directory holds, in a fixed order.

    For fingerprints: ``config.json`` (which records the base's ``base_sha256``) plus
    these files identify a fine-tuned model completely.
    """
    d = Path(directory)
    names = (BASE_WEIGHTS, ADAPTER_CONFIG, ADAPTER_WEIGHTS, FULL_WEIGHTS, HEAD_WEIGHTS)
    return [d / n for n in names if (d / n).is_file()]


def _resolve_base(directory: Path, meta: Dict[str, Any]) -> Path:
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


def _load_complete(directory: Path, config: Dict[str, Any]):
    """A complete model directory (base layout, e.g. a merged export) without its fine-tuning parts."""
    from ..models.multimodal import MultiModalModel

    return MultiModalModel.from_pretrained(directory, finetune=False)


def read_finetune_meta(directory: os.PathLike) -> Dict[str, Any]:
    """``(full config.json)`` of a fine-tuned directory; CheckpointError if it is not one."""
    p = Path(directory) / CONFIG_NAME
    if not p.is_file():
        raise CheckpointError(f"{directory}: not a medfm checkpoint (no {CONFIG_NAME})")
    with open(p, encoding="utf-8") as fh:
        cfg = json.load(fh)
    if "finetune" not in cfg:
        raise CheckpointError(f"{p}: not a fine-tuned checkpoint (no 'finetune' section)")
    return cfg


def attach_head(model, head: TaskHead, task: TaskSpec, meta: Dict[str, Any]):
    """Set ``model.task_head`` (a submodule), ``model.task`` (dict) and ``model.finetune_config``."""
    model.task_head = head
    model.task = task.to_dict()
    model.finetune_config = dict(meta)
    return model


def load_finetuned(directory: os.PathLike, verify_base: bool = True):
    """Load a fine-tuned (or merged) directory → ``MultiModalModel`` in eval mode.

    The model has LoRA applied (or merged into the weights) and carries
    ``model.task_head`` (:class:`TaskHead`), ``model.task`` (``{"kind", "label_column",
    "classes", ...}``) and ``model.finetune_config``. Only safetensors are read.

    Raises:
        CheckpointError: missing files, base not found, or a base whose weights changed.
    """
    import medfm

    d = Path(directory)
    cfg = read_finetune_meta(d)
    meta = cfg["finetune"]
    task = TaskSpec.from_config(meta["task"])
    if meta.get("merged"):
        model = _load_complete(d, cfg["model"])
    else:
        base = _resolve_base(d, meta)
        if verify_base and meta.get("base_sha256") and (base / BASE_WEIGHTS).is_file():
            if file_sha256(base / BASE_WEIGHTS) != meta["base_sha256"]:
                raise CheckpointError(f"{d}: the base checkpoint {base} has changed since fine-tuning "
                                      "(weights hash differs)")
        model = medfm.load_pretrained(base)
        if hasattr(model, "task_head"):  # a fine-tuned base: drop its head, keep its encoder
            del model.task_head
        method = meta["method"]
        if method == "lora":
            from peft import LoraConfig

            if not (d / ADAPTER_CONFIG).is_file() or not (d / ADAPTER_WEIGHTS).is_file():
                raise CheckpointError(f"{d}: {ADAPTER_CONFIG} / {ADAPTER_WEIGHTS} missing")
            apply_lora(model, meta["modalities"], config=LoraConfig.from_pretrained(str(d)))
            load_lora_state_dict(model, load_file(str(d / ADAPTER_WEIGHTS)))
        elif method == "full":
            if not (d / FULL_WEIGHTS).is_file():
                raise CheckpointError(f"{d}: {FULL_WEIGHTS} missing")
            _, unexpected = model.load_state_dict(load_file(str(d / FULL_WEIGHTS)), strict=False)
            if unexpected:
                raise CheckpointError(f"{d / FULL_WEIGHTS}: unexpected tensors {sorted(unexpected)[:5]}")
    head = TaskHead(**meta["head"])
    if not (d / HEAD_WEIGHTS).is_file():
        raise CheckpointError(f"{d}: {HEAD_WEIGHTS} missing")
    missing, unexpected = load_model(head, str(d / HEAD_WEIGHTS), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{d / HEAD_WEIGHTS}: does not fit the head config")
    attach_head(model, head, task, meta)
    return model.eval()


def export_merged(model, directory: os.PathLike) -> Path:
    """Write a complete, merged model directory (``save_pretrained`` layout + ``head.safetensors``).

    LoRA layers are merged into their base weights *in place* (the given model is
    merged afterwards). The export loads without the base checkpoint.
    """
    d = Path(directory)
    head = getattr(model, "task_head", None)
    meta = dict(getattr(model, "finetune_config", {}))
    if head is None or not meta:
        raise CheckpointError("export_merged needs a fine-tuned model (with task_head and finetune_config)")
    merge_lora(model)
    d.mkdir(parents=True, exist_ok=True)
    save_file(_state(head), str(d / HEAD_WEIGHTS))  # before config.json, which save_pretrained writes last
    del model.task_head  # the export's model.safetensors holds the encoder only
    try:
        meta["merged"] = True
        model.save_pretrained(d, extra={"finetune": meta})
    finally:
        model.task_head = head
    model.finetune_config = meta
    return d
