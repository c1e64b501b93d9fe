"""``medfm embed``: write the embeddings of a manifest's (or a shard set's) modality to one safetensors file."""
from __future__ import annotations

import os
import sys

from medfm.errors import DataError, UsageError
from medfm.cli.common import (add_column_args, add_data_args, add_init_args, add_skip_args, column_map,
                              data_options, init_overrides)
from medfm.cli.inference_args import add_inference_args, inference_options


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
    p.set_defaults(func=run)


def run(args) -> int:
    # deferred: keeps `medfm --help` from importing the training/evaluation stack
    from medfm.evaluation.embed import check_usable, load_model, report_skipped, require_modality, save_embeddings

    if args.shards and (args.split or getattr(args, "columns", None)):
        raise UsageError("--split and column options apply to --manifest; shards hold the rows they were made from")
    model, fp = load_model(args.model, init=init_overrides(args))
    require_modality(model, args.modality)
    emb = _embed_shards(args, model, fp) if args.shards else _embed_manifest(args, model, fp)
    if emb is None:  # a rank other than 0 of a torchrun job: its part is written
        return 0
    msg = report_skipped(emb, args.modality)
    if msg:
        print(msg, file=sys.stderr)
    source = args.shards or args.manifest
    if len(emb.ids) == 0 and not emb.skipped:
        raise DataError(f"no sample could be embedded ({len(emb.skipped)} unreadable, {len(emb.absent)} without "
                        f"a {args.modality!r} value)", source=source, field=args.modality)
    check_usable(emb, args.modality, what="medfm embed", max_skip_fraction=args.max_skip_fraction, source=source)
    path = save_embeddings(args.out, emb, modality=args.modality, model_fingerprint=fp, model_dir=args.model)
    empty = f"; {emb.meta['n_empty']} row(s) with no modality were not sharded" if emb.meta.get("n_empty") else ""
    print(f"wrote {len(emb.ids)} {args.modality} embeddings ({emb.emb.shape[1]}-d) to {path}; "
          f"{len(emb.skipped)} skipped, {len(emb.absent)} absent{empty}")
    return 0


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _embed_manifest(args, model, fp):
    # deferred: keeps `medfm --help` from importing the training/evaluation stack
    from medfm.evaluation.embed import embed_manifest, open_manifest

    df = open_manifest(args.manifest, split=args.split)
    column = column_map(args, args.model).get(args.modality)
    if _distributed():  # torchrun: each rank writes a part, rank 0 merges
        # deferred: keeps `medfm --help` from importing the training/evaluation stack
        from medfm.evaluation.embed_dist import embed_ranks

        return embed_ranks(model, df, args.modality, out=args.out, batch_size=args.batch_size, column=column,
                           progress=not args.no_progress, model_fingerprint=fp, model_dir=args.model,
                           **data_options(args), **inference_options(args))
    return embed_manifest(model, df, args.modality, batch_size=args.batch_size, column=column,
                          progress=not args.no_progress, **data_options(args), **inference_options(args))


def _embed_shards(args, model, fp):
    # deferred: keeps `medfm --help` from importing the training/evaluation stack
    from medfm.data.shards import open_index

    index = open_index(args.shards)
    if _distributed():
        # deferred: keeps `medfm --help` from importing the training/evaluation stack
        from medfm.evaluation.embed_dist import embed_shard_ranks

        return embed_shard_ranks(model, index, args.modality, out=args.out, batch_size=args.batch_size,
                                 progress=not args.no_progress, model_fingerprint=fp, model_dir=args.model)
    # deferred: keeps `medfm --help` from importing the training/evaluation stack
    from medfm.evaluation.embed_shards import embed_shards

    return embed_shards(model, index, args.modality, batch_size=args.batch_size, progress=not args.no_progress,
                        threads=args.threads)
