"""What ``medfm shard`` runs (its parser: :mod:`medfm.cli.commands.shard`)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple
from medfm.configs import config_path as shipped_config
from medfm.errors import ConfigError, DataError
from medfm.io import load_config_file
from medfm.limits import limits
from medfm.paths import optional_config_path
from medfm.registry import get_modality, list_modalities
from medfm.schema import to_dict, validate
from medfm.train.run_config import PretrainData as DataConfig  # the data section of a run config
from medfm.models import resolve_config
from medfm.evaluation.embed_loader import check_count, default_workers
from medfm.data import read_manifest, select_split
from medfm.data.shards import write_shards


def _config(args) -> Tuple[Any, Dict[str, Any], Optional[Path]]:
    """``(model config or None, data section, config_dir)`` of ``--config``.

    A run config (a file with a ``model`` or ``data`` section) gives both: its ``data`` section is
    checked by the pretraining schema (``columns``, ``root``, ``confine_paths``, ``limits``) and
    its relative paths resolve against its folder (:mod:`medfm.paths`; a shipped recipe named
    by name: the working directory). A model config or preset gives the model; no ``--config``
    gives neither (the modalities then come from the manifest's columns).
    """
    data = to_dict(DataConfig(manifest=args.manifest))
    if args.config is None:
        return None, data, None
    path, config_dir = Path(args.config).expanduser(), None
    if path.is_file():
        config_dir = path.resolve().parent
    elif shipped_config(args.config).is_file():
        path = shipped_config(args.config)
    else:  # a preset name
        return args.config, data, None
    raw = load_config_file(path)
    if "model" not in raw and "data" not in raw:  # a model config file
        return str(path), data, config_dir
    section = raw.get("data") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: data: expected a mapping, got {section!r}")
    try:
        data = to_dict(validate(DataConfig, {**section, "manifest": args.manifest}, "data"))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    model_cfg = raw.get("model") or {"name": "medfm-tiny"}
    if isinstance(model_cfg, str) and config_dir is not None and (config_dir / model_cfg).is_file():
        model_cfg = str(config_dir / model_cfg)
    return model_cfg, data, config_dir


def _adapters(args, df, model_cfg, columns, config_dir) -> Dict[str, Any]:
    """``{modality: adapter}`` of the modalities to shard: the config's (those with a column in the
    manifest), or — with no modality in the config — every registered modality that has a column."""

    options = dict(resolve_config(model_cfg, base_dir=config_dir).get("modalities") or {}) if model_cfg else {}
    if not options:
        options = {m: {} for m in list_modalities() if columns.get(m, m) in df.columns}
    if args.modalities:
        wanted = [m.strip() for m in args.modalities.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in options]
        if unknown:
            raise ConfigError(f"--modalities {unknown} not among the modalities {sorted(options)}")
        options = {m: options[m] for m in wanted}
    adapters = {}
    for name, opts in options.items():
        if columns.get(name, name) not in df.columns:
            continue  # absent from this cohort
        adapters[name] = get_modality(name, **(opts or {}))  # inline values are stored raw: no fit needed
    if not adapters:
        raise DataError(f"the manifest has no column for any of the modalities {sorted(options) or list_modalities()}",
                        source=args.manifest)
    return adapters


def _workers(args, n_rows: int) -> int:
    return default_workers(n_rows, 1) if args.workers is None else check_count("workers", args.workers)


def run(args) -> int:
    model_cfg, data, config_dir = _config(args)
    columns = dict(data.get("columns") or {})
    df = select_split(read_manifest(args.manifest), args.split)
    if len(df) == 0:
        raise DataError("no rows to shard", source=args.manifest)
    adapters = _adapters(args, df, model_cfg, columns, config_dir)
    labels = [c.strip() for c in args.label_columns.split(",") if c.strip()]
    max_skip = args.max_skip_fraction if args.max_skip_fraction is not None else data.get("max_skip_fraction")
    with limits(**(data.get("limits") or {})):
        index = write_shards(df, adapters, args.out, shard_size=args.shard_size, max_samples=args.max_samples,
                             columns={m: columns.get(m, m) for m in adapters}, label_columns=labels,
                             num_workers=_workers(args, len(df)), progress=not args.no_progress,
                             data_root=optional_config_path(data.get("root"), config_dir, "data.root"),
                             confine=bool(data.get("confine_paths", True)), max_skip_fraction=max_skip)
    info = index.info
    counts = ", ".join(f"{m} {v['count']}" for m, v in info["modalities"].items())
    print(f"wrote {info['n_samples']} samples in {len(info['shards'])} shard(s) ({info['bytes'] / 2**20:.1f} MiB) "
          f"to {args.out}: {counts}; {info['n_unreadable']} unreadable sample(s), "
          f"{info['n_modality_errors']} unreadable modality cell(s)")
    if info["unreadable"]:
        print(f"unreadable: {', '.join(info['unreadable'][:10])}{' …' if len(info['unreadable']) > 10 else ''} "
              f"(reasons in index.json)", file=sys.stderr)
    return 0
