"""``medfm info``: modalities, formats, objectives, models and configs available."""
from __future__ import annotations

import json

from ...registry import MODALITIES, MODELS, OBJECTIVES, WEIGHT_FORMATS


def collect() -> dict:
    from medfm.configs import CONFIG_DIR

    modalities = []
    for name, cls in MODALITIES.items():
        modalities.append({"name": name, "input": cls.input_kind, "suffixes": list(cls.suffixes),
                           "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""})
    configs = sorted(str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob("*.yaml"))
    formats = [{"name": n, "description": f.description} for n, f in WEIGHT_FORMATS.items()]
    return {"modalities": [m["name"] for m in modalities], "modality_details": modalities,
            "objectives": OBJECTIVES.names(), "models": MODELS.names(), "configs": configs,
            "weight_formats": formats}


def run(args) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print("modalities:")
    for m in info["modality_details"]:
        suffixes = " ".join(m["suffixes"]) or "(inline values)"
        print(f"  {m['name']:<8} {m['input']:<6} {suffixes}")
    print("objectives: " + ", ".join(info["objectives"]))
    print("models:     " + ", ".join(info["models"]))
    print("weight formats (model.modalities.<m>.init.format, --init MOD=PATH[,format=F]; 'auto' sniffs):")
    for f in info["weight_formats"]:
        print(f"  {f['name']:<12} {f['description']}")
    print("configs:")
    for c in info["configs"]:
        print(f"  {c}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="modalities, weight formats, objectives, models and configs available")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
