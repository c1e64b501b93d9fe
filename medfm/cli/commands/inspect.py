"""``medfm inspect FILE [--modality M] [--model DIR]``: what the adapter sees, and a PNG preview."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict

from medfm.registry import get_modality, MODALITIES


def declared_modalities() -> Dict[str, Any]:
    """``{name: object with .suffixes}`` for guessing a file's modality without importing every adapter:
    a built-in's declared suffixes, a plug-in's class."""
    out: Dict[str, Any] = {}
    for name in MODALITIES.names():
        declared = MODALITIES.describe(name)
        out[name] = SimpleNamespace(suffixes=tuple(declared["suffixes"])) if declared else MODALITIES.get(name)
    return out


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
    p.set_defaults(func=run)


def run(args) -> int:
    # deferred: keeps `medfm --help` from importing the training/evaluation stack
    from medfm.modalities.inspect import guess_modality, inspect_file, render_preview

    if args.model:
        # deferred: keeps `medfm --help` from importing the training/evaluation stack
        from medfm.evaluation.embed import load_model, require_modality

        model, _ = load_model(args.model)
        modality = args.modality or guess_modality(args.file, {m: type(a) for m, a in model.adapters.items()})
        adapter = require_modality(model, modality)
    else:
        modality = args.modality or guess_modality(args.file, declared_modalities())
        adapter = get_modality(modality)
    result = inspect_file(args.file, adapter)
    name = Path(args.file.partition("#")[0]).name.split(".")[0] or "input"
    out = Path(args.out) if args.out else Path(f"inspect_{name}.png")
    result["info"]["preview"] = str(render_preview(result, out))
    info = result["info"]
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{info['modality']}: {info['source']}")
    for section in ("read", "meta", "tensor"):
        for k, v in info.get(section, {}).items():
            print(f"  {section}.{k}: {v}")
    print(f"  preview: {info['preview']}")
    return 0
