"""Start a tower from weights on disk: ``model.modalities.<m>.init`` and ``--init MOD=PATH``.

A model config may name, per modality, a file (or folder) whose weights the tower
starts from::

    model:
      name: medfm-base
      modalities:
        oct: {frames: 60, size: [256, 256], init: {path: RETFound_oct.pth, format: retfound, strict: true}}
        text: {init: {path: pubmedbert/, format: hf}}

``format`` is one of :data:`medfm.registry.WEIGHT_FORMATS` (``medfm info`` lists them) or
``auto`` (sniffed from the file's keys). An import happens in two steps:

1. :func:`prepare_init` (inside :func:`medfm.models.resolve_config`) moves every ``init``
   out of the adapter options into ``config["init"]`` and lets the format set what the
   file fixes about the architecture (an open_clip checkpoint's widths, a Hugging Face
   folder's tokenizer, MONAI's LayerNorm epsilon); what the user wrote in
   ``config["towers"][m]`` wins over it.
2. :func:`apply_init` (at the end of :func:`medfm.create_model`, or on a loaded model)
   loads the tensors and keeps a report per tower: matched, adapted (with how), missing,
   unexpected and mismatched keys. ``strict: true`` makes a tower whose encoder keys are
   not all matched an error naming the first missing keys.

Files are read with safetensors or ``torch.load(weights_only=True)`` only. The model
remembers each source's file name and sha256 (``model.init_sources``), which
``save_pretrained`` writes into ``config.json`` and evaluations copy into ``results.json``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from ..errors import CheckpointError, ConfigError, UsageError
from medfm.configs import config_path

from ..io import deep_merge, hash_file, load_config_file, write_json
from ..registry import MODELS
from ..registry import MODALITIES, WEIGHT_FORMATS

log = logging.getLogger("medfm.init")

INIT_REPORT = "init_report.json"
SPEC_KEYS = ("path", "format", "strict", "tower", "heads", "act")


@dataclass
class InitSpec:
    """One tower's import: where from, in which layout, how strictly.

    Attributes:
        modality: the tower to fill.
        path: file or folder.
        format: a registered format name or ``"auto"``.
        strict: error unless every encoder key of the tower is matched.
        options: format options (``tower``: which tower of a multi-tower file, e.g. ``visual``/``text``
            of an open_clip checkpoint or a modality of a medfm checkpoint; ``heads``: attention heads
            when the file does not say; ``act``: ``quick_gelu`` for OpenAI-trained CLIP weights).
    """

    modality: str
    path: Path
    format: str = "auto"
    strict: bool = False
    options: Dict[str, Any] = field(default_factory=dict)

    def to_config(self) -> Dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "strict": self.strict, **self.options}


def parse_spec(modality: str, value: Union[str, os.PathLike, Mapping[str, Any]],
               base_dir: Optional[Path] = None) -> InitSpec:
    """``"PATH"`` or ``{"path": ..., "format": ..., "strict": ...}`` → :class:`InitSpec`.

    Relative paths resolve against ``base_dir`` (the config's folder) when they do not exist as given.
    """
    if isinstance(value, (str, os.PathLike)):
        value = {"path": str(value)}
    if not isinstance(value, Mapping) or not value.get("path"):
        raise ConfigError(f"model.modalities.{modality}.init needs a path (got {value!r})")
    unknown = sorted(set(value) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"model.modalities.{modality}.init: unknown key(s) {unknown}; known: {list(SPEC_KEYS)}")
    p = Path(str(value["path"])).expanduser()
    if not p.is_absolute() and not p.exists() and base_dir is not None and (Path(base_dir) / p).exists():
        p = Path(base_dir) / p
    if not p.exists():
        raise CheckpointError(f"{p}: weights to initialise the {modality!r} tower from are not there")
    fmt = str(value.get("format") or "auto")

    if fmt != "auto" and fmt not in WEIGHT_FORMATS:
        raise ConfigError(f"model.modalities.{modality}.init.format {fmt!r} is unknown; "
                          f"known: auto, {', '.join(WEIGHT_FORMATS.names())}")
    options = {k: value[k] for k in ("tower", "heads", "act") if value.get(k) is not None}
    return InitSpec(modality, p.resolve(), fmt, bool(value.get("strict", False)), options)


def parse_init_arg(text: str) -> Tuple[str, Dict[str, Any]]:
    """``"oct=PATH"``, ``"oct=PATH,format=retfound,strict"`` → ``("oct", {"path": ..., ...})`` (CLI form)."""
    mod, sep, rest = str(text).partition("=")
    if not sep or not mod or not rest:
        raise UsageError(f"--init expects MODALITY=PATH[,format=F][,strict], got {text!r}")
    parts = rest.split(",")
    spec: Dict[str, Any] = {"path": parts[0]}
    for part in parts[1:]:
        key, eq, val = part.partition("=")
        if key == "strict" and not eq:
            spec["strict"] = True
        elif key in ("format", "tower", "act") and eq:
            spec[key] = val
        elif key == "strict" and eq:
            spec["strict"] = val.lower() in ("1", "true", "yes")
        elif key == "heads" and eq:
            spec["heads"] = int(val)
        else:
            raise UsageError(f"--init {text!r}: unknown option {part!r} (format=F, strict, tower=T, heads=N, act=A)")
    return mod.strip(), spec


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def hub_id(path: Path) -> Optional[str]:
    """The Hugging Face Hub repository id a local source came from, when the files say so.

    Known from the Hub cache layout (``.../models--ORG--NAME/snapshots/<rev>/``) or from a
    ``config.json`` beside the weights whose ``_name_or_path`` is a hub id (``org/name``, not a
    local path). ``None`` when neither tells.
    """
    for part in (path, *path.parents):
        if part.name.startswith("models--") and part.name.count("--") >= 2:
            return "/".join(part.name[len("models--"):].split("--", 1))
    cfg = (path if path.is_dir() else path.parent) / "config.json"
    try:
        with open(cfg, encoding="utf-8") as fh:
            name = json.load(fh).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(name, str) and _HUB_ID.fullmatch(name) and not os.path.isabs(name) and not Path(name).exists():
        return name
    return None


def source_identity(spec: InitSpec) -> Dict[str, Any]:
    """``{"name", "file", "sha256", "format"[, "hub_id"]}`` of an import source (a folder: its weights file).

    Names and a hash only: the path on this machine is not recorded (it goes into checkpoints,
    cards and results that travel).
    """

    weights = WEIGHT_FORMATS.get(spec.format).weights_file(spec.path)
    ident = {"name": spec.path.name, "file": weights.name, "sha256": hash_file(weights).hexdigest(),
             "format": spec.format}
    hub = hub_id(spec.path)
    if hub:
        ident["hub_id"] = hub
    return ident


def resolve_format(spec: InitSpec) -> InitSpec:
    """Replace ``format: auto`` by the first registered format whose ``sniff`` accepts the source."""
    if spec.format != "auto":
        return spec

    order = sorted(WEIGHT_FORMATS.items(), key=lambda kv: getattr(kv[1], "sniff_order", 50))
    for name, fmt in order:
        if fmt.sniff(spec.path):
            log.info("init %s: %s looks like a %s checkpoint", spec.modality, spec.path.name, name)
            return InitSpec(spec.modality, spec.path, name, spec.strict, dict(spec.options))
    raise CheckpointError(f"{spec.path}: cannot tell the layout of this checkpoint; give init.format "
                          f"(one of {', '.join(WEIGHT_FORMATS.names())})")


def prepare_init(cfg: Dict[str, Any], base_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Move ``modalities.<m>.init`` into ``cfg["init"]`` and apply what each source fixes.

    Returns the config (modified copy). ``cfg["init"]`` maps modality → spec dict with a
    concrete ``format``. Called by :func:`medfm.models.resolve_config`; idempotent.
    """
    cfg = copy.deepcopy(cfg)
    specs: Dict[str, Any] = dict(cfg.get("init") or {})
    for mod, options in (cfg.get("modalities") or {}).items():
        if isinstance(options, Mapping) and "init" in options:
            options = dict(options)
            value = options.pop("init")
            cfg["modalities"][mod] = options
            if value:
                specs[mod] = value
    if not specs:
        cfg.pop("init", None)
        return cfg

    resolved = {}
    for mod, value in specs.items():
        if mod not in (cfg.get("modalities") or {}):
            raise ConfigError(f"init for {mod!r}, but the model has no {mod!r} modality "
                              f"(it has: {', '.join(cfg.get('modalities') or {}) or 'none'})")
        spec = resolve_format(parse_spec(mod, value, base_dir))
        fmt = WEIGHT_FORMATS.get(spec.format)
        user_tower = (cfg.get("towers") or {}).get(mod, {})
        change = fmt.configure(spec, MODALITIES.get(mod), dict(cfg["modalities"][mod] or {}), user_tower) or {}
        if change.get("modality"):
            cfg["modalities"][mod] = {**(cfg["modalities"][mod] or {}), **change["modality"]}
        if change.get("tower"):
            cfg.setdefault("towers", {})[mod] = deep_merge(change["tower"], user_tower)
        for key, val in (change.get("model") or {}).items():
            if key in cfg.get("_init_fixed", {}) and cfg["_init_fixed"][key] != val:
                raise ConfigError(f"init: {spec.path.name} needs {key}={val}, but another import fixed "
                                  f"{key}={cfg['_init_fixed'][key]}")
            cfg.setdefault("_init_fixed", {})[key] = val
            cfg[key] = val
        resolved[mod] = spec.to_config()
    cfg.pop("_init_fixed", None)
    cfg["init"] = resolved
    return cfg


# ------------------------------------------------------------------ loading
def _report_dict(report: Any) -> Dict[str, Any]:
    return {"matched": list(report.loaded),
            "adapted": [{"key": k, "how": how} for k, how in report.adapted],
            "missing": list(report.missing), "unexpected": list(report.unexpected),
            "mismatched": [{"key": k, "checkpoint": list(s), "model": list(t)} for k, s, t in report.mismatched],
            "notes": list(getattr(report, "notes", []))}


def _check_strict(spec: InitSpec, report: Any) -> None:
    missing = report.missing_encoder
    bad = [k for k, _, _ in report.mismatched]
    if missing or bad:
        first = (missing + bad)[:8]
        raise CheckpointError(
            f"{spec.path}: strict import into the {spec.modality!r} tower failed: {len(missing)} encoder key(s) "
            f"missing and {len(bad)} of a shape that cannot be adapted; first: {', '.join(first)}")


def apply_init(model: Any, specs: Mapping[str, Any], base_dir: Optional[Path] = None,
               verbose: bool = True) -> Dict[str, Dict[str, Any]]:
    """Load every ``{modality: spec}`` into ``model`` (a :class:`MultiModalModel`).

    Sets ``model.init_sources`` (``{modality: {"name", "file", "sha256", "format"[, "hub_id"]}}``)
    and ``model.init_reports`` (``{modality: report dict}``, what ``init_report.json`` holds).
    Logs each report's summary (and each adaptation) at INFO.

    Raises:
        CheckpointError: unreadable/unsafe file, or ``strict`` and encoder keys not matched.
    """

    sources = dict(getattr(model, "init_sources", {}) or {})
    reports = dict(getattr(model, "init_reports", {}) or {})
    used = []
    for mod, value in specs.items():
        model.tower(mod)  # a clear error for an unknown modality
        spec = resolve_format(value if isinstance(value, InitSpec) else parse_spec(mod, value, base_dir))
        fmt = WEIGHT_FORMATS.get(spec.format)
        used.append(fmt)
        report = fmt.load(model, mod, spec)
        if spec.strict:
            _check_strict(spec, report)
        ident = source_identity(spec)
        sources[mod] = ident
        reports[mod] = {"source": ident, "strict": spec.strict, **_report_dict(report)}
        if verbose:
            log.info("init %s from %s (%s, sha256 %s…): %d matched, %d adapted, %d missing, %d unexpected, "
                     "%d mismatched", mod, ident["name"], spec.format, ident["sha256"][:12], len(report.loaded),
                     len(report.adapted), len(report.missing), len(report.unexpected), len(report.mismatched))
            for key, how in report.adapted:
                log.info("  adapted %s: %s", key, how)
            for note in getattr(report, "notes", []):
                log.info("  note: %s", note)
    for fmt in used:
        fmt.release()
    model.init_sources = sources
    model.init_reports = reports
    return reports


def write_init_report(directory: os.PathLike, model: Any) -> Optional[Path]:
    """``init_report.json`` in ``directory`` when ``model`` was initialised from imported weights."""
    reports = getattr(model, "init_reports", None)
    if not reports:
        return None
    path = Path(directory) / INIT_REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, reports)
    return path


