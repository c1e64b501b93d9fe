"""Registered objective classes and their weighted sum built from a config.

An objective is an ``nn.Module`` built from config kwargs and called as
``objective(model, batch, cache) -> {"loss": scalar tensor, "<log>": float, ...}``.
``cache`` is a dict shared by all objectives of one step, so that the embeddings
are computed once (:func:`cached_embeddings`) however many contrastive terms use them.

Config (YAML ``objectives:`` list)::

    [{"name": "clip", "weight": 1.0, "mode": "pairs"},
     {"name": "masked", "weight": 0.5, "mask_ratio": {"oct": 0.9, "default": 0.75}}]

(``mask_ratio`` is set only here: see :class:`~medfm.objectives.masked.MaskedObjective`.)

:func:`build_objective` turns it into a :class:`CompositeObjective` whose loss is
``Σ weight_k · loss_k`` — contrastive and reconstruction in one step (CROMA style).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from medfm.errors import ConfigError
from medfm.registry import OBJECTIVES, register_objective

from .gather import union_names
from .multi import MODES, gram_loss, multimodal_contrastive_loss

__all__ = [
    "cached_embeddings",
    "unwrap_model",
    "ContrastiveObjective",
    "ClipObjective",
    "SigLipObjective",
    "GramObjective",
    "CompositeObjective",
    "build_objective",
]

_EMB_KEY = "embeddings"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP/FSDP/compile wrapper (``.module`` / ``._orig_mod``), else ``model``."""
    for attr in ("module", "_orig_mod"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            return unwrap_model(inner)
    return model


def cached_embeddings(model: nn.Module, batch: Dict, cache: Optional[Dict]) -> Dict[str, torch.Tensor]:
    """``model.encode_batch(batch)`` computed once per step and stored in ``cache``.

    Returns ``{modality: (B, D)}`` L2-normalised, zero rows where the modality is absent.
    """
    if cache is not None and _EMB_KEY in cache:
        return cache[_EMB_KEY]
    encode = getattr(model, "encode_batch", None) or unwrap_model(model).encode_batch
    emb = encode(batch)
    if cache is not None:
        cache[_EMB_KEY] = emb
    return emb


def _batch_size(batch: Dict, emb: Dict[str, torch.Tensor]) -> int:
    if "id" in batch:
        return len(batch["id"])
    return next(iter(emb.values())).shape[0]


def _select(model, batch, cache, modalities) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Float32 embeddings and presence for the objective's modalities.

    Every rank must gather the same modalities: with ``modalities=None`` the names are
    the union over ranks; a modality missing from this rank's batch becomes zero rows
    marked absent.
    """
    emb = cached_embeddings(model, batch, cache)
    names = union_names(emb) if modalities is None else list(modalities)
    B = _batch_size(batch, emb)
    ref = next(iter(emb.values()), None)
    dim = ref.shape[1] if ref is not None else unwrap_model(model).embed_dim
    device = ref.device if ref is not None else unwrap_model(model).logit_scale.device
    present_in = batch.get("present")  # no presence at all: every row present
    out, present = {}, {}
    for name in names:
        if name in emb:
            out[name] = emb[name].float()
            p = None if present_in is None else present_in.get(name)
            if p is None:
                p = torch.full((B,), present_in is None, dtype=torch.bool)
            present[name] = p.to(device=device, dtype=torch.bool)
        else:
            out[name] = torch.zeros(B, dim, device=device)
            present[name] = torch.zeros(B, dtype=torch.bool, device=device)
    return out, present


def _labels(batch: Dict, column: Optional[str]) -> Optional[torch.Tensor]:
    if column is None:
        return None
    labels = batch.get("labels", {})
    if column not in labels:
        raise ConfigError(
            f"label column {column!r} is not in the batch; available: {', '.join(sorted(labels)) or '(none)'}"
        )
    return labels[column]


class ContrastiveObjective(nn.Module):
    """CLIP or SigLIP alignment of the batch's modalities (see :mod:`.multi`).

    Args:
        kind: ``"clip"`` or ``"siglip"``.
        modalities: modalities to align; ``None`` = all in the batch.
        mode: ``"pairs"`` (all pairs) or ``"anchored"`` (pairs with ``anchor``).
        anchor: anchor modality of ``"anchored"`` (default: the first modality).
        label_column: label column for label-aware targets (CLIBD); ``None`` = off.
        hard_negative_beta: concentration of the hard-negative weighting; 0 = off.
        duplicate_positives: samples whose content is identical in one of a pair's
            modalities (``batch["keys"]``: the text adapter keys each report by its
            normalised text — case, whitespace and punctuation ignored) are positives, not
            negatives (default on; ``false`` = plain one-positive-per-row targets).
    """

    kind = "clip"

    def __init__(
        self,
        modalities: Optional[Sequence[str]] = None,
        mode: str = "pairs",
        anchor: Optional[str] = None,
        label_column: Optional[str] = None,
        hard_negative_beta: float = 0.0,
        duplicate_positives: bool = True,
    ):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"{self.kind}: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        if modalities is not None and anchor is not None and anchor not in modalities:
            raise ConfigError(f"{self.kind}: anchor {anchor!r} is not among modalities {list(modalities)}")
        if hard_negative_beta < 0:
            raise ConfigError(f"{self.kind}: hard_negative_beta must be >= 0, got {hard_negative_beta}")
        self.modalities = None if modalities is None else list(modalities)
        self.mode, self.anchor = mode, anchor
        self.label_column = label_column
        self.hard_negative_beta = float(hard_negative_beta)
        self.duplicate_positives = bool(duplicate_positives)

    def forward(self, model: nn.Module, batch: Dict, cache: Optional[Dict] = None) -> Dict[str, Any]:
        emb, present = _select(model, batch, cache, self.modalities)
        core = unwrap_model(model)
        bias = getattr(core, "logit_bias", None) if self.kind == "siglip" else None
        keys = None
        if self.duplicate_positives and emb:
            device = next(iter(emb.values())).device
            keys = {m: k.to(device) for m, k in (batch.get("keys") or {}).items() if m in emb}
        loss, logs = multimodal_contrastive_loss(
            emb, present, core.logit_scale, bias,
            kind=self.kind, mode=self.mode, anchor=self.anchor,
            labels=_labels(batch, self.label_column), hard_negative_beta=self.hard_negative_beta, keys=keys,
        )
        logs["logit_scale"] = float(core.logit_scale.detach().exp())
        return {"loss": loss, **logs}


@register_objective("clip")
class ClipObjective(ContrastiveObjective):
    """Symmetric InfoNCE with learnable temperature (open_clip's ClipLoss)."""

    kind = "clip"


@register_objective("siglip")
class SigLipObjective(ContrastiveObjective):
    """Sigmoid pairwise loss with learnable scale and bias (SigLIP)."""

    kind = "siglip"


@register_objective("gram")
class GramObjective(nn.Module):
    """GRAM volume loss over ``modalities`` (default: all in the batch), anchored at ``anchor``."""

    def __init__(self, modalities: Optional[Sequence[str]] = None, anchor: Optional[str] = None):
        super().__init__()
        if modalities is not None and len(modalities) < 2:
            raise ConfigError(f"gram: needs at least 2 modalities, got {list(modalities)}")
        if modalities is not None and anchor is not None and anchor not in modalities:
            raise ConfigError(f"gram: anchor {anchor!r} is not among modalities {list(modalities)}")
        self.modalities = None if modalities is None else list(modalities)
        self.anchor = anchor

    def forward(self, model: nn.Module, batch: Dict, cache: Optional[Dict] = None) -> Dict[str, Any]:
        emb, present = _select(model, batch, cache, self.modalities)
        core = unwrap_model(model)
        loss, logs = gram_loss(emb, present, core.logit_scale, anchor=self.anchor)
        return {"loss": loss, **logs}


class CompositeObjective(nn.Module):
    """Weighted sum of objectives sharing one per-step cache.

    Returns ``{"loss": Σ w_k loss_k, "<name>": float(loss_k), "<name>/<log>": float, ...}``
    (a repeated name gets a ``#2``, ``#3`` suffix).
    """

    def __init__(self, objectives: Sequence[nn.Module], weights: Sequence[float], names: Sequence[str]):
        super().__init__()
        if not (len(objectives) == len(weights) == len(names)) or not objectives:
            raise ConfigError("a composite objective needs at least one objective, one weight and name each")
        self.objectives = nn.ModuleList(objectives)
        self.weights = [float(w) for w in weights]
        keys: List[str] = []
        for n in names:
            key, i = n, 1
            while key in keys:
                i += 1
                key = f"{n}#{i}"
            keys.append(key)
        self.keys = keys

    def forward(self, model: nn.Module, batch: Dict, cache: Optional[Dict] = None) -> Dict[str, Any]:
        cache = {} if cache is None else cache
        total, logs = None, {}
        for key, weight, objective in zip(self.keys, self.weights, self.objectives):
            out = objective(model, batch, cache)
            term = weight * out["loss"]
            total = term if total is None else total + term
            logs[key] = float(out["loss"].detach())
            logs.update({f"{key}/{k}": v for k, v in out.items() if k != "loss"})
        return {"loss": total, **logs}


ObjectiveConfig = Union[str, Mapping[str, Any], Sequence[Mapping[str, Any]]]


def build_objective(cfg: ObjectiveConfig) -> CompositeObjective:
    """Build a :class:`CompositeObjective` from a config.

    Args:
        cfg: a list of ``{"name": str, "weight": float = 1.0, **kwargs}``, one such
            dict, or a bare name (weight 1, default kwargs).
    Raises:
        ConfigError: unknown name, missing ``name``, bad weight or unknown kwargs.
    """
    if isinstance(cfg, str):
        cfg = [{"name": cfg}]
    elif isinstance(cfg, Mapping):
        cfg = [cfg]
    objectives, weights, names = [], [], []
    for i, entry in enumerate(cfg):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise ConfigError(f"objectives[{i}]: expected a mapping with a 'name', got {entry!r}")
        kwargs = dict(entry)
        name = kwargs.pop("name")
        weight = kwargs.pop("weight", 1.0)
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise ConfigError(f"objectives[{i}] ({name}): weight must be a number, got {weight!r}") from None
        cls = OBJECTIVES.get(name)
        try:
            objectives.append(cls(**kwargs))
        except TypeError as exc:
            raise ConfigError(f"objectives[{i}] ({name}): {exc}") from None
        weights.append(weight)
        names.append(name)
    return CompositeObjective(objectives, weights, names)
