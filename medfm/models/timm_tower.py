"""The ``timm`` tower: any timm image model (ResNet, DenseNet, ConvNeXt, EfficientNet, Swin, ViT ...).

Tower config::

    {"type": "timm", "model_name": "densenet121", "model_kwargs": {"in_chans": 1},
     "pool": "avg" | "token" | "max" | "avgmax" | null (the model's default),
     "pretrained_file": PATH | null,   # timm's pretrained loader (adapts in_chans, drops the classifier)
     "checkpoint_path": PATH | null,   # timm's load_checkpoint (a full state dict, strict)
     "state_dict_prefix": "visual.trunk." | null,  # keys of a multi-tower file to take (prefix removed)
     "head": null | {"type": "mlp", "hidden": H}}

The backbone is built by ``timm.create_model(model_name, num_classes=0, global_pool=pool, **model_kwargs)``
and its weights are read by timm's own code (``pretrained_cfg_overlay={"file": ...}`` or
``timm.models.load_checkpoint``, ``weights_only=True``); nothing is downloaded. ``forward`` is
timm's ``forward_head(forward_features(x), pre_logits=True)``: ``(B, C, H, W)`` → ``(B, width)``.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn as nn

from ..errors import CheckpointError, ConfigError
from ..registry import register_tower
from .library_tower import LibraryTower, build_head, flatten_map

_TIMM_FAMILIES = ("timm-transformer", "resnet", "densenet", "efficientnet")


def _prefix_filter(prefix: Optional[str]):
    """A timm ``filter_fn`` keeping the keys under ``prefix`` (removed); ``None`` keeps every key."""
    if not prefix:
        return None

    def keep(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
        out = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not out:
            raise CheckpointError(f"timm tower: no key of the checkpoint starts with {prefix!r}")
        return out

    return keep


def create_timm_model(model_name: str, model_kwargs: Optional[Mapping[str, Any]] = None, pool: Optional[str] = None,
                      pretrained_file: Optional[str] = None, checkpoint_path: Optional[str] = None,
                      state_dict_prefix: Optional[str] = None) -> nn.Module:
    """The timm backbone without classifier, its weights (if any) loaded by timm from a local file."""
    import timm  # deferred: timm is imported only when a timm tower is built
    from timm.models import load_checkpoint  # deferred: as above

    kwargs = dict(model_kwargs or {})
    kwargs["num_classes"] = 0
    if pool is not None:
        kwargs["global_pool"] = pool
    if pretrained_file and checkpoint_path:
        raise ConfigError("timm tower: give pretrained_file or checkpoint_path, not both")
    try:
        if pretrained_file:
            path = Path(pretrained_file).expanduser()
            if not path.is_file():
                raise CheckpointError(f"{path}: timm pretrained_file is not there")
            model = timm.create_model(model_name, pretrained=True,
                                      pretrained_cfg_overlay={"file": str(path), "hf_hub_id": None, "url": None},
                                      **kwargs)
        else:
            model = timm.create_model(model_name, pretrained=False, **kwargs)
    except RuntimeError as e:  # timm's unknown model / bad kwargs
        raise ConfigError(f"timm tower: {e}") from e
    if checkpoint_path:
        path = Path(checkpoint_path).expanduser()
        if not path.is_file():
            raise CheckpointError(f"{path}: timm checkpoint_path is not there")
        try:
            load_checkpoint(model, str(path), strict=True, filter_fn=_prefix_filter(state_dict_prefix),
                            weights_only=True)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: does not fit timm model {model_name!r}: {str(e)[:400]}") from e
    return model


@register_tower("timm")
class TimmTower(LibraryTower):
    """A timm image backbone → pooled ``(B, width)`` (see the module docstring for the config)."""

    kind = "timm"

    def __init__(self, model_name: str, model_kwargs: Optional[Dict[str, Any]] = None, pool: Optional[str] = None,
                 pretrained_file: Optional[str] = None, checkpoint_path: Optional[str] = None,
                 state_dict_prefix: Optional[str] = None, head: Optional[Dict[str, Any]] = None, **unused: Any):
        super().__init__()
        if unused:
            raise ConfigError(f"timm tower: unknown option(s) {sorted(unused)}")
        if pool == "":
            raise ConfigError("timm tower: pool '' keeps every token; give a pooling (avg, token, max, avgmax)")
        self.config = {"model_name": model_name, "model_kwargs": dict(model_kwargs or {}), "pool": pool,
                       "pretrained_file": pretrained_file, "checkpoint_path": checkpoint_path,
                       "state_dict_prefix": state_dict_prefix, "head": copy.deepcopy(head)}
        self.backbone_name = model_name
        self.model = create_timm_model(model_name, model_kwargs, pool, pretrained_file, checkpoint_path,
                                       state_dict_prefix)
        base = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)
        self.head, self.width = build_head(head, base, "timm tower")
        self.backbone_families = _TIMM_FAMILIES  # adaptable-layer families (medfm.finetune.lora_targets)

    def export_config(self) -> Dict[str, Any]:
        """The config a checkpoint stores: the architecture, not the files (the weights are in the checkpoint)."""
        cfg = copy.deepcopy(self.config)
        cfg.update(pretrained_file=None, checkpoint_path=None, state_dict_prefix=None)
        return cfg

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, C, H, W)`` → tokens ``(B, N, C')`` (a feature map is flattened)."""
        return flatten_map(self.model.forward_features(x))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, width)``: timm's pooled pre-logits feature (+ head)."""
        pooled = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return self.apply_head(pooled)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)
