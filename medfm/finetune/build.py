"""What a fine-tuning run starts from: the base model (a checkpoint, or a model config initialised from
imported weights), the column of each modality, the modalities it fine-tunes, and the trainable
tensors of its ``method`` — each from the typed :class:`~medfm.finetune.config_schema.FinetuneConfig`.

Used by :class:`medfm.finetune.FineTuner`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import pandas as pd

from .. import checkpoint
from ..data.manifest import is_missing
from ..errors import ConfigError
from ..modality import fit_on_cohort
from ..models import MultiModalModel, create_model, resolve_config as resolve_model_config
from ..models.init import apply_init, model_config_with_init
from ..registry import get_modality
from .config_schema import FinetuneConfig, LoraSection
from .lora import PRETRAINING_ONLY, apply_lora, freeze, shared_with
from .model import load_encoder

log = logging.getLogger("medfm.finetune")


def is_checkpoint(base: Optional[Path]) -> bool:
    """Whether ``base`` is a checkpoint folder (else a model config: a preset name or a YAML file)."""
    return base is not None and checkpoint.is_checkpoint(base)


def base_model(cfg: FinetuneConfig, base: Optional[Path], df: pd.DataFrame,
               config_dir: Optional[Path]) -> MultiModalModel:
    """The base checkpoint at ``base``, or — with ``init`` or a model config as ``base`` — a model built
    (tokenizers learnt on the cohort's rows) and initialised from imported weights."""
    if is_checkpoint(base):
        model = load_encoder(base)  # a fine-tuned or merged base: its encoder, without its head
        if cfg.init:
            apply_init(model, cfg.init, base_dir=config_dir)
        return model
    base_cfg = str(base) if base is not None and base.is_file() else cfg.base
    mcfg = resolve_model_config(model_config_with_init(base_cfg, cfg.init, config_dir))
    adapters = {}
    rows = df.to_dict("records")
    for name, options in (mcfg.get("modalities") or {}).items():  # tokenizers learnt on the training rows
        adapter = get_modality(name, **(options or {}))
        column = cfg.data.columns.get(name, name)
        if column in df.columns:
            present = [(adapter.source_from_row(r, column), r.get("patient_id")) for r in rows]
            present = [(v, p) for v, p in present if not is_missing(v)]
            fit_on_cohort(adapter, [v for v, _ in present], [p for _, p in present])
        adapters[name] = adapter
    return create_model(mcfg, adapters=adapters)


def column_map(configured: Mapping[str, str], recorded: Mapping[str, str],
               modalities: Sequence[str]) -> Dict[str, str]:
    """``{modality: column}``: ``data.columns`` over the mapping the base checkpoint recorded
    (:mod:`medfm.data.columns`), else the modality's name."""
    mapping = {**recorded, **configured}
    return {m: mapping.get(m, m) for m in modalities}


def chosen_modalities(wanted: Optional[Sequence[str]], encoder: MultiModalModel, columns: Mapping[str, str],
                      df: pd.DataFrame) -> List[str]:
    """The modalities to fine-tune: ``modalities:``, or every base modality with a manifest column — each
    modality of the base left out is named in a warning, never dropped without a word.

    Raises:
        ConfigError: a wanted modality the base lacks or the manifest has no column for, or none at all.
    """
    def has_cells(m: str) -> bool:  # a table modality (tabular) reads feature columns of the row, not a column of its own
        return columns[m] in df.columns or getattr(encoder.adapters.get(m), "reads_row", False)

    if wanted:
        mods = list(wanted)
    else:
        mods = [m for m in encoder.modalities if has_cells(m)]
        for m in encoder.modalities:
            if m not in mods:
                log.warning("modality %r of the base has no column %r in the manifest: not fine-tuned "
                            "(map it with data.columns: {%s: COLUMN} or --column %s=COLUMN)", m, columns[m], m, m)
    for m in mods:
        if m not in encoder.modalities:
            raise ConfigError(f"modality {m!r} is not in the base model; it has {encoder.modalities}")
        if not has_cells(m):
            raise ConfigError(f"the manifest has no column {columns[m]!r} for modality {m!r}")
    if not mods:
        raise ConfigError("no modality of the base model has a column in the manifest")
    return mods


def setup_method(model: MultiModalModel, method: str, modalities: Sequence[str], lora: LoraSection) -> None:
    """Make the base ready for ``method``: LoRA layers injected, or the right tensors trainable."""
    others = shared_with(model, modalities)
    if method != "linear" and others:
        log.warning("the towers of %s share weights with %s: fine-tuning changes those too", list(modalities), others)
    if method == "lora":
        apply_lora(model, modalities, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, dora=lora.dora,
                   target_modules=lora.target_modules)
        return
    freeze(model)
    if method == "full":  # the towers (less their pretraining-only decoders/MLM heads) + projections
        for m in modalities:
            for n, p in model.tower(m).named_parameters():
                p.requires_grad_(not PRETRAINING_ONLY.fullmatch(n))
            for p in model.projections[m].parameters():
                p.requires_grad_(True)
