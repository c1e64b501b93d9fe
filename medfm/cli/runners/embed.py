"""What ``medfm embed`` runs (its parser: :mod:`medfm.cli.commands.embed`)."""
from __future__ import annotations

import os
import sys
from medfm.errors import DataError, UsageError
from medfm.cli.common import column_map, data_options, init_overrides
from medfm.cli.inference_args import inference_options
from medfm.evaluation.embed import check_usable, load_model, report_skipped, require_modality, save_embeddings
from medfm.evaluation.embed import embed_manifest, open_manifest
from medfm.evaluation.embed_dist import embed_ranks
from medfm.data.shards import open_index
from medfm.evaluation.embed_shards import embed_shards
from medfm.evaluation.embed_dist import embed_shard_ranks


def run(args) -> int:
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
    df = open_manifest(args.manifest, split=args.split)
    column = column_map(args, args.model).get(args.modality)
    if _distributed():  # torchrun: each rank writes a part, rank 0 merges

        return embed_ranks(model, df, args.modality, out=args.out, batch_size=args.batch_size, column=column,
                           progress=not args.no_progress, model_fingerprint=fp, model_dir=args.model,
                           **data_options(args), **inference_options(args))
    return embed_manifest(model, df, args.modality, batch_size=args.batch_size, column=column,
                          progress=not args.no_progress, **data_options(args), **inference_options(args))


def _embed_shards(args, model, fp):
    index = open_index(args.shards)
    if _distributed():
        return embed_shard_ranks(model, index, args.modality, out=args.out, batch_size=args.batch_size,
                                 progress=not args.no_progress, model_fingerprint=fp, model_dir=args.model)

    return embed_shards(model, index, args.modality, batch_size=args.batch_size, progress=not args.no_progress,
                        threads=args.threads)
