"""``medfm shard``: preprocess a manifest once into WebDataset tar shards (local or fsspec URL)."""
from __future__ import annotations

from medfm.cli.common import lazy_run


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
    p.set_defaults(func=lazy_run("medfm.cli.runners.shard:run"))