def summary_lines(reports: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """One line per imported tower (for a terminal)."""
    out = []
    for mod, r in reports.items():
        out.append(f"init {mod}: {r['source']['name']} ({r['source']['format']}) — {len(r['matched'])} matched, "
                   f"{len(r['adapted'])} adapted, {len(r['missing'])} missing, {len(r['unexpected'])} unexpected")
    return out


def init_fingerprint(base: str, sources: Mapping[str, Any]) -> str:
    """A model fingerprint that also covers the imported sources (their sha256)."""
    h = hashlib.sha256(base.encode())
    h.update(json.dumps({m: s["sha256"] for m, s in sorted(sources.items())}, sort_keys=True).encode())
    return h.hexdigest()


def model_config_with_init(model_cfg: Any, inits: Dict[str, Dict[str, Any]], config_dir: Any = None) -> Any:
    """A run config's ``model`` section (preset name, YAML path or dict) with ``modalities.<m>.init`` set.

    ``inits`` is ``{modality: init spec}`` (from ``--init`` flags, :func:`parse_init_arg`); a model
    given by file name resolves against ``config_dir`` (the run config's folder), then the
    working directory, then the shipped configs."""
    if not inits:
        return model_cfg
    if isinstance(model_cfg, (str, Path)):
        s = str(model_cfg)
        # the config's folder first (the path rule of medfm.paths), then the working directory, then shipped
        candidates = ([Path(config_dir) / s] if config_dir is not None else []) + [Path(s), config_path(s)]
        p = next((c for c in candidates if c.is_file()), Path(s))
        if s in MODELS:
            model_cfg = {"name": s}
        elif p.is_file():
            loaded = load_config_file(p)
            model_cfg = loaded.get("model", loaded)
        else:
            raise UsageError(f"--init: model {s!r} is neither a preset nor a config file")
    model_cfg = deep_merge({}, model_cfg or {})
    mods = model_cfg.setdefault("modalities", {})
    for mod, spec in inits.items():
        if mod not in mods:
            raise UsageError(f"--init {mod}=...: the model config has no {mod!r} modality "
                             f"(it has: {', '.join(mods) or 'none'})")
        mods[mod] = {**(mods[mod] or {}), "init": spec}
    return model_cfg
