"""The typed model config: one schema, the only home of a model config's defaults.

A model config (a run config's ``model:``, a preset file in ``configs/models/``, the dict given
to :func:`medfm.create_model`) is checked against :class:`ModelConfig` with the machinery of
:mod:`medfm.schema`, so an unknown or mistyped key is a :class:`ConfigError` with its path::

    model.trunk.depht: unknown key; known: act, causal, depth, ...

The field defaults below are the defaults of every model; a preset (:mod:`medfm.models.presets`)
overrides some of them and the user's config overrides the preset. Adapter options
(``modalities.<m>``) and tower overrides (``towers.<m>``) stay the adapter's and the tower's to
check; their errors are prefixed with the key path by :func:`medfm.create_model`.

Settings with one owner (see ``docs/DESIGN.md``): ``mask_ratio`` belongs to the masked objective
(``objectives: [{name: masked, mask_ratio: {oct: 0.9, default: 0.75}}]``). The old places,
``modalities.<m>.mask_ratio`` and ``towers.<m>.masked.mask_ratio``, are deprecated: they warn
(:class:`FutureWarning`, naming the new place) and still set the modality's fallback ratio, which
the objective's value overrides.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Literal, Mapping, Optional

from ..errors import ConfigError
from ..schema import to_dict, validate, warn_moved

__all__ = ["ModelConfig", "TrunkConfig", "DecoderConfig", "model_defaults", "validate_model_config",
           "migrate_saved_config", "map_moved_settings", "MASK_RATIO_MOVED"]


def _doc(text: str, **bounds: Any) -> Dict[str, Any]:
    return {"doc": text, **bounds}


@dataclass
class TrunkConfig:
    """The transformer trunk of the ViT towers (:class:`medfm.layers.trunk.Trunk`)."""

    width: int = field(default=192, metadata=_doc("token width of every tower on the trunk", min=1))
    depth: int = field(default=4, metadata=_doc("number of transformer blocks", min=0))
    heads: int = field(default=3, metadata=_doc("attention heads (width must divide by heads)", min=1))
    mlp_ratio: float = field(default=4.0, metadata=_doc("MLP hidden width / width", min_exclusive=0))
    drop_path: float = field(default=0.0, metadata=_doc("stochastic depth rate of the last block", min=0, max=1))
    shared: bool = field(default=True, metadata=_doc("one trunk for all ViT towers (else one each)"))
    qkv_bias: bool = field(default=True, metadata=_doc("bias in the attention projections"))
    norm_eps: float = field(default=1e-6, metadata=_doc("LayerNorm epsilon", min_exclusive=0))
    pre_norm: bool = field(default=False, metadata=_doc("LayerNorm before the first block (CLIP's ln_pre)"))
    causal: bool = field(default=False, metadata=_doc("causal attention (a CLIP text transformer)"))
    act: Literal["gelu", "quick_gelu"] = field(default="gelu", metadata=_doc("MLP activation"))

    def check(self, path: str) -> None:
        if self.width % self.heads:
            raise ConfigError(f"{path}.heads: width {self.width} does not divide by heads {self.heads}")


@dataclass
class DecoderConfig:
    """The light MAE decoder of patch towers (:class:`medfm.models.vit_tower.MAEDecoder`)."""

    width: int = field(default=128, metadata=_doc("decoder token width", min=1))
    depth: int = field(default=2, metadata=_doc("decoder blocks", min=0))
    heads: int = field(default=4, metadata=_doc("decoder attention heads", min=1))

    def check(self, path: str) -> None:
        if self.width % self.heads:
            raise ConfigError(f"{path}.heads: width {self.width} does not divide by heads {self.heads}")


@dataclass
class ModelConfig:
    """A multimodal model: per-modality towers projected into one ``embed_dim`` space.

    ``name`` is the preset the config starts from (``medfm info`` lists them); the
    resolved config keeps it, so a checkpoint records which preset it was built on.
    """

    name: Optional[str] = field(default=None, metadata=_doc(
        "preset this config extends (a configs/models/ file name or a register_model name)"))
    embed_dim: int = field(default=256, metadata=_doc("size of the shared embedding space", min=1))
    trunk: TrunkConfig = field(default_factory=TrunkConfig, metadata=_doc("transformer trunk"))
    decoder: DecoderConfig = field(default_factory=DecoderConfig, metadata=_doc("MAE decoder"))
    modalities: Dict[str, Optional[Dict[str, Any]]] = field(default_factory=dict, metadata=_doc(
        "modality -> adapter options (checked by the adapter; `medfm info` lists modalities)"))
    towers: Dict[str, Dict[str, Any]] = field(default_factory=dict, metadata=_doc(
        "modality -> overrides of the tower config its adapter proposes (pool, cls_token, masked.kind, "
        "masked.norm_pix_loss, trunk, ...; checked by the tower)"))
    init: Dict[str, Any] = field(default_factory=dict, metadata=_doc(
        "modality -> weights to start its tower from ({path, format, strict}); also modalities.<m>.init"))
    init_logit_scale: float = field(default=math.log(1 / 0.07), metadata=_doc(
        "initial log inverse temperature of the contrastive logits (CLIP: log(1/0.07))"))
    init_logit_bias: float = field(default=-10.0, metadata=_doc("initial SigLIP logit bias"))



#: where ``mask_ratio`` lives now (the text of the deprecation warnings)
MASK_RATIO_MOVED = ("mask_ratio belongs to the masked objective: objectives: [{{name: masked, "
                    "mask_ratio: {{{mod}: {value}}}}}] (a number there applies to every modality)")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def map_moved_settings(config: Mapping[str, Any], path: str = "") -> Dict[str, Any]:
    """A user's model config with deprecated places of a setting warned about and mapped.

    ``modalities.<m>.mask_ratio`` (an adapter option until now) becomes
    ``towers.<m>.masked.mask_ratio`` — the modality's fallback ratio, which the masked
    objective's ``mask_ratio`` overrides, as before; both places warn (once per modality and
    value), naming the objective.
    """
    cfg = copy.deepcopy(dict(config))
    mods = cfg.get("modalities")
    for mod, options in (mods.items() if isinstance(mods, Mapping) else ()):
        if isinstance(options, Mapping) and "mask_ratio" in options:
            options = dict(options)
            value = options.pop("mask_ratio")
            mods[mod] = options
            warn_moved(_join(path, f"modalities.{mod}.mask_ratio"), MASK_RATIO_MOVED.format(mod=mod, value=value),
                       key=("mask_ratio", mod, value))
            towers = cfg.setdefault("towers", {})
            if isinstance(towers, dict):
                tower = towers.setdefault(mod, {})
                if isinstance(tower, dict):
                    tower.setdefault("masked", {})
                    if isinstance(tower["masked"], dict):
                        tower["masked"].setdefault("mask_ratio", value)
    towers = cfg.get("towers")
    for mod, tower in (towers.items() if isinstance(towers, Mapping) else ()):
        masked = tower.get("masked") if isinstance(tower, Mapping) else None
        if isinstance(masked, Mapping) and "mask_ratio" in masked:
            value = masked["mask_ratio"]
            warn_moved(_join(path, f"towers.{mod}.masked.mask_ratio"), MASK_RATIO_MOVED.format(mod=mod, value=value),
                       key=("mask_ratio", mod, value))
    return cfg


def model_defaults() -> Dict[str, Any]:
    """The defaults of every model config as plain containers (without the unset ``name``)."""
    out = to_dict(ModelConfig())
    out.pop("name")
    return out


def validate_model_config(config: Mapping[str, Any], path: str = "") -> ModelConfig:
    """Check a model-config mapping (a user's, a preset's or a merged one) → :class:`ModelConfig`.

    Args:
        path: prefix of key paths in messages (``"model"`` inside a run config, a preset file name).
    Raises:
        ConfigError: the first unknown key or bad value, with its key path.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"{path or 'model'}: expected a mapping, got {config!r}")
    return validate(ModelConfig, config, path)


def migrate_saved_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """A checkpoint's saved model config in today's form (the saved file is not changed).

    Checkpoints written before ``mask_ratio`` moved to the masked objective store it among the
    adapter options too; the tower config beside it carries the same value, so it is dropped.
    """
    cfg = copy.deepcopy(dict(config))
    for options in (cfg.get("modalities") or {}).values():
        if isinstance(options, dict):
            options.pop("mask_ratio", None)
    return cfg
