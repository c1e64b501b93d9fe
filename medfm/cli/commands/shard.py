"""``medfm shard``: preprocess a manifest once into WebDataset tar shards (local or fsspec URL)."""
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


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "shard", help="preprocess a manifest once into WebDataset tar shards for streaming training",
        description="Reads every row once through the modality adapters (eval preprocessing) and writes "
                    "OUT/shard-NNNNNN.tar (per sample KEY.json + KEY.<modality>.safetensors; inline modalities "
                    "such as text and dna stay values in the JSON), a sidecar per shard and OUT/index.json "
                    "(counts per shard and modality, unreadable samples listed). A killed run resumes after "
                    "its last committed shard when started again with the same arguments. OUT may be any "
                    "fsspec URL (s3://, gs://, file://). Train from it with data.shards: OUT.")
    p.add_argument("manifest", help="CSV/TSV/JSONL/Parquet manifest")
    p.add_argument("--out", required=True, help="output folder or fsspec URL")
    p.add_argument("--config", default=None,
                   help="run config, model config or preset whose modality options preprocess the data (the "
                        "training run must use the same options); a run config's data.columns, data.root, "
                        "data.confine_paths and data.limits apply. Default: every modality that has a column "
                        "in the manifest, with default options")
    p.add_argument("--modalities", default=None, help="comma-separated subset of the modalities")
    p.add_argument("--shard-size", default="1GB", help="close a shard at this payload size (default 1GB)")
    p.add_argument("--max-samples", type=int, default=None, help="also close a shard after this many samples")
    p.add_argument("--split", default=None, help="only rows of this split")
    p.add_argument("--label-columns", default="", help="comma-separated columns whose vocabularies are indexed")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers that read and preprocess (default: one per core, up to 8)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--max-skip-fraction", type=float, default=None, metavar="F",
                   help="fail (exit 1, no index.json) when more than this share of the rows holding a modality "
                        "are unreadable (default: the run config's data.max_skip_fraction, else 0.5)")
    p.set_defaults(func=run)


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
    from medfm.models import resolve_config  # deferred: keeps `medfm --help` from importing torch

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
    # deferred: keeps `medfm --help` from importing torch
    from medfm.evaluation.embed_loader import check_count, default_workers

    return default_workers(n_rows, 1) if args.workers is None else check_count("workers", args.workers)


def run(args) -> int:
    # deferred: keeps `medfm --help` from importing pandas and torch
    from medfm.data import read_manifest, select_split
    from medfm.data.shards import write_shards

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
