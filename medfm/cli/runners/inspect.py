"""What ``medfm inspect`` runs (its parser: :mod:`medfm.cli.commands.inspect`)."""
from __future__ import annotations

import json
from pathlib import Path
from medfm.modalities.inspect import inspect_source, render_preview


def run(args) -> int:
    adapters = None
    if args.model:
        # deferred: only with --model (the model stack: torch, faiss, pandas); a file alone needs its adapter
        from medfm.evaluation.embed import load_model

        model, _ = load_model(args.model)
        adapters = dict(model.adapters)
    result = inspect_source(args.file, args.modality, adapters)
    name = Path(args.file.partition("#")[0]).name.split(".")[0] or "input"
    out = Path(args.out) if args.out else Path(f"inspect_{name}.png")
    result["info"]["preview"] = str(render_preview(result, out))
    info = result["info"]
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{info['modality']}: {info['source']}")
    for note in info.get("notes", ()):
        print(f"  note: {note}")
    for section in ("read", "meta", "tensor"):
        for k, v in info.get(section, {}).items():
            print(f"  {section}.{k}: {v}")
    print(f"  preview: {info['preview']}")
    return 0
