"""Published model families: architecture, input spec and prompt convention, each fact with its source.

A family preset binds the preprocessing to the weights. Each entry of :data:`FAMILIES` holds

* ``modalities``: modality key → ``{"adapter": <registered spec adapter>, "spec": {...}}`` — the input
  spec the family's weights were trained with (every field the adapter reproduces);
* ``cite``: field → where the fact comes from (the family's package code or model card);
* ``weights``: the layout a user downloads and ``format``: the medfm weight format that reads it;
* ``zero_shot``: the prompt convention and how logits are formed.

The model preset of the same name (``medfm info`` lists it) is ``{"embed_dim", "modalities"}``; the
weight format fills in the architecture the files fix. Pure data: importing this module imports
no torch (``medfm info`` reads it).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

from medfm.errors import ConfigError
from medfm.registry import MODELS

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
_OC_TRANSFORM = "open_clip/transform.py image_transform (open_clip_torch 3.x): Resize(shortest edge, bicubic), " \
                "CenterCrop, RGB, ToTensor, Normalize"
_BIOMEDCLIP_CARD = "huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 (model card and " \
                   "open_clip_config.json)"
_HF_BACKEND = "transformers 5 image_processing_backends.TorchvisionBackend: uint8 torchvision resize with " \
              "antialias, centre crop int((h - c) / 2), fused rescale + normalize"
_CLIP_PROC = "transformers CLIPImageProcessor defaults and openai/clip-vit-base-patch32 preprocessor_config.json"
_SIGLIP_PROC = "transformers SiglipImageProcessor defaults and google/siglip-base-patch16-224 preprocessor_config.json"
_XRV = "torchxrayvision 1.5 (xrv.utils.normalize, xrv.datasets.XRayCenterCrop, XRayResizer; models.DenseNet.features2)"
_MERLIN = "merlin-vlm merlin/data/monai_transforms.py ImageTransforms (Merlin, Blankemeier et al. 2024)"
_HUBERT_ECG = "HuBERT-ECG paper (Coppola et al., medRxiv 10.1101/2024.11.14.24317328, Methods: pre-processing) " \
              "and huggingface.co/Edoardo-BS/hubert-ecg-base model card"


def _hf_tower(model_type: str) -> Dict[str, Any]:
    return {"type": "hf_encoder", "hf_arch": {"model_type": model_type, "config": {}}, "pool": "pooler"}


LEADS_12 = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]

FAMILIES: Dict[str, Dict[str, Any]] = {
    "biomedclip": {
        "summary": "BiomedCLIP: open_clip with a timm ViT-B/16 image tower and a PubMedBERT text tower (2D images)",
        "embed_dim": 512,
        "weights": "the hub folder: open_clip_config.json + open_clip_model.safetensors or open_clip_pytorch_model.bin "
                   "+ the tokenizer files (vocab.txt, tokenizer_config.json)",
        "format": "open_clip_hf",
        "modalities": {
            "image": {"adapter": "image", "tower": {"type": "timm", "model_name": "vit_base_patch16_224", "pool": None},
                      "spec": {
                "channels": 3, "colour": "rgb", "resize": "shortest_edge", "size": 224, "crop": 224,
                "crop_rule": "round", "interpolation": "bicubic", "backend": "pil", "scale": "unit",
                "mean": OPENAI_MEAN, "std": OPENAI_STD}},
            "text": {"adapter": "text_spec", "tower": {"type": "hf_encoder", "hf_arch": {"model_type": "bert", "config": {}},
                                                       "pool": "cls", "pooling_layer": False,
                                                       "head": {"type": "mlp", "hidden": 640}},
                     "spec": {"max_length": 256, "padding": "max_length",
                                                      "truncation": True, "mask": "input_ids != pad_token_id"}},
        },
        "cite": {"image.mean": _BIOMEDCLIP_CARD + " preprocess_cfg", "image.std": _BIOMEDCLIP_CARD + " preprocess_cfg",
                 "image.size": _BIOMEDCLIP_CARD + " vision_cfg.image_size", "image.interpolation": _OC_TRANSFORM,
                 "image.resize": _OC_TRANSFORM, "image.crop_rule": "torchvision CenterCrop: top = int(round((h - c) / 2))",
                 "text.max_length": _BIOMEDCLIP_CARD + " text_cfg.context_length",
                 "text.padding": "open_clip/tokenizer.py HFTokenizer (padding='max_length', truncation=True)",
                 "text.pool": _BIOMEDCLIP_CARD + " hf_pooler_type cls_last_hidden_state_pooler; hf_proj_type mlp",
                 "architecture": _BIOMEDCLIP_CARD + " vision_cfg.timm_model_name vit_base_patch16_224, timm_pool '' "
                                 "(timm's token pool), timm_proj linear"},
        "zero_shot": {"convention": "template", "template": "this is a photo of {}",
                      "logits": "exp(logit_scale) * cos(image, text)", "cite": _BIOMEDCLIP_CARD},
    },
    "clip-hf": {
        "summary": "CLIP in transformers' layout (CLIPModel: vision + text halves; e.g. PubMedCLIP-style folders)",
        "embed_dim": 512,
        "weights": "a transformers folder: config.json (model_type clip) + model.safetensors + tokenizer + "
                   "preprocessor_config.json",
        "format": "hf_two_tower",
        "modalities": {
            "image": {"adapter": "image", "tower": _hf_tower("clip_vision_model"), "spec": {
                "channels": 3, "colour": "rgb", "resize": "shortest_edge", "size": 224, "crop": 224,
                "crop_rule": "floor", "interpolation": "bicubic", "backend": "torchvision", "scale": "unit",
                "mean": OPENAI_MEAN, "std": OPENAI_STD}},
            "text": {"adapter": "text_spec", "tower": _hf_tower("clip_text_model"), "spec": {"max_length": 77, "padding": "max_length", "truncation": True,
                                                      "mask": "tokenizer attention_mask"}},
        },
        "cite": {"image": _CLIP_PROC + " (shortest_edge 224, crop 224, resample 3 = bicubic, OpenAI mean/std)",
                 "image.backend": _HF_BACKEND, "image.crop_rule": _HF_BACKEND,
                 "text.max_length": "CLIPTextConfig.max_position_embeddings 77",
                 "architecture": "transformers CLIPModel: visual_projection(vision pooler_output), "
                                 "text_projection(text pooler_output), logit_scale"},
        "zero_shot": {"convention": "template", "template": "a photo of {}.",
                      "logits": "exp(logit_scale) * cos(image, text)", "cite": "transformers CLIPModel.forward"},
    },
    "siglip-hf": {
        "summary": "SigLIP in transformers' layout (SiglipModel; MedSigLIP-style folders, sigmoid logits)",
        "embed_dim": 768,
        "weights": "a transformers folder: config.json (model_type siglip) + model.safetensors + tokenizer + "
                   "preprocessor_config.json",
        "format": "hf_two_tower",
        "modalities": {
            "image": {"adapter": "image", "tower": _hf_tower("siglip_vision_model"), "spec": {
                "channels": 3, "colour": "rgb", "resize": "square", "size": 224, "crop": None, "crop_rule": "floor",
                "interpolation": "bicubic", "backend": "torchvision", "scale": "unit", "mean": [0.5, 0.5, 0.5],
                "std": [0.5, 0.5, 0.5]}},
            "text": {"adapter": "text_spec", "tower": {**_hf_tower("siglip_text_model"), "use_mask": False},
                     "spec": {"max_length": 64, "padding": "max_length", "truncation": True,
                                                      "mask": "none (SigLIP's text tower is run without a mask)"}},
        },
        "cite": {"image": _SIGLIP_PROC + " (size 224x224, no crop, resample 3 = bicubic, mean/std 0.5)",
                 "image.backend": _HF_BACKEND,
                 "text.padding": "google/siglip-base-patch16-224 model card: padding='max_length' as in training",
                 "text.max_length": "SiglipTextConfig.max_position_embeddings 64",
                 "architecture": "transformers SiglipModel: image_embeds = vision pooler_output (attention-pool "
                                 "head), text_embeds = text pooler_output (head over the last token), no projection"},
        "zero_shot": {"convention": "template", "template": "This is a photo of {}.",
                      "logits": "exp(logit_scale) * cos(image, text) + logit_bias (sigmoid per pair)",
                      "cite": "transformers SiglipModel.forward; google/siglip model card"},
    },
    "xrv-densenet121": {
        "summary": "torchxrayvision DenseNet-121 chest X-ray model (1x224x224, [-1024, 1024] scaling)",
        "embed_dim": 1024,
        "weights": "a state dict of xrv.models.DenseNet (safetensors, or torch.save(model.state_dict()); xrv's own "
                   "cache file is a pickled module, which medfm does not unpickle)",
        "format": "xrv",
        "modalities": {
            "xray": {"adapter": "image", "tower": {"type": "timm", "model_name": "densenet121",
                                                   "model_kwargs": {"in_chans": 1}, "pool": "avg"}, "spec": {
                "channels": 1, "colour": "mean_of_rgb", "resize": "xrv", "size": 224, "crop": 224,
                "crop_rule": "xrv", "interpolation": "skimage_order1_antialias", "backend": "skimage",
                "scale": "xrv", "mean": None, "std": None}},
        },
        "cite": {"xray.scale": _XRV + ": (2 * x / 255 - 1) * 1024", "xray.colour": "torchxrayvision README: "
                 "img.mean(2) for colour files", "xray.crop_rule": _XRV + " XRayCenterCrop (square, long side)",
                 "xray.interpolation": _XRV + " XRayResizer: skimage.transform.resize(mode='constant', "
                 "preserve_range=True)", "architecture": _XRV + ": features -> relu -> global average pool (1024)"},
        "zero_shot": None,
    },
    "ct-monai-resnet3d": {
        "summary": "a MONAI 3D ResNet CT encoder with Merlin's published CT preprocessing (RAS, 1.5x1.5x3 mm, "
                   "HU [-1000, 1000] -> [0, 1], 224x224x160)",
        "embed_dim": 512,
        "weights": "a state dict of monai.networks.nets.resnetXX(spatial_dims=3, n_input_channels=1) "
                   "(.safetensors, or .pt/.pth read with weights_only=True)",
        "format": "monai_net",
        "modalities": {
            "ct": {"adapter": "volume", "tower": {"type": "monai", "net": "resnet18",
                                                  "net_kwargs": {"n_input_channels": 1}}, "spec": {
                "orientation": "RAS", "spacing": [1.5, 1.5, 3.0], "interpolation": "bilinear",
                "window": [-1000.0, 1000.0], "range": [0.0, 1.0], "clip": True, "size": [224, 224, 160],
                "crop_pad": "SpatialPad then CenterSpatialCrop (symmetric)"}},
        },
        "cite": {"ct": _MERLIN + ": Orientationd RAS, Spacingd pixdim (1.5, 1.5, 3) bilinear, ScaleIntensityRanged "
                 "a_min -1000 a_max 1000 b 0..1 clip, SpatialPadd + CenterSpatialCropd 224x224x160",
                 "architecture": "monai.networks.nets.ResNet (feed_forward=False: global average pool)"},
        "zero_shot": None,
    },
    "hubert-ecg": {
        "summary": "HuBERT-ECG-style encoder in transformers' HuBERT layout (12 leads at 100 Hz, 5 s, flattened)",
        "embed_dim": 768,
        "weights": "a transformers folder: config.json (model_type hubert) + model.safetensors",
        "format": "hf_encoder_dir",
        "modalities": {
            "ecg": {"adapter": "ecg_spec", "tower": {"type": "hf_encoder", "hf_arch": {"model_type": "hubert", "config": {}},
                                                     "pool": "mean"}, "spec": {
                "fs": 100.0, "duration_s": 5.0, "leads": LEADS_12, "band_hz": [0.05, 47.0],
                "scaling": "minmax_per_lead_to_[-1,1]", "layout": "leads concatenated: (12 * fs * duration,)"}},
        },
        "cite": {"ecg": _HUBERT_ECG + ": 100 Hz, 5 s, band-pass 0.05-47 Hz, scaled to [-1, 1], 12 leads flattened "
                 "into one sequence", "ecg.filter_order": "medfm's choice (4, zero-phase): the paper gives no order",
                 "ecg.resampling": "medfm's choice (scipy.signal.resample_poly): the paper names no method",
                 "architecture": "transformers HubertModel; embedding = mean of last_hidden_state"},
        "zero_shot": None,
    },
}


def family(name: str) -> Dict[str, Any]:
    """A copy of family ``name``'s entry; :class:`ConfigError` naming the known families otherwise."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return copy.deepcopy(FAMILIES[name])


