"""``medfm index build``: a persistent faiss index of a manifest's modality, tied to its model."""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("index", help="vector indexes for retrieval (see: medfm index build -h)")
    sub = p.add_subparsers(dest="index_command", metavar="{build}")
    sub.required = True
    b = sub.add_parser(
        "build", help="embed a manifest's modality and build a faiss index",
        description="Writes DIR/index.faiss, DIR/index.json (kind, parameters, model fingerprint) and "
                    "DIR/metadata.parquet (ids and the --label-columns you name; nothing else from the "
                    "manifest is stored, so no PHI). Kind 'auto': exact IndexFlatIP up to --flat-max "
                    "vectors, IVF (inner product) above; 'hnsw' on request.")
    b.add_argument("--model", required=True)
    b.add_argument("--manifest", required=True)
    b.add_argument("--modality", required=True)
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--kind", default="auto", choices=["auto", "flat", "hnsw", "ivf"])
    b.add_argument("--flat-max", type=int, default=50_000)
    b.add_argument("--nprobe", type=int, help="IVF: inverted lists probed per query (speed/recall trade-off)")
    b.add_argument("--ef-search", type=int, help="HNSW: efSearch (speed/recall trade-off)")
    b.add_argument("--label-columns", default="", help="comma-separated manifest columns kept as metadata")
    b.add_argument("--split", default=None)
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--no-progress", action="store_true")
    from medfm.cli.common import add_column_args

    add_column_args(b, bare_means="modality")
    b.set_defaults(func=run)


def run(args) -> int:
    from medfm.evaluation.embed import (embed_manifest, load_model, open_manifest, report_skipped,
                                        require_modality, rows_for)
    from medfm.evaluation.index import VectorIndex, choose_index
    from medfm.errors import DataError, UsageError

    cols = [c.strip() for c in args.label_columns.split(",") if c.strip()]
    model, fp = load_model(args.model)
    require_modality(model, args.modality)
    df = open_manifest(args.manifest, split=args.split, require=cols)
    from medfm.cli.common import column_map

    emb = embed_manifest(model, df, args.modality, batch_size=args.batch_size, progress=not args.no_progress,
                         column=column_map(args, args.model).get(args.modality))
    if emb.skipped:
        print(report_skipped(emb, args.modality), file=sys.stderr)
    if len(emb.ids) == 0:
        raise DataError(f"empty gallery: no {args.modality!r} sample could be embedded",
                        source=args.manifest, field=args.modality)
    meta = rows_for(df, emb.ids)[cols] if cols else None
    spec = choose_index(len(emb.emb), emb.emb.shape[1], kind=args.kind, flat_max=args.flat_max)
    for key, value, kind in (("nprobe", args.nprobe, "ivf"), ("efSearch", args.ef_search, "hnsw")):
        if value is not None:
            if spec["kind"] != kind:
                raise UsageError(f"--{'nprobe' if kind == 'ivf' else 'ef-search'} applies to a {kind} index; "
                                 f"this one is {spec['kind']} (choose it with --kind {kind})")
            spec["params"][key] = int(value)
    index = VectorIndex.build(emb.emb, emb.ids, metadata=meta, model_fingerprint=fp,
                              model_dir=str(args.model), modality=args.modality, spec=spec)
    index.info["manifest_sha256"] = df.attrs.get("sha256")
    index.info["n_skipped"] = len(emb.skipped)
    path = index.save(args.out)
    print(f"built {index.info['kind']} index of {len(index)} {args.modality} vectors "
          f"({index.info['params'] or 'exact'}) in {path}")
    return 0
