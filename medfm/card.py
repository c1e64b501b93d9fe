"""Model cards: ``README.md`` in a checkpoint folder, in the Hugging Face model-card layout.

:func:`write_model_card` reads what the folder records about itself — ``config.json``
(modalities, towers, trunk, projection size; the ``training`` section the trainer writes:
steps, objectives, training manifest sha256 and row count; ``init_sources``: the weight files
the towers started from; a ``finetune`` section) — plus the latest evaluation results found
beside it (``results.json`` files below the folder or in sibling folders whose ``model.dir`` is
this folder; ``metrics.json`` of a fine-tuning run) and writes YAML front matter + Markdown.
Written by ``medfm pretrain``, ``medfm finetune`` and ``medfm export``; ``medfm card DIR``
refreshes it after new evaluations.

The front matter is Hugging Face model-card metadata (``huggingface_hub.ModelCard.load`` parses
it): ``model-index`` holds every evaluation found (task, dataset = the manifest by name and
sha256, metrics with values), and ``base_model`` the Hub id of the weights the towers started
from, when one is known (:func:`medfm.models.init.hub_id`). The card names folders and hashes,
never an absolute path of the machine that wrote it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from .checkpoint import read_config
from .config_files import load_data_file
from .errors import ConfigError
from .io import atomic_write_text
from .trust import trust_fields, trust_section

CARD_NAME = "README.md"


def _load(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return load_data_file(path, kind="json")  # size and nesting bounded
    except (OSError, ValueError, ConfigError):
        return None


def find_results(directory: os.PathLike) -> List[Dict[str, Any]]:
    """Evaluation records of this checkpoint, newest first: ``[{"path", "mtime", "record"}]``."""
    d = Path(directory).resolve()
    candidates = list(d.rglob("results.json")) + list(d.parent.glob("*/results.json")) + \
        list(d.parent.glob("*/*/results.json"))
    out, seen = [], set()
    for p in candidates:
        p = p.resolve()
        if p in seen:
            continue
        seen.add(p)
        rec = _load(p)
        if not isinstance(rec, dict) or "task" not in rec:
            continue
        mdir = (rec.get("model") or {}).get("dir")
        if mdir is None:
            continue
        try:  # model.dir is relative to the results folder (older records: absolute)
            same = (p.parent / mdir).resolve() == d
        except OSError:
            same = False
        if same or d in p.parents:
            out.append({"path": p, "mtime": p.stat().st_mtime, "record": rec})
    return sorted(out, key=lambda r: -r["mtime"])


def _metric_values(rec: Dict[str, Any]) -> Dict[str, float]:
    """The model's scalar metrics of a record (``metrics``, or ``test`` of ``metrics.json``).

    Left out: per-class entries (``linear/auroc/<class>``), a baseline's scores (``baseline/...``:
    not this model's) and values that are not finite numbers.
    """
    metrics = rec.get("metrics") or rec.get("test") or {}
    classes = {str(c) for c in rec.get("classes") or []}
    out = {}
    for k, v in metrics.items():
        parts = str(k).split("/")
        if parts[0] == "baseline" or (len(parts) > 1 and parts[-1] in classes):
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf"):
            out[str(k)] = float(v)
    return out


def _model_index_entry(task: str, task_name: str, dataset: Dict[str, Any], rec: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """One ``model-index`` result (Hugging Face model-card metadata) or ``None`` without metrics."""
    values = _metric_values(rec)
    if not values:
        return None
    ds = {k: v for k, v in dataset.items() if v not in (None, "")}
    return {"task": {"type": task, "name": task_name}, "dataset": ds,
            "metrics": [{"type": k, "value": v, "name": k} for k, v in values.items()]}


def model_index(name: str, ft: Optional[Dict[str, Any]], metrics: Optional[Dict[str, Any]],
                latest: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The card's ``model-index``: one result per evaluation found (task, dataset = the manifest by
    name and sha256, metrics with values); ``[]`` when there is none."""
    results = []
    if ft and metrics:
        task = (ft.get("task") or {})
        entry = _model_index_entry(f"finetune-{task.get('kind')}", f"fine-tuned {task.get('kind')} head "
                                   f"({task.get('label_column')})",
                                   {"type": "medfm-manifest", "name": "fine-tuning manifest",
                                    "revision": ft.get("manifest_sha256"), "split": "test"}, metrics)
        if entry:
            results.append(entry)
    for task, r in latest.items():
        rec = r["record"]
        man = rec.get("manifest") or {}
        entry = _model_index_entry(task, f"{task} ({rec.get('modality', rec.get('query_modality', '?'))})",
                                   {"type": "medfm-manifest", "name": man.get("name") or "manifest",
                                    "revision": man.get("sha256"), "split": rec.get("split")}, rec)
        if entry:
            results.append(entry)
    return [{"name": name, "results": results}] if results else []


