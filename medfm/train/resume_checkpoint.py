"""Resumable training checkpoints: written atomically, read without unpickling code.

Layout of ``OUT/checkpoints/step_000123/``::

    config.json, model.safetensors, modalities/   the model (``save_pretrained``)
    trainer_state.pt     optimizer, scheduler, step, data position, RNG states of every rank
                         (tensors and plain containers only: loaded with ``weights_only=True``)
    run_config.json      the training config
    objectives.safetensors  the objectives' tensors, when they hold any (:mod:`medfm.train.task`)

``OUT/checkpoints/latest`` holds the name of the newest complete checkpoint.

The optimizer state is stored by parameter *name* (:func:`optimizer_state_by_name`), not by
position, so a model whose modules are built in another order restores every moment
to the right tensor; a model whose parameter set differs from the checkpoint's is refused
(:func:`load_optimizer_state_by_name` names the first difference).
"""
from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import numpy as np
import torch

from ..checkpoint import RUN_CONFIG
from ..errors import CheckpointError
from ..config_files import load_data_file
from ..io import atomic_directory, atomic_write_text, write_json

STATE_NAME = "trainer_state.pt"
LATEST = "latest"
BY_NAME = "medfm.optimizer.by_name.v1"

log = logging.getLogger("medfm.train")
_STEP_DIR = re.compile(r"step_\d{8}")
#: leftovers of a process killed while writing: atomic_directory temporaries, save_pretrained
#: staging folders, atomic_write_text temporaries of the ``latest`` pointer
_TEMPORARY = re.compile(r"\..*(\.tmp-|\.staging).*|\.latest\..*")


def rng_state() -> Dict[str, Any]:
    """This process's RNG states (torch CPU/CUDA, numpy, python) as plain containers."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, step: int, model, optimizer_state: Dict[str, Any], scheduler, position: Dict[str, int],
                    rng_states: List[Dict[str, Any]], run_config: Dict[str, Any], keep: int = 2,
                    extra: Optional[Callable[[Path], None]] = None) -> Path:
    """Write ``root/step_{step}`` atomically, point ``latest`` at it, prune older ones.

    ``extra(folder)`` writes more files into the checkpoint before it is complete (the objectives'
    tensors: :meth:`medfm.train.task.PretrainTask.save_objectives`).
    """
    root = Path(root)
    name = f"step_{step:08d}"
    with atomic_directory(root / name) as tmp:
        model.save_pretrained(tmp)
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                    "step": int(step), "position": dict(position), "rng": rng_states}, tmp / STATE_NAME)
        write_json(tmp / RUN_CONFIG, run_config)
        if extra is not None:
            extra(tmp)
    atomic_write_text(root / LATEST, name + "\n")
    existing = sorted(p for p in root.glob("step_*") if p.is_dir() and re.fullmatch(r"step_\d{8}", p.name))
    for old in existing[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return root / name


def clean_temporaries(root: Path) -> List[str]:
    """Remove half-written checkpoint folders/files left by a killed process; returns their names.

    A ``step_N.old`` whose ``step_N`` is missing (killed between the two renames of
    :func:`medfm.io.atomic_directory`) is moved back into place instead.
    """
    root = Path(root)
    removed: List[str] = []
    if not root.is_dir():
        return removed
    for p in sorted(root.iterdir()):
        if _TEMPORARY.fullmatch(p.name):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p.name)
        elif p.is_dir() and p.name.endswith(".old") and _STEP_DIR.fullmatch(p.name[:-4]):
            target = p.with_name(p.name[:-4])
            if target.exists():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
            else:
                os.replace(p, target)
    return removed


def checkpoint_candidates(root: Path) -> List[Path]:
    """Complete checkpoints under ``root``, newest first (the one ``latest`` names leads)."""
    root = Path(root)
    done = sorted((p for p in root.glob("step_*") if _STEP_DIR.fullmatch(p.name) and (p / STATE_NAME).is_file()),
                  reverse=True)
    pointer = root / LATEST
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if named in done:
            done.remove(named)
            done.insert(0, named)
    return done


def latest_checkpoint(root: Path) -> Optional[Path]:
    """The newest complete checkpoint under ``root`` (``None`` when there is none)."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / STATE_NAME).is_file():
            return cand
    done = sorted(p for p in root.glob("step_*") if (p / STATE_NAME).is_file())
    return done[-1] if done else None


def load_trainer_state(ckpt: Path) -> Dict[str, Any]:
    """Read ``trainer_state.pt`` with ``weights_only=True`` (no arbitrary unpickling)."""
    path = Path(ckpt) / STATE_NAME
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read training state: {e}") from e


