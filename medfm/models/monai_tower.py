"""The ``monai`` tower: a MONAI 3D network's encoder (3D ResNets, the SegResNet encoder).

Tower config::

    {"type": "monai", "net": "resnet18" | "resnet10" | ... | "segresnet",
     "net_kwargs": {...},            # passed to monai.networks.nets.<net> (ResNets: n_input_channels 1 unless given)
     "checkpoint_path": PATH | null, # a state dict (.safetensors, or .pt/.pth read with weights_only=True)
     "state_dict_prefix": "..." | null,
     "head": null | {"type": "mlp", "hidden": H}}

Pooling: a 3D ResNet is built with ``feed_forward=False`` (MONAI's own global average pool,
``(B, C)``); the SegResNet encoder (``SegResNet.encode``) is pooled by the mean over its deepest
feature map. Input ``(B, C, D, H, W)`` in the axis order the family's preprocessing gives.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn as nn
from safetensors.torch import load_file

from ..errors import CheckpointError, ConfigError
from ..registry import register_tower
from .library_tower import LibraryTower, build_head, flatten_map

RESNETS = ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200")


def read_state_dict(path: Path, prefix: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a ``torch.load(weights_only=True)`` file (``{"state_dict": ...}`` unwrapped)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint is not there")
    try:
        if path.suffix == ".safetensors":
            sd: Any = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file or a pickle that needs code to load
        raise CheckpointError(f"{path}: unreadable weights ({type(e).__name__}: {str(e)[:200]})") from e
    for key in ("state_dict", "model", "net"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: not a state dict")
    if prefix:
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not sd:
            raise CheckpointError(f"{path}: no key starts with {prefix!r}")
    return sd


def create_monai_net(net: str, net_kwargs: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """``monai.networks.nets.<net>(**net_kwargs)``, a ResNet without its classifier."""
    from monai.networks import nets  # deferred: MONAI is imported only when a monai tower is built

    kwargs = dict(net_kwargs or {})
    if net in RESNETS:
        kwargs["feed_forward"] = False
        kwargs.setdefault("spatial_dims", 3)
        kwargs.setdefault("n_input_channels", 1)  # a CT volume (MONAI's own default is 3)
        return getattr(nets, net)(**kwargs)
    if net == "segresnet":
        return nets.SegResNet(**kwargs)
    raise ConfigError(f"monai tower: net {net!r} is not supported; one of {', '.join(RESNETS + ('segresnet',))}")


@register_tower("monai")
class MonaiTower(LibraryTower):
    """A MONAI 3D encoder → pooled ``(B, width)``."""

    kind = "monai"

    def __init__(self, net: str, net_kwargs: Optional[Dict[str, Any]] = None, checkpoint_path: Optional[str] = None,
                 state_dict_prefix: Optional[str] = None, head: Optional[Dict[str, Any]] = None, **unused: Any):
        super().__init__()
        if unused:
            raise ConfigError(f"monai tower: unknown option(s) {sorted(unused)}")
        self.config = {"net": net, "net_kwargs": dict(net_kwargs or {}), "checkpoint_path": checkpoint_path,
                       "state_dict_prefix": state_dict_prefix, "head": copy.deepcopy(head)}
        self.backbone_name = f"monai {net}"
        self.net_name = net
        self.model = create_monai_net(net, net_kwargs)
        if checkpoint_path:
            sd = read_state_dict(Path(checkpoint_path), state_dict_prefix)
            try:
                self.model.load_state_dict(sd, strict=True)
            except RuntimeError as e:
                raise CheckpointError(f"{checkpoint_path}: does not fit monai {net}: {str(e)[:400]}") from e
        if net == "segresnet":
            base = int(self.model.init_filters * 2 ** (len(self.model.blocks_down) - 1))
        else:
            base = int(self.model.in_planes)
        self.head, self.width = build_head(head, base, "monai tower")
        self.backbone_families = ("monai-resnet", "segresnet")  # adaptable-layer families (medfm.finetune.lora_targets)

    def export_config(self) -> Dict[str, Any]:
        cfg = copy.deepcopy(self.config)
        cfg.update(checkpoint_path=None, state_dict_prefix=None)
        return cfg

    def _feature_map(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if self.net_name == "segresnet":
            return m.encode(x)[0]
        x = m.act(m.bn1(m.conv1(x)))
        if not m.no_max_pool:
            x = m.maxpool(x)
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, C, D, H, W)`` → tokens ``(B, D'·H'·W', C')`` of the deepest feature map."""
        return flatten_map(self._feature_map(x))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, C, D, H, W)`` → ``(B, width)``."""
        if self.net_name == "segresnet":
            pooled = self._feature_map(x).flatten(2).mean(-1)
        else:
            pooled = self.model(x)  # feed_forward=False: MONAI's avgpool + flatten
        return self.apply_head(pooled)
