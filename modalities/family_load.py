"""Shared mechanics of the family weight formats: filling a module, a projection, the report, the spec check."""
from __future__ import annotations

import json
from typing import Any, Dict, Mapping

import torch
import torch.nn as nn

from medfm.errors import CheckpointError

from medfm.models.state_dicts import KeyReport


def fill_module(module: nn.Module, sd: Mapping[str, torch.Tensor], report: KeyReport, label: str) -> None:
    """Load ``sd`` into ``module`` (non-strict); names, prefixed by ``label``, go into ``report``."""
    own = module.state_dict()
    fit = {}
    for key, val in sd.items():
        if key not in own:
            report.unexpected.append(f"{label}{key}")
        elif tuple(own[key].shape) != tuple(val.shape):
            report.mismatched.append((f"{label}{key}", tuple(val.shape), tuple(own[key].shape)))
        else:
            fit[key] = val
    module.load_state_dict(fit, strict=False)
    report.loaded.extend(f"{label}{k}" for k in fit)
    report.missing.extend(f"{label}{k}" for k in own if k not in fit and not k.endswith("num_batches_tracked"))


def fill_projection(model: Any, modality: str, weight: Any, report: KeyReport, source: str) -> None:
    """The model's projection of ``modality`` ← ``weight`` (``(embed_dim, width)``), or the identity when ``None``."""
    proj = model.projections[modality].weight
    with torch.no_grad():
        if weight is None:
            if proj.shape[0] != proj.shape[1]:
                raise CheckpointError(f"the family has no projection, so embed_dim must equal the tower width "
                                      f"{proj.shape[1]} (it is {proj.shape[0]})")
            proj.copy_(torch.eye(proj.shape[0], dtype=proj.dtype))
            report.adapted.append((f"projections.{modality}.weight", "identity (the family has no projection)"))
            return
        if tuple(weight.shape) != tuple(proj.shape):
            report.mismatched.append((f"projections.{modality}.weight <- {source}", tuple(weight.shape),
                                      tuple(proj.shape)))
            return
        proj.copy_(weight)
    report.loaded.append(f"projections.{modality}.weight <- {source}")


def fill_scalar(param: torch.nn.Parameter, value: Any, report: KeyReport, name: str) -> None:
    if value is None:
        return
    with torch.no_grad():
        param.copy_(value.reshape(()).to(param.dtype))
    report.loaded.append(name)


def check_spec(model: Any, modality: str, spec: Any, report: KeyReport) -> None:
    """Notes for each departure of the modality's adapter from its family's spec; refused under strict."""
    adapter = getattr(model, "adapters", {}).get(modality)
    gone = list(getattr(adapter, "departures", []) or [])
    fam = getattr(adapter, "options", {}).get("family")
    for d in gone:
        report.notes.append(f"departure from the {fam} input spec: {d}")
    if gone and spec.strict:
        raise CheckpointError(f"{spec.path}: strict import refused: the {modality!r} preprocessing departs from the "
                              f"{fam} input spec: {'; '.join(gone)}")
    if fam:
        report.notes.append(f"preprocessing: the {fam} input spec" + (" with departures" if gone else ""))


def first_file(folder, names) -> Any:
    for name in names:
        p = folder / name
        if p.is_file():
            return p
    raise CheckpointError(f"{folder}: none of {', '.join(names)} is there")


def json_file(path) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from e