def _metric_rows(rec: Dict[str, Any]) -> List[str]:
    ci = rec.get("ci") or rec.get("test_ci") or {}
    rows = []
    for k, v in _metric_values(rec).items():
        c = ci.get(k)
        ci_s = f"[{c[0]:.4f}, {c[1]:.4f}]" if isinstance(c, (list, tuple)) and len(c) == 2 else ""
        rows.append(f"| {k} | {v:.4f} | {ci_s} |")
    return rows


def _tower_line(name: str, tower: Dict[str, Any], trunk: Dict[str, Any]) -> str:
    kind = tower.get("type", "vit")
    if kind == "hf":
        arch = (tower.get("hf_arch") or {}).get("config", {})
        return (f"| {name} | Hugging Face {(tower.get('hf_arch') or {}).get('model_type', 'bert')} | "
                f"{arch.get('hidden_size', '?')} | {arch.get('num_hidden_layers', '?')} | "
                f"{arch.get('num_attention_heads', '?')} | {tower.get('pool', 'cls')} | "
                f"vocab {arch.get('vocab_size', '?')} |")
    t = {**trunk, **(tower.get("trunk") or {})}
    emb = tower.get("embedder") or {}
    tokens = (f"{emb.get('type')} patch {emb.get('patch_size')} of {emb.get('input_size')}"
              if "patch_size" in emb else f"{emb.get('type')} vocab {emb.get('vocab_size')}, max {emb.get('max_len')}")
    notes = ("causal, " if t.get("causal") else "") + ("class token, " if tower.get("cls_token") else "") + \
        ("pre-norm, " if t.get("pre_norm") else "") + f"LayerNorm eps {t.get('norm_eps', 1e-6)}"
    return f"| {name} | ViT ({tokens}) | {t.get('width')} | {t.get('depth')} | {t.get('heads')} | " \
           f"{tower.get('pool', 'mean')} | {notes} |"


