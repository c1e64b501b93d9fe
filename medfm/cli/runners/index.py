"""What ``medfm index`` runs (its parser: :mod:`medfm.cli.commands.index`)."""
from __future__ import annotations

import sys
from medfm.cli.common import column_map, data_options
from medfm.cli.inference_args import inference_options
from medfm.errors import DataError, UsageError
from medfm.evaluation.embed import (check_usable, embed_manifest, load_model, open_manifest, report_skipped,
                                        require_modality, rows_for)
from medfm.evaluation.index import VectorIndex, choose_index, sample_key
from medfm.evaluation.index_stream import KINDS, build_streaming


def run(args) -> int:
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
