"""What a pretraining run is built from: the model (fresh, resumed or initialised from another
checkpoint), its objectives, and the data it streams — each from the typed :class:`RunConfig`.

Used by :class:`medfm.train.Trainer`; the step loop, checkpoints and the final save live there
and in :mod:`medfm.train.pretrain_state`.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Dict, Optional

import pandas as pd

from ..data import ManifestDataset
from ..data.manifest import is_missing
from ..data.shard_stream import ShardStream
from ..data.shards import check_adapters
from ..modality import fit_on_cohort
from ..models import MultiModalModel, create_model, resolve_config
from ..paths import config_path, optional_config_path
from ..registry import get_modality
from .run_config import RunConfig
from .sampler import ResumableSampler

log = logging.getLogger("medfm.train")


def run_model_config(cfg: RunConfig, config_dir: Optional[Path]) -> Dict[str, Any]:
    """The run's ``model`` section resolved and checked (:func:`medfm.models.resolve_config`); a model
    file named relative to the run config is looked up beside it, as are relative ``init`` paths."""
    model_cfg = cfg.model
    if isinstance(model_cfg, str) and config_dir is not None and (config_dir / model_cfg).is_file():
        model_cfg = str(config_dir / model_cfg)
    return resolve_config(model_cfg, base_dir=config_dir)


def fresh_model(cfg: RunConfig, model_config: Dict[str, Any], df: pd.DataFrame,
                config_dir: Optional[Path], is_main: bool = True) -> MultiModalModel:
    """A new model: its adapters fitted on the cohort (learnt vocabularies keep only words of several
    patients), then ``train.init_from``'s matching tensors when given."""
    mcfg = copy.deepcopy(model_config)
    adapters = {}
    rows = df.to_dict("records")
    # sorted: the order a checkpoint's config.json restores, so a resumed model is the same
    # module tree (and draws MAE masks in the same order) whatever the order in the YAML
    for name, options in sorted((mcfg.get("modalities") or {}).items()):
        adapter = get_modality(name, **(options or {}))
        column = cfg.data.columns.get(name, name)
        present = [(adapter.source_from_row(r, column), r.get("patient_id")) for r in rows]
        present = [(v, p) for v, p in present if not is_missing(v)]
        fit_on_cohort(adapter, [v for v, _ in present], [p for _, p in present])
        adapters[name] = adapter
    model = create_model(mcfg, adapters=adapters)
    if cfg.train.init_from:
        init_from(model, config_path(cfg.train.init_from, config_dir, "train.init_from"), is_main)
    return model


def init_from(model: MultiModalModel, directory: Path, is_main: bool = True) -> None:
    """Start from the weights of another checkpoint wherever names and shapes match (logged)."""
    source = MultiModalModel.from_pretrained(directory).state_dict()
    own = model.state_dict()
    take = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(take, strict=False)
    if is_main:
        log.info("initialised %d/%d tensors from %s (%d of the source not used, %d new)", len(take), len(own),
                 directory, len(source) - len(take), len(own) - len(take))


def data_root(cfg: RunConfig, config_dir: Optional[Path]) -> Optional[Path]:
    """``data.root`` by the path rule (:mod:`medfm.paths`)."""
    return config_path(cfg.data.root, config_dir, "data.root") if cfg.data.root else None


def manifest_dataset(cfg: RunConfig, df: pd.DataFrame, adapters, config_dir: Optional[Path], rank: int,
                     world_size: int):
    """``(dataset, sampler)`` of the manifest's rows: confined to the data roots, cached, resumable."""
    dcfg, seed = cfg.data, cfg.train.seed
    dataset = ManifestDataset(df, adapters, train=True, label_columns=dcfg.label_columns, columns=dcfg.columns,
                              cache_dir=optional_config_path(dcfg.cache_dir, config_dir, "data.cache_dir"),
                              seed=seed, root=data_root(cfg, config_dir), confine=dcfg.confine_paths)
    dataset.warn = False  # the core's SkipLedger warns once per sample, however many epochs
    sampler = ResumableSampler(len(dataset), shuffle=True, seed=seed, rank=rank, world_size=world_size)
    return dataset, sampler


def shard_stream(cfg: RunConfig, shards, adapters, rank: int, world_size: int):
    """The streamed shards of ``data.shards`` (``medfm shard`` output; the shards hold the samples)."""
    check_adapters(shards, adapters)
    dcfg = cfg.data
    return ShardStream(shards, adapters, batch_size=dcfg.batch_size, seed=cfg.train.seed,
                       shuffle_buffer=dcfg.shuffle_buffer, label_columns=dcfg.label_columns, rank=rank,
                       world_size=world_size, num_workers=dcfg.num_workers)