def family_spec(name: str, modality: str) -> Dict[str, Any]:
    """The input spec of ``modality`` in family ``name`` (a copy)."""
    fam = family(name)
    for key, entry in fam["modalities"].items():
        if key == modality or entry["adapter"] == modality:
            return dict(entry["spec"])
    raise ConfigError(f"family {name!r} has no {modality!r} input (it has: {', '.join(fam['modalities'])})")


def family_tower(name: str, modality: str) -> Dict[str, Any]:
    """The tower config family ``name`` proposes for ``modality`` (its weight format fixes the rest)."""
    fam = family(name)
    for key, entry in fam["modalities"].items():
        if key == modality or entry["adapter"] == modality:
            return dict(entry["tower"])
    raise ConfigError(f"family {name!r} has no {modality!r} input (it has: {', '.join(fam['modalities'])})")


def reference_spec(name: Optional[str], modality: str, weights_spec: Optional[Dict[str, Any]] = None
                   ) -> Dict[str, Any]:
    """What the weights expect: the family's spec, overlaid by what the user's files state (``weights_spec``:
    a folder's ``preprocessor_config.json`` / ``open_clip_config.json`` values, set by the weight format)."""
    spec = family_spec(name, modality) if name else {}
    spec.update(weights_spec or {})
    return spec


