"""``medfm index build``: a persistent faiss index of a manifest's modality, tied to its model."""
from __future__ import annotations

import sys
from medfm.cli.common import add_column_args, add_data_args, add_skip_args, column_map, data_options
from medfm.cli.inference_args import add_inference_args, inference_options
from medfm.errors import DataError, UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser("index", help="vector indexes for retrieval (see: medfm index build -h)")
    sub = p.add_subparsers(dest="index_command", metavar="{build}")
    sub.required = True
    b = sub.add_parser(
        "build", help="embed a manifest's modality and build a faiss index",
        description="Writes DIR/index.faiss, DIR/index.json (kind, parameters, model fingerprint) and "
                    "DIR/metadata.parquet (ids and the --label-columns you name; nothing else from the "
                    "manifest is stored, so no PHI). Kind 'auto': exact IndexFlatIP up to --flat-max "
                    "vectors, IVF (inner product) above; 'hnsw' on request. For galleries that do not fit in "
                    "RAM, --embeddings FILES (medfm embed outputs, e.g. the per-rank parts) with --kind ivfpq "
                    "or ivf-ondisk streams them: trained on a sample, filled chunk by chunk, its recall@10 "
                    "against exact search on held-out queries recorded in index.json.")
    b.add_argument("--model")
    b.add_argument("--manifest")
    b.add_argument("--modality")
    b.add_argument("--embeddings", nargs="+", metavar="FILE_OR_GLOB",
                   help="build from embedding files by streaming (with --kind ivfpq or ivf-ondisk)")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--kind", default="auto", choices=["auto", "flat", "hnsw", "ivf", "ivfpq", "ivf-ondisk"])
    b.add_argument("--nlist", type=int, help="streamed IVF: inverted lists (default ≈ 4·√N)")
    b.add_argument("--pq-m", type=int, help="ivfpq: bytes per vector (sub-quantizers; default dim/4)")
    b.add_argument("--refine", type=int, default=0, metavar="R",
                   help="ivfpq: re-rank R·k PQ candidates with the exact vectors (kept on disk, memory-mapped)")
    b.add_argument("--train-size", type=int, help="streamed IVF: vectors sampled to train the quantizers")
    b.add_argument("--recall-queries", type=int, default=1000, help="held-out queries for the recorded recall")
    b.add_argument("--flat-max", type=int, default=50_000)
    b.add_argument("--nprobe", type=int, help="IVF: inverted lists probed per query (speed/recall trade-off)")
    b.add_argument("--ef-search", type=int, help="HNSW: efSearch (speed/recall trade-off)")
    b.add_argument("--label-columns", default="", help="comma-separated manifest columns kept as metadata")
    b.add_argument("--split", default=None)
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--no-progress", action="store_true")
    add_skip_args(b)

    add_column_args(b, bare_means="modality")
    add_data_args(b)
    add_inference_args(b)
    b.set_defaults(func=run)


def run(args) -> int:
    # deferred: keeps `medfm --help` from importing the training/evaluation stack
    from medfm.evaluation.embed import (check_usable, embed_manifest, load_model, open_manifest, report_skipped,
                                        require_modality, rows_for)
    # deferred: keeps `medfm --help` from importing the training/evaluation stack
    from medfm.evaluation.index import VectorIndex, choose_index, sample_key

    if args.embeddings or args.kind in ("ivfpq", "ivf-ondisk"):
        return _run_streamed(args)
    missing = [f"--{k}" for k in ("model", "manifest", "modality") if not getattr(args, k)]
    if missing:
        raise UsageError(f"index build needs {', '.join(missing)} (or --embeddings FILES with --kind ivfpq)")
    cols = [c.strip() for c in args.label_columns.split(",") if c.strip()]
    model, fp = load_model(args.model)
    require_modality(model, args.modality)
    df = open_manifest(args.manifest, split=args.split, require=cols)

    column = column_map(args, args.model).get(args.modality) or args.modality
    emb = embed_manifest(model, df, args.modality, batch_size=args.batch_size, progress=not args.no_progress,
                         column=column, **data_options(args), **inference_options(args))
    if emb.skipped:
        print(report_skipped(emb, args.modality), file=sys.stderr)
    if len(emb.ids) == 0 and not emb.skipped:
        raise DataError(f"empty gallery: no {args.modality!r} sample could be embedded",
                        source=args.manifest, field=args.modality)
    check_usable(emb, args.modality, what="medfm index build", max_skip_fraction=args.max_skip_fraction,
                 source=args.manifest)
    rows = rows_for(df, emb.ids)
    meta = rows[cols] if cols else None
    base = df.attrs.get("base_dir") or "."
    keys = [sample_key(v, base) for v in rows[column]] if column in rows.columns else None
    patients = list(rows["patient_id"]) if "patient_id" in rows.columns else None
    spec = choose_index(len(emb.emb), emb.emb.shape[1], kind=args.kind, flat_max=args.flat_max)
    for key, value, kind in (("nprobe", args.nprobe, "ivf"), ("efSearch", args.ef_search, "hnsw")):
        if value is not None:
            if spec["kind"] != kind:
                raise UsageError(f"--{'nprobe' if kind == 'ivf' else 'ef-search'} applies to a {kind} index; "
                                 f"this one is {spec['kind']} (choose it with --kind {kind})")
            spec["params"][key] = int(value)
    index = VectorIndex.build(emb.emb, emb.ids, metadata=meta, model_fingerprint=fp,
                              model_dir=str(args.model), modality=args.modality, spec=spec,
                              patients=patients, sample_keys=keys)
    index.info["manifest_sha256"] = df.attrs.get("sha256")
    index.info["n_skipped"] = len(emb.skipped)
    path = index.save(args.out)
    print(f"built {index.info['kind']} index of {len(index)} {args.modality} vectors "
          f"({index.info['params'] or 'exact'}) in {path}")
    return 0


def _run_streamed(args) -> int:
    # deferred: keeps `medfm --help` from importing the training/evaluation stack
    from medfm.evaluation.index_stream import KINDS, build_streaming

    if not args.embeddings or args.kind not in KINDS:
        raise UsageError(f"a streamed index needs --embeddings FILES and --kind one of {', '.join(KINDS)}")
    info = build_streaming(args.embeddings, args.out, kind=args.kind, nlist=args.nlist, m=args.pq_m,
                           nprobe=args.nprobe, train_size=args.train_size, refine=args.refine,
                           n_queries=args.recall_queries,
                           progress=not args.no_progress)
    r = info["recall"]
    print(f"built {info['kind']} index of {info['n']} {info.get('modality') or ''} vectors ({info['params']}) in "
          f"{args.out}: recall@{r['k']} {r['recall_at_k']:.3f} vs exact on {r['n_queries']} held-out queries; "
          f"{info['memory_bytes'] / 2**20:.1f} MiB in RAM (flat: {info['flat_memory_bytes'] / 2**20:.1f} MiB), "
          f"{info['disk_bytes'] / 2**20:.1f} MiB on disk, {info['build_seconds']:.1f} s")
    return 0
