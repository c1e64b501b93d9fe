"""``medfm info``: modalities, formats, objectives, models and configs available; ``--config-schema``
prints the typed config schemas (field, type, default, doc) — the reference of every config key."""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import typing
from typing import Any, Dict, List

from ...registry import MODALITIES, MODELS, OBJECTIVES, WEIGHT_FORMATS
from ...schema import _docstring_attributes, describe
from medfm.configs import CONFIG_DIR
from medfm.models.presets import preset_description

#: the schemas ``--config-schema`` prints: kind → (module, dataclass, what reads it)
SCHEMAS = {
    "shared": ("medfm.train.sections", "SHARED_SECTIONS", "the data, optim and train sections of run and finetune "
                                                          "configs; each config adds its own fields"),
    "run": ("medfm.train.run_config", "RunConfig", "medfm pretrain CONFIG"),
    "finetune": ("medfm.finetune.config_schema", "FinetuneConfig", "medfm finetune CONFIG"),
    "model": ("medfm.models.config", "ModelConfig", "a run config's model:, configs/models/*.yaml, create_model"),
    "objectives": ("medfm.registry", "OBJECTIVES", "each entry of a run config's objectives: list"),
}


def modality_summary(name: str) -> Dict[str, Any]:
    """``{"input", "suffixes", "doc"}`` of a modality: from its declaration (no import), else its class."""
    declared = MODALITIES.describe(name)
    if declared is not None:
        return {"input": declared["input_kind"], "suffixes": list(declared["suffixes"]), "doc": declared["summary"]}
    cls = MODALITIES.get(name)  # a plug-in registered by its own module: imported to be described
    return {"input": cls.input_kind, "suffixes": list(cls.suffixes),
            "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""}


def collect() -> dict:

    modalities = []
    for name in MODALITIES.names():
        modalities.append({"name": name, **modality_summary(name)})
    configs = sorted(str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob("*.yaml"))
    formats = [{"name": n, "description": (WEIGHT_FORMATS.describe(n) or {}).get("description")
                or WEIGHT_FORMATS.get(n).description} for n in WEIGHT_FORMATS.names()]
    models = []
    for name, obj in MODELS.items():
        path = getattr(obj, "path", None)
        try:
            extends = (obj() or {}).get("name")
        except Exception as e:  # a broken user preset is listed, not fatal
            extends = f"(unreadable: {type(e).__name__})"
        models.append({"name": name, "description": preset_description(name),
                       "extends": None if extends == name else extends,
                       "file": str(path.relative_to(CONFIG_DIR)) if path is not None else None})
    from medfm.modalities.format_notes import FORMAT_READERS  # deferred: plain data, read only by info

    readers = [dict(zip(("modality", "format", "reader", "not_supported"), r)) for r in FORMAT_READERS]
    return {"modalities": [m["name"] for m in modalities], "modality_details": modalities,
            "objectives": OBJECTIVES.names(), "models": MODELS.names(), "model_details": models,
            "configs": configs, "weight_formats": formats, "format_readers": readers}


def objective_rows() -> List[Dict[str, Any]]:
    """``objectives[i]`` options: ``name``/``weight`` and each registered objective's own arguments."""
    rows: List[Dict[str, Any]] = [
        {"field": "name", "type": "str", "default": "(required)", "doc": "a registered objective: "
         + ", ".join(OBJECTIVES.names())},
        {"field": "weight", "type": "float", "default": 1.0, "doc": "factor of its loss in the sum", "min": 0}]
    for name, cls in OBJECTIVES.items():
        docs: Dict[str, str] = {}
        for base in reversed(cls.__mro__):  # arguments documented on a base class (ContrastiveObjective)
            docs.update(_docstring_attributes(base))
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
            rows.append({"field": f"{name}.{p.name}", "type": str(ann).replace("typing.", "") or "any",
                         "default": None if p.default is p.empty else p.default, "doc": docs.get(p.name, "")})
    return rows


def schema_rows(kind: str) -> List[Dict[str, Any]]:
    """The rows of one schema (see :func:`medfm.schema.describe`). ``shared``: the sections the run and
    fine-tune configs share, once; in ``run`` and ``finetune`` a shared section lists only what that config
    adds to it, and a shared field whose default differs there (``shared_default``)."""
    if kind == "objectives":
        return objective_rows()
    if kind == "shared":
        from ...train.sections import SHARED_SECTIONS  # deferred: keeps `medfm info` from importing the training stack

        rows: List[Dict[str, Any]] = []
        for key, section in SHARED_SECTIONS.items():
            rows.append({"field": key, "type": "section", "default": None,
                         "doc": f"{section.__name__}: " + (section.__doc__ or "").strip().splitlines()[0]})
            rows.extend(describe(section, key))
        return rows
    module, cls, _ = SCHEMAS[kind]
    schema = getattr(importlib.import_module(module), cls)
    return _without_shared_fields(schema, describe(schema))


def _without_shared_fields(schema: Any, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    from ...train.sections import shared_section_of  # deferred: keeps `medfm info` from importing the training stack

    drop: Dict[str, Dict[str, Any]] = {}  # section key -> {shared field: its shared default}
    for f in dataclasses.fields(schema):
        shared = shared_section_of(f.type if isinstance(f.type, type) else typing.get_type_hints(schema)[f.name])
        if shared is not None:
            drop[f.name] = {r["field"]: r["default"] for r in describe(shared)}
    out = []
    for r in rows:
        key, _, rest = r["field"].partition(".")
        if key in drop and not rest:
            shared = shared_section_of(typing.get_type_hints(schema)[key])
            out.append({**r, "doc": f"the shared {shared.__name__} (shared sections) and: {r['doc']}"})
        elif key in drop and rest.split(".")[0] in {n.split(".")[0] for n in drop[key]}:
            if rest in drop[key] and r["default"] != drop[key][rest]:  # a shared field with this config's default
                out.append({**r, "shared_default": drop[key][rest], "doc": f"shared field; default here "
                            f"{_cell(r['default'])} (shared {_cell(drop[key][rest])})"})
        else:
            out.append(r)
    return out


def _cell(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def print_schemas(kinds: List[str], as_json: bool) -> None:
    if any(k in ("run", "finetune") for k in kinds) and "shared" not in kinds:
        kinds = ["shared", *kinds]  # each shared section once, before the configs that use it
    if as_json:
        print(json.dumps({k: schema_rows(k) for k in kinds}, indent=2, default=str))
        return
    for kind in kinds:
        module, cls, used = SCHEMAS[kind]
        print(f"{kind} config ({module}.{cls}; {used}):")
        rows = schema_rows(kind)
        wf = max(len(r["field"]) for r in rows)
        wt = min(max(len(r["type"]) for r in rows), 28)
        defaults = ["" if r["type"] == "section" else _cell(r["default"]) for r in rows]
        wd = min(max(len(d) for d in defaults), 18)
        for r, default in zip(rows, defaults):
            bounds = ", ".join(f"{k.replace('_', ' ')} {r[k]}" for k in ("min", "min_exclusive", "max") if k in r)
            doc = r["doc"] + (f" ({bounds})" if bounds else "")
            print(f"  {r['field']:<{wf}}  {r['type']:<{wt}}  {default:<{wd}}  {doc}".rstrip())
        print()


def run(args) -> int:
    if args.config_schema:
        kinds = list(SCHEMAS) if args.config_schema == "all" else [args.config_schema]
        print_schemas(kinds, args.json)
        return 0
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print("modalities:")
    for m in info["modality_details"]:
        suffixes = " ".join(m["suffixes"]) or "(inline values)"
        print(f"  {m['name']:<8} {m['input']:<6} {suffixes}")
    print("vendor and clinical formats (reader; not supported):")
    for r in info["format_readers"]:
        print(f"  {r['modality']:<10} {r['format']}: {r['reader']}; not: {r['not_supported']}")
    print("objectives: " + ", ".join(info["objectives"]))
    print("models (presets: configs/models/<name>.yaml; a preset's `name:` is the one it extends):")
    width = max((len(m["name"]) for m in info["model_details"]), default=0)
    for m in info["model_details"]:
        extends = f"[extends {m['extends']}] " if m["extends"] else ""
        print(f"  {m['name']:<{width}}  {extends}{m['description']}".rstrip())
    print("weight formats (model.modalities.<m>.init.format, --init MOD=PATH[,format=F]; 'auto' sniffs):")
    for f in info["weight_formats"]:
        print(f"  {f['name']:<12} {f['description']}")
    print("configs:")
    for c in info["configs"]:
        print(f"  {c}")
    print("config keys, types and defaults: medfm info --config-schema [shared|run|finetune|model|objectives]")
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="modalities, weight formats, objectives, models and configs available")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--config-schema", nargs="?", const="all", choices=["all", *SCHEMAS], default=None,
                   metavar="KIND", help="print the config schemas (field, type, default, doc) instead: "
                                        f"all (default) or one of {', '.join(SCHEMAS)}")
    p.set_defaults(func=run)
