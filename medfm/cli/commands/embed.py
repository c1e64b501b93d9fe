"""``medfm embed``: write the embeddings of a manifest's (or a shard set's) modality to one safetensors file."""
from __future__ import annotations

from medfm.cli.common import lazy_run


from medfm.cli.common import add_column_args, add_data_args, add_init_args, add_skip_args
from medfm.cli.inference_args import add_inference_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "embed", help="embed a manifest's modality with a model and write ids + embeddings",
        description="Embed every sample of a manifest that holds MODALITY. Output: a .safetensors file with "
                    "tensor 'embeddings' (N, D) float32 and metadata 'ids' (JSON), 'skipped' (unreadable "
                    "samples with reasons), 'absent', 'modality', 'model_fingerprint'. Under torchrun "
                    "(torchrun --nproc_per_node N -m medfm embed ...) each rank embeds a contiguous part and writes "
                    "OUT.rankR-of-N.safetensors; rank 0 merges them into OUT, equal to a single-process run. "
                    "With --shards DIR|URL (the output of `medfm shard`) the preprocessed samples are read from "
                    "the shards instead; the result equals embedding the same manifest.")
    p.add_argument("--model", required=True, help="checkpoint directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="CSV/TSV/JSONL/Parquet manifest")
    src.add_argument("--shards", help="a `medfm shard` folder or fsspec URL (s3://, memory://, https://...), or a "
                                      "brace pattern of its shards (DIR/shard-{000000..000009}.tar)")
    p.add_argument("--modality", required=True, help="modality to embed (a model tower)")
    p.add_argument("--out", required=True, help="output file, *.safetensors")

    add_column_args(p, bare_means="modality")
    p.add_argument("--split", default=None, help="only rows of this split")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_skip_args(p)

    add_init_args(p)
    add_data_args(p)
    add_inference_args(p)
    p.set_defaults(func=lazy_run("medfm.cli.runners.embed:run"))
