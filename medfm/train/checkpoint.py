"""Resumable training checkpoints: written atomically, read without unpickling code.

Layout of ``OUT/checkpoints/step_000123/``::

    config.json, model.safetensors, modalities/   the model (``save_pretrained``)
    trainer_state.pt     optimizer, scheduler, step, data position, RNG states of every rank
                         (tensors and plain containers only: loaded with ``weights_only=True``)
    run_config.json      the training config

``OUT/checkpoints/latest`` holds the name of the newest complete checkpoint.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..errors import CheckpointError
from ..io import atomic_directory, atomic_write_text, write_json

STATE_NAME = "trainer_state.pt"
LATEST = "latest"


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
                    rng_states: List[Dict[str, Any]], run_config: Dict[str, Any], keep: int = 2) -> Path:
    """Write ``root/step_{step}`` atomically, point ``latest`` at it, prune older ones."""
    root = Path(root)
    name = f"step_{step:08d}"
    with atomic_directory(root / name) as tmp:
        model.save_pretrained(tmp)
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                    "step": int(step), "position": dict(position), "rng": rng_states}, tmp / STATE_NAME)
        write_json(tmp / "run_config.json", run_config)
    atomic_write_text(root / LATEST, name + "\n")
    existing = sorted(p for p in root.glob("step_*") if p.is_dir() and re.fullmatch(r"step_\d{8}", p.name))
    for old in existing[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return root / name


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


def read_run_config(ckpt: Path) -> Dict[str, Any]:
    with open(Path(ckpt) / "run_config.json", encoding="utf-8") as fh:
        return json.load(fh)
