"""LoRA target-module presets of the backbone families that libraries build.

Regexes over module names *inside a tower* (``re.fullmatch``, as :mod:`medfm.finetune.lora`
uses them). A library tower names the ``backbone_families`` of its backbone; the presets of those
that match at least one of its layers (:func:`targets_for`) are what ``target_modules: auto`` adapts the layers the
family's fine-tuning recipes adapt: attention and MLP projections of transformers, the 3×3 / 1×1
convolutions of CNN blocks (peft's LoRA adapts ``Conv2d`` and ``Conv3d``).
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, Tuple

import torch.nn as nn

_ANY = r"(?:.+\.)?"

FAMILY_TARGETS: Dict[str, Tuple[str, ...]] = {
    # timm ViT / DeiT / EVA / Swin / ConvNeXt blocks: attention qkv + proj, MLP fc1 + fc2
    "timm-transformer": (_ANY + r"blocks\.\d+\.attn\.(?:qkv|proj)", _ANY + r"blocks\.\d+\.mlp\.fc[12]"),
    # timm / torchvision ResNet bottleneck and basic blocks
    "resnet": (_ANY + r"layer\d\.\d+\.conv[123]",),
    # DenseNet dense layers (timm, torchvision, torchxrayvision)
    "densenet": (_ANY + r"denseblock\d\.denselayer\d+\.conv[12]",),
    # EfficientNet / MobileNet inverted residuals: point-wise convolutions
    "efficientnet": (_ANY + r"blocks\.\d+\.\d+\.conv_(?:pw|pwl)",),
    # transformers CLIP / SigLIP encoders
    "clip": (_ANY + r"encoder\.layers\.\d+\.self_attn\.(?:q|k|v|out)_proj", _ANY + r"encoder\.layers\.\d+\.mlp\.fc[12]"),
    # transformers BERT-likes (BERT, RoBERTa, Longformer)
    "bert": (_ANY + r"encoder\.layer\.\d+\.attention\.self\.(?:query|key|value)",
             _ANY + r"encoder\.layer\.\d+\.attention\.output\.dense",
             _ANY + r"encoder\.layer\.\d+\.(?:intermediate|output)\.dense"),
    # transformers HuBERT / wav2vec2 encoders
    "hubert": (_ANY + r"encoder\.layers\.\d+\.attention\.(?:q|k|v|out)_proj",
               _ANY + r"encoder\.layers\.\d+\.feed_forward\.(?:intermediate|output)_dense"),
    # MONAI 3D ResNet blocks
    "monai-resnet": (_ANY + r"layer\d\.\d+\.conv[12]",),
    # MONAI SegResNet encoder residual blocks
    "segresnet": (_ANY + r"down_layers\.\d+\.\d+\.conv[12]\.conv",),
}

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def targets_for(module: nn.Module, families: Iterable[str]) -> Tuple[str, ...]:
    """The regexes of those ``families`` that match at least one adaptable layer of ``module``."""
    names = [n for n, m in module.named_modules() if n and isinstance(m, _LAYERS)]
    out = []
    for fam in families:
        pats = FAMILY_TARGETS[fam]
        rx = re.compile("|".join(f"(?:{p})" for p in pats))
        if any(rx.fullmatch(n) for n in names):
            out.extend(pats)
    return tuple(out)
