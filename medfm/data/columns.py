"""One column rule for every command that reads a manifest.

A modality's cells live in the manifest column named after it unless a mapping says
otherwise. The mapping is, in order of precedence:

1. ``--column MODALITY=COLUMN`` given on the command line (repeatable), over a run or
   fine-tune config's ``data.columns`` (the one config key of the mapping; a fine-tune
   config's top-level ``columns`` of the previous release moves there with a warning);
2. the mapping recorded in the checkpoint the command loads (``config.json`` →
   ``"data_columns"``, written by pretraining and fine-tuning; older checkpoints: the
   ``data.columns`` of the ``run_config.json`` beside it, or ``finetune.columns``);
3. the modality's own name.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional

from ..checkpoint import read_config, read_run_config
from ..errors import UsageError

CONFIG_KEY = "data_columns"


def parse_column_specs(specs: Iterable[str], *, default_modality: Optional[str] = None) -> Dict[str, str]:
    """``["text=report", "ecg=path"]`` → ``{"text": "report", "ecg": "path"}``.

    A bare ``COLUMN`` (no ``=``) is the column of ``default_modality`` (``medfm embed --modality M
    --column COL``); without one it is a :class:`UsageError`.
    """
    out: Dict[str, str] = {}
    for spec in specs or ():
        mod, sep, col = str(spec).partition("=")
        if not sep:
            if default_modality is None:
                raise UsageError(f"--column needs MODALITY=COLUMN, got {spec!r}")
            mod, col = default_modality, spec
        mod, col = mod.strip(), col.strip()
        if not mod or not col:
            raise UsageError(f"--column needs MODALITY=COLUMN, got {spec!r}")
        if mod in out and out[mod] != col:
            raise UsageError(f"--column gives two columns for {mod!r}: {out[mod]!r} and {col!r}")
        out[mod] = col
    return out


def recorded_columns(model_dir: Optional[os.PathLike]) -> Dict[str, str]:
    """The ``{modality: column}`` mapping a checkpoint was trained with (``{}`` when none is recorded).

    ``model_dir`` that is not a folder (a model config file, a preset name, ``None``) records none.

    Raises:
        CheckpointError: a folder without a readable ``config.json`` (a checkpoint folder named
            wrongly must not silently fall back to the modalities' own names).
    """
    if model_dir is None:
        return {}
    d = Path(str(model_dir))
    if not d.is_dir():
        return {}
    cfg = read_config(d)
    cols = cfg.get(CONFIG_KEY)
    if not cols and isinstance(cfg.get("finetune"), Mapping):
        cols = cfg["finetune"].get("columns")
    if not cols:
        cols = (read_run_config(d).get("data") or {}).get("columns")
    return {str(k): str(v) for k, v in (cols or {}).items() if v}


def resolve_columns(flags: Mapping[str, str], model_dir: Optional[os.PathLike] = None) -> Dict[str, str]:
    """Flags over the checkpoint's recorded mapping (modalities absent from both use their own name)."""
    out = recorded_columns(model_dir)
    out.update(flags or {})
    return out

