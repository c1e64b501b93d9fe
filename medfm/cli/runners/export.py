"""What ``medfm export`` runs (its parser: :mod:`medfm.cli.commands.export`)."""
from __future__ import annotations

import json
from medfm.export import export_model


def run(args) -> int:
    manifest = export_model(args.model_dir, args.format, args.out, modalities=args.modality, opset=args.opset,
                            fuse=args.onnxruntime_fusions)
    print(json.dumps({"out": str(args.out), "format": args.format,
                      "files": {m: t["file"] for m, t in manifest["towers"].items()}}))
    return 0
