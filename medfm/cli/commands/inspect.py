"""``medfm inspect FILE [--modality M] [--model DIR]``: what the adapter sees, and a PNG preview."""
from __future__ import annotations

from medfm.cli.common import lazy_run


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect", help="canonical metadata of one file as its modality adapter reads it, and a PNG preview",
        description="Reads FILE with its modality adapter and prints what the model would receive: shape, "
                    "spacing, HU range, sampling rate, leads found and derived, sequence length, tokens. Writes a "
                    "preview PNG (mid-slices of volumes, the image after VOI LUT/windowing, 12-lead plots, token "
                    "counts). DNA and text take FILE or FILE#RECORD_ID (FASTA/TSV, .txt).")
    p.add_argument("file", help="file or folder (a DICOM series), or FILE#RECORD_ID for dna")
    p.add_argument("--modality", default=None, help="default: from the DICOM Modality tag or the suffix")
    p.add_argument("--model", default=None,
                   help="checkpoint whose adapter (options, tokenizer) to use; default: the modality's defaults")
    p.add_argument("--out", default=None, help="preview PNG (default: ./inspect_<name>.png)")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    p.set_defaults(func=lazy_run("medfm.cli.runners.inspect:run"))
