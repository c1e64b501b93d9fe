"""``medfm shard``: preprocess a manifest once into WebDataset tar shards (local or fsspec URL)."""
from __future__ import annotations

import sys
from medfm.errors import ConfigError, DataError
from medfm.io import load_config_file
from medfm.registry import get_modality


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
    p.add_argument("--config", default="medfm-tiny",
                   help="run config, model config or preset whose modality options preprocess the data "
                        "(the training run must use the same options; default medfm-tiny)")
    p.add_argument("--modalities", default=None, help="comma-separated subset of the config's modalities")
    p.add_argument("--shard-size", default="1GB", help="close a shard at this payload size (default 1GB)")
    p.add_argument("--max-samples", type=int, default=None, help="also close a shard after this many samples")
    p.add_argument("--split", default=None, help="only rows of this split")
    p.add_argument("--label-columns", default="", help="comma-separated columns whose vocabularies are indexed")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers that read and preprocess")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    # deferred: keeps `medfm --help` from importing the training/evaluation stack (pandas, torch)
    from medfm.data import read_manifest, select_split
    from medfm.data.shards import write_shards
    from medfm.models import resolve_config

    columns, model_cfg = {}, args.config
    if Path(args.config).is_file():  # a run config (model + data.columns) or a model config
        raw = load_config_file(args.config)
        columns = dict((raw.get("data") or {}).get("columns") or {})
        model_cfg = raw.get("model", raw)
        if isinstance(model_cfg, str) and (Path(args.config).parent / model_cfg).is_file():
            model_cfg = str(Path(args.config).parent / model_cfg)
    mcfg = resolve_config(model_cfg)
    options = dict(mcfg.get("modalities") or {})
    if args.modalities:
        wanted = [m.strip() for m in args.modalities.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in options]
        if unknown:
            raise ConfigError(f"--modalities {unknown} not in the config's modalities {sorted(options)}")
        options = {m: options[m] for m in wanted}
    df = read_manifest(args.manifest)
    df = select_split(df, args.split)
    if len(df) == 0:
        raise DataError("no rows to shard", source=args.manifest)
    adapters = {}
    for name, opts in options.items():
        col = columns.get(name, name)
        if col not in df.columns:
            continue  # absent from this cohort
        adapters[name] = get_modality(name, **(opts or {}))  # inline values are stored raw: no fit needed
    if not adapters:
        raise DataError(f"the manifest has no column for any of the modalities {sorted(options)}",
                        source=args.manifest)
    labels = [c.strip() for c in args.label_columns.split(",") if c.strip()]
    index = write_shards(df, adapters, args.out, shard_size=args.shard_size, max_samples=args.max_samples,
                         columns={m: columns.get(m, m) for m in adapters}, label_columns=labels,
                         num_workers=args.workers, progress=not args.no_progress)
    info = index.info
    counts = ", ".join(f"{m} {v['count']}" for m, v in info["modalities"].items())
    print(f"wrote {info['n_samples']} samples in {len(info['shards'])} shard(s) ({info['bytes'] / 2**20:.1f} MiB) "
          f"to {args.out}: {counts}; {info['n_unreadable']} unreadable sample(s), "
          f"{info['n_modality_errors']} unreadable modality cell(s)")
    if info["unreadable"]:
        print(f"unreadable: {', '.join(info['unreadable'][:10])}{' …' if len(info['unreadable']) > 10 else ''} "
              f"(reasons in index.json)", file=sys.stderr)
    return 0