def departures(name: Optional[str], modality: str, options: Dict[str, Any]) -> List[str]:
    """``"field=value (family name: spec value)"`` for each option that differs from what the weights expect
    (:func:`reference_spec` with ``options["weights_spec"]``)."""
    if not name:
        return []
    spec = reference_spec(name, modality, options.get("weights_spec"))
    out = []
    for key, want in spec.items():
        have = options.get(key, want)
        if isinstance(want, (list, tuple)) and isinstance(have, (list, tuple)):
            same = len(want) == len(have) and all(
                (abs(float(a) - float(b)) < 1e-9 if isinstance(a, (int, float)) and isinstance(b, (int, float))
                 else a == b) for a, b in zip(want, have))
        else:
            same = have == want
        if not same:
            out.append(f"{key}={have!r} (family {name}: {want!r})")
    return out


def family_preset(name: str) -> Dict[str, Any]:
    """The model preset of family ``name``: embed_dim and its modalities with their spec adapters."""
    fam = family(name)
    return {"embed_dim": fam["embed_dim"],
            "modalities": {key: {"adapter": entry["adapter"], "family": name}
                           for key, entry in fam["modalities"].items()}}


def _register() -> None:
    for name, fam in FAMILIES.items():
        def preset(_name: str = name) -> Dict[str, Any]:
            return family_preset(_name)

        preset.__doc__ = f"family preset: {fam['summary']}"
        MODELS.register(name)(preset)


_register()
