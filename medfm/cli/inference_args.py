"""``--workers``, ``--threads`` and ``--cache-dir`` of the inference commands (embed, zeroshot, evaluate,
index build, search): how samples are read and encoded (:mod:`medfm.evaluation.embed_loader`)."""
from __future__ import annotations

import argparse
from typing import Any, Dict


def add_inference_args(parser: argparse.ArgumentParser, *, cache: bool = True, workers_default: Any = None) -> None:
    """Add the flags to ``parser`` (``cache=False``, ``workers_default=0``: a command that reads one query,
    ``search``, where starting a worker costs more than reading the query)."""
    g = parser.add_argument_group("speed (the results do not depend on these)")
    default = ("one per core up to 8, none for a single batch" if workers_default is None
               else str(workers_default))
    g.add_argument("--workers", type=int, default=workers_default, metavar="N",
                   help=f"data-loader processes that read and preprocess while the model encodes "
                        f"(default: {default}; 0 reads in the main process)")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="intra-op threads of the encoder (default: torch's setting: OMP_NUM_THREADS when set, else one per core)")
    if cache:
        g.add_argument("--cache-dir", default=None, metavar="DIR",
                       help="on-disk cache of the preprocessed samples, shared with training's data.cache_dir")


def inference_options(args: argparse.Namespace) -> Dict[str, Any]:
    """``{"num_workers", "threads", "cache_dir"}`` of the flags: keyword arguments of ``embed_manifest``."""
    return {"num_workers": getattr(args, "workers", None), "threads": getattr(args, "threads", None),
            "cache_dir": getattr(args, "cache_dir", None)}