def render_model_card(directory: os.PathLike) -> str:
    """The Markdown text of the card (see module docstring)."""
    d = Path(directory)
    cfg = read_config(d)  # CheckpointError naming the file when it is not a medfm checkpoint
    model = cfg.get("model", {})
    training = cfg.get("training") or {}
    sources = cfg.get("init_sources") or {}
    ft = cfg.get("finetune")
    mods = list((model.get("modalities") or {}).keys())
    results = find_results(d)
    metrics = _load(d / "metrics.json") if ft else None
    front: Dict[str, Any] = {"library_name": "medfm", "tags": ["medical", "multimodal", "medfm"] + mods,
                             "pipeline_tag": "feature-extraction"}
    hub_ids = sorted({s["hub_id"] for s in sources.values() if s.get("hub_id")})
    if hub_ids:  # base_model is a Hub repository id: only when the source weights name one
        front["base_model"] = hub_ids[0] if len(hub_ids) == 1 else hub_ids
    latest: Dict[str, Dict[str, Any]] = {}
    for r in results:
        latest.setdefault(r["record"]["task"], r)
    index = model_index(d.resolve().name, ft, metrics, latest)
    if index:
        front["model-index"] = index
    front["medfm_trust"] = trust_fields(d)
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {d.resolve().name}", "",
             "A medfm multimodal encoder: per-modality towers projected into one "
             f"{model.get('embed_dim')}-dimensional, L2-normalised embedding space.", "",
             "## Modalities", ""]
    for m, opts in (model.get("modalities") or {}).items():
        shown = {k: v for k, v in (opts or {}).items() if k not in ("hf_config",)}
        lines.append(f"- **{m}**: `{json.dumps(shown, default=str)}`")
    trunk = model.get("trunk") or {}
    lines += ["", "## Architecture", "", "| tower | kind | width | depth | heads | pooling | notes |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for m, tower in (model.get("towers") or {}).items():
        lines.append(_tower_line(m, tower, trunk))
    lines += ["", f"Projection: linear, no bias, to {model.get('embed_dim')} dimensions; "
              f"trunk shared across towers: {bool(trunk.get('shared', True))}.", ""]
    lines += ["## Training data", ""]
    man = training.get("manifest") or {}
    if man:
        lines.append(f"- manifest sha256 `{man.get('sha256')}`, {man.get('n_rows')} rows")
    elif ft:
        sizes = (metrics or {}).get("n_samples")
        lines.append(f"- fine-tuning manifest sha256 `{ft.get('manifest_sha256')}`"
                     + (f"; samples per split {json.dumps(sizes)}" if sizes else ""))
    else:
        lines.append("- not recorded (this checkpoint was not written by `medfm pretrain`)")
    lines += ["", "## Training procedure", ""]
    if training:
        objs = ", ".join(f"{o.get('name')} (weight {o.get('weight', 1.0)})" for o in training.get("objectives") or [])
        lines.append(f"- objectives: {objs or 'not recorded'}")
        lines.append(f"- optimiser steps: {training.get('steps')}; unreadable samples skipped: {training.get('n_skipped')}")
    if ft:
        lines.append(f"- fine-tuning: method `{ft.get('method')}` on {', '.join(ft.get('modalities') or [])}, "
                     f"task `{(ft.get('task') or {}).get('kind')}` ({(ft.get('task') or {}).get('label_column')}); "
                     f"base `{ft.get('base_relative') or ft.get('base_name')}` (sha256 `{ft.get('base_sha256')}`)")
    if not training and not ft:
        lines.append("- not recorded")
    lines += ["", "## Source weights", ""]
    if sources:
        lines += ["| tower | file | format | sha256 |", "| --- | --- | --- | --- |"]
        for m, s in sources.items():
            lines.append(f"| {m} | {s.get('name')} ({s.get('file')}) | {s.get('format')} | `{s.get('sha256')}` |")
    else:
        lines.append("- none: every tower was initialised at random before training")
    init_report = _load(d / "init_report.json") or {}  # a family preset's preprocessing and any departure from it
    spec_notes = [(m, n) for m, r in init_report.items() if isinstance(r, dict) for n in r.get("notes") or []
                  if n.startswith(("departure from", "preprocessing: the"))]
    if spec_notes:
        lines += ["", "Preprocessing bound to the source weights (`init_report.json`):", ""]
        lines += [f"- {m}: {n}" for m, n in spec_notes]
    lines += ["", "## Evaluation results", ""]
    if metrics:
        lines += [f"Fine-tuning test split (`metrics.json`, monitor {metrics.get('monitor')}):", "",
                  "| metric | value | 95% CI |", "| --- | --- | --- |"] + _metric_rows(metrics) + [""]
    for task, r in latest.items():
        rec = r["record"]
        rel = os.path.relpath(r["path"], d.resolve())
        lines += [f"### {task} ({rel})", "",
                  f"modality {rec.get('modality', rec.get('query_modality', '?'))}, n={rec.get('n', '?')}, "
                  f"manifest sha256 `{(rec.get('manifest') or {}).get('sha256')}`", "",
                  "| metric | value | 95% CI |", "| --- | --- | --- |"] + _metric_rows(rec) + [""]
    if not metrics and not latest:
        lines.append("- none found beside this checkpoint (run `medfm zeroshot` / `medfm evaluate`, then "
                     "`medfm card DIR`)")
    lines += [""] + trust_section(d)
    lines += ["## How to use", "", "```python", "import medfm",
              f"model = medfm.load_pretrained({d.resolve().name!r})   # this folder",
              f"z = model.encode({(mods or ['modality'])[0]!r}, x)   # (B, {model.get('embed_dim')})", "```", ""]
    return "\n".join(lines)


def write_model_card(directory: os.PathLike) -> Path:
    """Write ``README.md`` into a checkpoint folder; returns its path."""
    path = Path(directory) / CARD_NAME
    atomic_write_text(path, render_model_card(directory))
    return path
