"""``medfm embed``: write the embeddings of a manifest's modality to one safetensors file."""
from __future__ import annotations

import os
import sys

from medfm.errors import DataError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "embed", help="embed a manifest's modality with a model and write ids + embeddings",
        description="Embed every sample of a manifest that holds MODALITY. Output: a .safetensors file with "
                    "tensor 'embeddings' (N, D) float32 and metadata 'ids' (JSON), 'skipped' (unreadable "
                    "samples with reasons), 'absent', 'modality', 'model_fingerprint'. Under torchrun "
                    "(torchrun --nproc_per_node N -m medfm embed ...) each rank embeds a contiguous part and writes "
                    "OUT.rankR-of-N.safetensors; rank 0 merges them into OUT, equal to a single-process run.")
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--manifest", required=True, help="CSV/TSV/JSONL/Parquet manifest")
    p.add_argument("--modality", required=True, help="modality to embed (a model tower)")
    p.add_argument("--out", required=True, help="output file, *.safetensors")
    from medfm.cli.common import add_column_args

    add_column_args(p, bare_means="modality")
    p.add_argument("--split", default=None, help="only rows of this split")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    from medfm.cli.common import add_init_args

    add_init_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from medfm.cli.common import column_map
    from medfm.evaluation.embed import (embed_manifest, load_model, open_manifest, report_skipped,
                                        require_modality, save_embeddings)

    from medfm.cli.common import init_overrides

    model, fp = load_model(args.model, init=init_overrides(args))
    require_modality(model, args.modality)
    df = open_manifest(args.manifest, split=args.split)
    column = column_map(args, args.model).get(args.modality)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: each rank writes a part, rank 0 merges
        from medfm.evaluation.embed_dist import embed_ranks

        emb = embed_ranks(model, df, args.modality, out=args.out, batch_size=args.batch_size, column=column,
                          progress=not args.no_progress, model_fingerprint=fp, model_dir=args.model)
        if emb is None:
            return 0
    else:
        emb = embed_manifest(model, df, args.modality, batch_size=args.batch_size, column=column,
                             progress=not args.no_progress)
    msg = report_skipped(emb, args.modality)
    if msg:
        print(msg, file=sys.stderr)
    if len(emb.ids) == 0:
        raise DataError(f"no sample could be embedded ({len(emb.skipped)} unreadable, {len(emb.absent)} without "
                        f"a {args.modality!r} cell)", source=args.manifest, field=column or args.modality)
    path = save_embeddings(args.out, emb, modality=args.modality, model_fingerprint=fp, model_dir=args.model)
    print(f"wrote {len(emb.ids)} {args.modality} embeddings ({emb.emb.shape[1]}-d) to {path}; "
          f"{len(emb.skipped)} skipped, {len(emb.absent)} absent")
    return 0
