"""``medfm index build``: a persistent faiss index of a manifest's modality, tied to its model."""
from __future__ import annotations

from medfm.cli.common import lazy_run

from medfm.cli.common import add_column_args, add_data_args, add_skip_args
from medfm.cli.inference_args import add_inference_args


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
    b.set_defaults(func=lazy_run("medfm.cli.runners.index:run"))
