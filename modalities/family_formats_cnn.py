"""Weight formats of the CNN families (``init.format``): torchxrayvision DenseNet-121, MONAI 3D ResNets.

* ``xrv`` — a state dict of ``torchxrayvision.models.DenseNet`` (``.safetensors``, or a torch file
  read with ``weights_only=True``; torchxrayvision's own cache file is a pickled module, which medfm
  refuses: save its ``state_dict()``). Its keys are timm's ``densenet121`` keys (``features.*``), so
  the ``timm`` tower (``in_chans=1``, average pool) reads them; the pathology ``classifier`` is
  reported, not loaded. The embedding is torchxrayvision's ``features2`` (ReLU, global average pool,
  1024 values): the projection is the identity.
* ``monai_net`` — a state dict of a ``monai.networks.nets`` 3D ResNet (its depth and input channels
  read off the tensors); ``fc`` is reported, not loaded; the projection is the identity when
  ``embed_dim`` equals the tower width.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from medfm.errors import CheckpointError
from medfm.registry import register_weight_format

from .family_load import check_spec, fill_module, fill_projection
from .weight_formats import WeightFormat, state_keys
from medfm.models.state_dicts import KeyReport, load_state_dict_file

#: blocks per stage of MONAI's ResNets (basic blocks; 50+ are bottlenecks)
_DEPTHS = {(1, 1, 1, 1): "resnet10", (2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"}
_BOTTLENECK = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152",
               (3, 24, 36, 3): "resnet200"}


def _keys(path: Path) -> List[str]:
    try:
        return state_keys(path) if path.is_file() else []
    except CheckpointError:
        return []


class XRVFormat(WeightFormat):
    name = "xrv"
    description = "torchxrayvision DenseNet-121 state dict (features.* = timm densenet121, in_chans 1); classifier reported"
    sniff_order = 30

    def sniff(self, path: Path) -> bool:
        keys = _keys(path) if path.suffix == ".safetensors" else []
        return "features.denseblock4.denselayer16.conv2.weight" in keys and "classifier.weight" in keys

    def configure(self, spec, adapter_cls, options, user_tower) -> Dict[str, Any]:
        sd = load_state_dict_file(spec.path)
        conv0 = sd.get("features.conv0.weight")
        if conv0 is None or "features.denseblock4.denselayer16.conv2.weight" not in sd:
            raise CheckpointError(f"{spec.path}: not a DenseNet-121 state dict (features.conv0 / denseblock4 missing)")
        width = int(sd["features.norm5.weight"].shape[0])
        return {"tower": {"type": "timm", "model_name": "densenet121",
                          "model_kwargs": {"in_chans": int(conv0.shape[1])}, "pool": "avg"},
                "model": {"embed_dim": width}}

    def load(self, model, modality, spec) -> KeyReport:
        sd = load_state_dict_file(spec.path)
        report = KeyReport()
        fill_module(model.tower(modality).model, {k: v for k, v in sd.items() if k.startswith("features.")},
                    report, "")
        report.unexpected.extend(k for k in sd if not k.startswith("features."))
        report.notes.append("the pathology classifier (and op_threshs) is not part of the embedding tower")
        fill_projection(model, modality, None, report, "")
        check_spec(model, modality, spec, report)
        return report


def monai_resnet_arch(sd: Dict[str, Any]) -> Dict[str, Any]:
    """``{"net", "net_kwargs"}`` of a MONAI ResNet state dict."""
    if "conv1.weight" not in sd:
        raise CheckpointError("not a MONAI ResNet state dict (conv1.weight missing)")
    conv1 = sd["conv1.weight"]
    if conv1.ndim != 5:
        raise CheckpointError(f"a 3D ResNet needs 5D conv1 weights, got shape {tuple(conv1.shape)}")
    depth = tuple(len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in sd
    net = (_BOTTLENECK if bottleneck else _DEPTHS).get(depth)
    if net is None:
        raise CheckpointError(f"blocks per stage {depth} match no MONAI ResNet")
    kwargs = {"n_input_channels": int(conv1.shape[1]), "conv1_t_size": int(conv1.shape[2])}
    return {"net": net, "net_kwargs": kwargs}


class MonaiNetFormat(WeightFormat):
    name = "monai_net"
    description = "MONAI 3D ResNet state dict (monai.networks.nets.resnetXX, depth read off the tensors); fc reported"
    sniff_order = 40

    def sniff(self, path: Path) -> bool:
        keys = _keys(path) if path.suffix == ".safetensors" else []
        return "conv1.weight" in keys and "layer4.0.conv1.weight" in keys and "bn1.running_mean" in keys

    def configure(self, spec, adapter_cls, options, user_tower) -> Dict[str, Any]:
        arch = monai_resnet_arch(load_state_dict_file(spec.path))
        return {"tower": {"type": "monai", **arch}}

    def load(self, model, modality, spec) -> KeyReport:
        sd = load_state_dict_file(spec.path)
        report = KeyReport()
        tower = model.tower(modality)
        fill_module(tower.model, {k: v for k, v in sd.items() if not k.startswith("fc.")}, report, "")
        report.unexpected.extend(k for k in sd if k.startswith("fc."))
        proj = model.projections[modality].weight
        if proj.shape[0] == proj.shape[1]:
            fill_projection(model, modality, None, report, "")
        else:
            report.notes.append(f"projection {tuple(proj.shape)} starts random (embed_dim != tower width)")
        check_spec(model, modality, spec, report)
        return report


for _cls in (XRVFormat, MonaiNetFormat):
    register_weight_format(_cls.name)(_cls())