def _named(model: Union[torch.nn.Module, Mapping[str, torch.nn.Parameter]]) -> Dict[str, torch.nn.Parameter]:
    return dict(model.items()) if isinstance(model, Mapping) else dict(model.named_parameters())


def optimizer_state_by_name(model: Union[torch.nn.Module, Mapping[str, torch.nn.Parameter]],
                            optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """``optimizer.state_dict()`` with parameter names instead of positions.

    ``model``: a module (its ``named_parameters``) or ``{name: parameter}`` (the names to store,
    e.g. :meth:`medfm.train.task.PretrainTask.state_parameters`).

    Returns ``{"format": BY_NAME, "state": {name: {...}}, "param_groups": [{..., "params": [name]}]}``.
    """
    names = {id(p): n for n, p in _named(model).items()}
    sd = optimizer.state_dict()
    index_to_name: Dict[int, str] = {}
    groups = []
    for live, saved in zip(optimizer.param_groups, sd["param_groups"]):
        gnames = [names[id(p)] for p in live["params"]]
        index_to_name.update(zip(saved["params"], gnames))
        groups.append({**saved, "params": gnames})
    return {"format": BY_NAME, "state": {index_to_name[i]: s for i, s in sd["state"].items()},
            "param_groups": groups}


def load_optimizer_state_by_name(model: Union[torch.nn.Module, Mapping[str, torch.nn.Parameter]],
                                 optimizer: torch.optim.Optimizer, saved: Dict[str, Any],
                                 *, source: Any = "checkpoint") -> None:
    """Load a state written by :func:`optimizer_state_by_name` whatever the parameter order.

    Raises:
        CheckpointError: the model's trainable parameters differ from the checkpoint's (a name
            on one side only, or a moment whose shape is not the parameter's); the message
            names the first difference. A parameter that sits in another group (a changed
            weight-decay rule) keeps its moments and takes the current group, with a warning.
    """
    params = _named(model)
    names = {id(p): n for n, p in params.items()}
    live = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    saved_groups = [list(g["params"]) for g in saved["param_groups"]]
    have, had = {n for g in live for n in g}, {n for g in saved_groups for n in g}
    if have != had:
        only_model, only_ckpt = sorted(have - had), sorted(had - have)
        first = (f"the model has parameter {only_model[0]!r}, which the checkpoint lacks" if only_model and
                 (not only_ckpt or only_model[0] < only_ckpt[0]) else
                 f"the checkpoint has parameter {only_ckpt[0]!r}, which the model lacks")
        raise CheckpointError(f"{source}: the model's parameters differ from the checkpoint's: {first} "
                              f"({len(only_model)} only in the model, {len(only_ckpt)} only in the checkpoint); "
                              "resume with the checkpoint's config, or start afresh (--no-resume or a new --out)")
    for name, st in saved["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor) and val.ndim > 0 and tuple(val.shape) != tuple(params[name].shape):
                raise CheckpointError(f"{source}: optimizer state {key!r} of parameter {name!r} has shape "
                                      f"{tuple(val.shape)}, the parameter has {tuple(params[name].shape)}")
    if [sorted(g) for g in live] != [sorted(g) for g in saved_groups]:
        log.warning("%s: parameters sit in other optimizer groups than when saved (changed weight-decay rules?); "
                    "moments restored by name, group settings from this run", source)
    current = optimizer.state_dict()
    name_to_index = {n: i for g_live, g_sd in zip(live, current["param_groups"]) for n, i in zip(g_live, g_sd["params"])}
    groups = []
    for g_idx, g_sd in enumerate(current["param_groups"]):
        g_saved = saved["param_groups"][g_idx] if len(saved["param_groups"]) == len(live) and \
            sorted(saved_groups[g_idx]) == sorted(live[g_idx]) else g_sd
        groups.append({**g_saved, "params": g_sd["params"]})
    optimizer.load_state_dict({"state": {name_to_index[n]: s for n, s in saved["state"].items()},
                               "param_groups": groups})


def first_difference(a: Any, b: Any, path: str = "") -> Optional[str]:
    """The first key path where two JSON-like values differ (``None`` when equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                return sub
            d = first_difference(a[k], b[k], sub)
            if d is not None:
                return d
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{path}[{i}]")
            if d is not None:
                return d
        return None
    return None if a == b else (path or "<root>")


def read_run_config(ckpt: Path) -> Dict[str, Any]:
    return load_data_file(Path(ckpt) / RUN_CONFIG, kind="json")  # size and nesting bounded
