"""Foreign weight files read safely, and the report of what became of each of their keys.

Shared by every weight import (:mod:`medfm.models.vit_weights` and the formats of
:mod:`medfm.modalities.weight_formats`): :func:`load_state_dict_file` reads ``.safetensors`` or a
torch file with ``weights_only=True`` (a pickle that needs code is refused with the reason) and
unwraps ``{"model": ...}``-style wrappers; :class:`KeyReport` lists what was loaded, adapted,
missing, unexpected or mismatched: nothing is dropped silently.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Tuple, Union

import torch
import torch.nn as nn
from safetensors.torch import load_file

from medfm.errors import CheckpointError

WRAPPER_KEYS = ("model", "state_dict", "model_state", "model_state_dict", "module", "encoder")
STRIP_PREFIXES = ("module.", "model.", "encoder.", "backbone.", "visual.", "_orig_mod.")


#: keys of heads used only in pretraining (not part of an encoder checkpoint)
PRETRAINING_HEADS = re.compile(r"^(decoder\.|mlm_head\.|cls\.predictions\.|lm_head\.)")


@dataclass
class KeyReport:
    """What :func:`load_vit_weights` did with every key.

    Attributes:
        loaded: target keys that received a tensor.
        adapted: ``(target key, how)`` for tensors reshaped on the way.
        missing: target keys the checkpoint did not provide (decoder keys listed too).
        unexpected: source keys with no place in the target (MAE decoder, classifier head, ...).
        mismatched: ``(key, source shape, target shape)`` that could not be adapted (not loaded).
        notes: what else the import should tell (a shared trunk, a pooling the engine does differently).
    """

    loaded: List[str] = field(default_factory=list)
    adapted: List[Tuple[str, str]] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def missing_encoder(self) -> List[str]:
        """Missing keys outside pretraining-only heads (MAE decoder, MLM heads): those an encoder checkpoint
        should have had."""
        return [k for k in self.missing if not PRETRAINING_HEADS.match(k)]

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors ({len(self.adapted)} adapted)"]
        lines += [f"  adapted    {k}: {how}" for k, how in self.adapted]
        lines += [f"  missing    {k}" for k in self.missing]
        lines += [f"  unexpected {k}" for k in self.unexpected]
        lines += [f"  mismatched {k}: checkpoint {s} vs model {t}" for k, s, t in self.mismatched]
        lines += [f"  note       {n}" for n in self.notes]
        return "\n".join(lines)


def load_state_dict_file(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Read ``.safetensors`` or a torch file (``weights_only=True``) and unwrap ``{"model": ...}``."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found")
    try:
        if p.suffix == ".safetensors":
            sd = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused, corrupt file, ...
        if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e):
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"{p}: refused: this pickle needs code beyond tensors and plain containers to load, and medfm "
                f"only reads torch files with torch.load(weights_only=True) (running a checkpoint's code is how "
                f"a malicious file takes over a machine); re-save its state dict as .safetensors where you "
                f"trust it. torch says: {first}") from e
        raise CheckpointError(f"{p}: cannot read checkpoint: {type(e).__name__}: {e}") from e
    for _ in range(3):
        if isinstance(sd, Mapping) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
            inner = next((sd[k] for k in WRAPPER_KEYS if k in sd and isinstance(sd[k], Mapping)), None)
            if inner is None:
                break
            sd = inner
    if not isinstance(sd, Mapping) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{p}: no tensor state dict found (top-level keys: {list(sd)[:10] if isinstance(sd, Mapping) else type(sd)})")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def strip_prefixes(key: str) -> str:
    """Drop wrapper prefixes (``module.`` from DDP, ``model.``, ``encoder.``, ...)."""
    changed = True
    while changed:
        changed = False
        for pre in STRIP_PREFIXES:
            if key.startswith(pre):
                key, changed = key[len(pre):], True
    return key


def load_matching(target: nn.Module, source: Mapping[str, torch.Tensor]) -> KeyReport:
    """Load the tensors of ``source`` whose name and shape ``target`` has (the rest reported)."""
    report = KeyReport()
    tgt = target.state_dict()
    new = {}
    for k, v in source.items():
        if k not in tgt:
            report.unexpected.append(k)
        elif v.shape != tgt[k].shape:
            report.mismatched.append((k, tuple(v.shape), tuple(tgt[k].shape)))
        else:
            new[k] = v
    target.load_state_dict(new, strict=False)
    report.loaded = sorted(new)
    report.missing = sorted(k for k in tgt if k not in new)
    return report
