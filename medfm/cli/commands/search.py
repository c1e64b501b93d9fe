"""``medfm search``: query a persistent index with a file or a text, using the model that built it."""
from __future__ import annotations

from medfm.cli.common import lazy_run

from medfm.cli.inference_args import add_inference_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "search", help="query an index built by 'medfm index build'",
        description="Encodes the query with the model that built the index (its fingerprint is checked: an "
                    "index built by another model is refused) and prints ranked ids, scores and metadata.")
    p.add_argument("--index", required=True, help="index directory")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--query", help="a query file; for dna also FILE#RECORD_ID of a FASTA/TSV (or a file holding the value)")
    q.add_argument("--text", help="a query text, encoded with the text tower")
    p.add_argument("--query-modality", default=None,
                   help="modality of --query (default: the index's); --text uses --text-modality")
    p.add_argument("--text-modality", default="text")
    p.add_argument("--model", default=None, help="model directory (default: the one recorded in the index)")
    p.add_argument("-k", "--k", type=int, default=10)
    p.add_argument("--include-self", action="store_true",
                   help="keep the query's own sample and the other samples of its patient in the hits (by default "
                        "a query file that is in the index is left out, with its patient: a model's neighbours, "
                        "not the query itself)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_inference_args(p, cache=False, workers_default=0)
    p.set_defaults(func=lazy_run("medfm.cli.runners.search:run"))
