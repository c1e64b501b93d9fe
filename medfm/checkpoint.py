"""The medfm checkpoint folder: its file names, its ``config.json`` and its kind (no torch).

Every module that reads or writes a checkpoint folder asks this one for the layout::

    config.json                  {"format": "medfm", "format_version": 1, "model": <model config>,
                                  ["finetune": {...}], ["training": {...}], ["init_sources": {...}],
                                  ["data_columns": {...}]}
    model.safetensors            every tensor of the model              (kinds base, merged)
    modalities/<name>/           each adapter's own files, e.g. a learnt tokenizer
                                 (``<prefix>tokenizer.json`` + ``<prefix>tokenizer_config.json``)
    adapter_config.json          peft ``LoraConfig``                    (kind finetuned, method lora)
    adapter_model.safetensors    peft LoRA tensors                      (kind finetuned, method lora)
    finetuned.safetensors        the trained encoder tensors            (kind finetuned, method full)
    head.safetensors             the task head                          (kinds finetuned, merged)
    run_config.json              the training config (older checkpoints also recorded the column
                                 mapping only here)

Kinds (:func:`kind_of`): ``base`` (a ``MultiModalModel``: complete weights, no ``finetune``
section), ``finetuned`` (only what fine-tuning trained, next to a reference to its base; the
``finetune`` section, :mod:`medfm.finetune.layout`), ``merged`` (a complete base layout whose
``finetune`` section says ``"merged": true``, plus the head). Which class loads which kind is
decided above the model layer, by :func:`medfm.pretrained.load_pretrained`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .config_files import load_data_file
from .errors import CheckpointError, ConfigError
from .io import hash_file, write_json

FORMAT = "medfm"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: the folder of the adapters' own files: ``modalities/<name>/``
ADAPTERS_DIR = "modalities"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FULL_WEIGHTS = "finetuned.safetensors"
HEAD_WEIGHTS = "head.safetensors"
#: the training config a run writes beside its model (and, in older checkpoints, the only record
#: of the column mapping)
RUN_CONFIG = "run_config.json"

BASE, FINETUNED, MERGED = "base", "finetuned", "merged"
KINDS = (BASE, FINETUNED, MERGED)
#: the files whose bytes identify a checkpoint's weights (with ``config.json``), in a fixed order
WEIGHT_FILES = (WEIGHTS_NAME, ADAPTER_CONFIG, ADAPTER_WEIGHTS, FULL_WEIGHTS, HEAD_WEIGHTS)


def tokenizer_files(prefix: str) -> Tuple[str, str]:
    """``(<prefix>tokenizer.json, <prefix>tokenizer_config.json)``: a learnt tokenizer in ``modalities/<name>/``."""
    return f"{prefix}tokenizer.json", f"{prefix}tokenizer_config.json"


def adapter_dir(directory: os.PathLike, modality: str) -> Path:
    """``DIR/modalities/<modality>``: where an adapter keeps its own files."""
    return Path(directory) / ADAPTERS_DIR / modality


def is_checkpoint(directory: os.PathLike) -> bool:
    """Whether ``directory`` has a ``config.json`` (cheap; :func:`read_config` checks it)."""
    return (Path(str(directory)) / CONFIG_NAME).is_file()


def new_config(model_config: Mapping[str, Any], **sections: Any) -> Dict[str, Any]:
    """The ``config.json`` object of a checkpoint: format marker, model config, then ``sections``
    (``None`` values left out)."""
    cfg: Dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": dict(model_config)}
    cfg.update({k: v for k, v in sections.items() if v is not None})
    return cfg


def write_config(directory: os.PathLike, config: Mapping[str, Any]) -> Path:
    """Write ``config.json`` (atomically) into ``directory``; the path written."""
    path = Path(directory) / CONFIG_NAME
    write_json(path, dict(config))
    return path


def read_json(path: Path, *, required: bool) -> Dict[str, Any]:
    """The JSON object in a checkpoint file; ``{}`` for a missing file that is not ``required``.

    Raises:
        CheckpointError: naming the file, when it is required and missing, unreadable or not an object.
    """
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path.parent}: not a medfm checkpoint (no {path.name})")
        return {}
    try:
        data = load_data_file(path, kind="json")  # size and nesting bounded
    except (OSError, ValueError, ConfigError) as e:
        raise CheckpointError(f"{path}: unreadable config: {type(e).__name__}: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return data


def read_config(directory: os.PathLike) -> Dict[str, Any]:
    """The checked ``config.json`` of a medfm checkpoint folder (any kind).

    Raises:
        CheckpointError: naming the file, when it is missing, unreadable, not a medfm model config,
            of a newer format version, or with a malformed ``finetune`` section.
    """
    path = Path(directory) / CONFIG_NAME
    meta = read_json(path, required=True)
    if meta.get("format") != FORMAT or "model" not in meta:
        raise CheckpointError(f"{path}: not a medfm model config")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {meta['format_version']} is newer than this medfm")
    kind_of(meta, path)  # a malformed finetune section is named here, not deep inside a loader
    return meta


def is_medfm_config(path: os.PathLike) -> bool:
    """Whether ``path`` is a folder whose ``config.json`` says ``"format": "medfm"`` (never raises)."""
    p = Path(path)
    try:
        return p.is_dir() and read_json(p / CONFIG_NAME, required=False).get("format") == FORMAT
    except CheckpointError:
        return False


def kind_of(config: Mapping[str, Any], where: Any = CONFIG_NAME) -> str:
    """:data:`BASE`, :data:`FINETUNED` or :data:`MERGED` of a ``config.json`` object."""
    section = config.get("finetune")
    if section is None:
        return BASE
    if not isinstance(section, Mapping):
        raise CheckpointError(f"{where}: 'finetune' must be a mapping, got {type(section).__name__}")
    return MERGED if section.get("merged") else FINETUNED


def checkpoint_kind(directory: os.PathLike) -> str:
    """The kind of the checkpoint folder ``directory`` (reads and checks its ``config.json``)."""
    return kind_of(read_config(directory), Path(directory) / CONFIG_NAME)


def read_base_config(directory: os.PathLike) -> Dict[str, Any]:
    """:func:`read_config` of a folder holding the complete base layout (kinds base and merged).

    Raises:
        CheckpointError: for a fine-tuned folder that holds only what was trained (its weights are
            in its base; :func:`medfm.load_pretrained` reads it), or a missing ``model.safetensors``.
    """
    d = Path(directory)
    meta = read_config(d)
    if kind_of(meta) == FINETUNED:
        ft = meta["finetune"]
        raise CheckpointError(
            f"{d}: a fine-tuned checkpoint (method {ft.get('method', '?')}) that holds only what was trained, "
            f"over the base {ft.get('base_name') or ft.get('base_relative') or '?'}: load it with "
            "medfm.load_pretrained, give its base, or save it merged (medfm finetune --merge, or "
            "medfm.load_pretrained(DIR).save_merged(OUT))")
    if not (d / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{d}: {WEIGHTS_NAME} is missing")
    return meta


def read_run_config(directory: os.PathLike) -> Dict[str, Any]:
    """The ``run_config.json`` beside a checkpoint's model (``{}`` when there is none)."""
    return read_json(Path(directory) / RUN_CONFIG, required=False)


def weight_files(directory: os.PathLike) -> List[Path]:
    """The weight files a checkpoint folder (any kind) holds, in a fixed order.

    For fingerprints: ``config.json`` (which records a fine-tuned model's ``base_sha256``) plus
    these files identify a model completely.
    """
    d = Path(directory)
    return [d / n for n in WEIGHT_FILES if (d / n).is_file()]


def weights_sha256(directory: os.PathLike) -> Optional[str]:
    """sha256 (hex) of a folder's ``model.safetensors`` (``None`` without one): how a fine-tuned
    checkpoint pins its base."""
    path = Path(directory) / WEIGHTS_NAME
    return hash_file(path).hexdigest() if path.is_file() else None
