"""The weight-file layouts a tower can start from (``model.modalities.<m>.init.format``).

Each format, registered in :data:`medfm.registry.WEIGHT_FORMATS`, knows

- ``sniff(path)``: whether a file/folder is in its layout (for ``format: auto``);
- ``configure(spec, adapter_cls, options, user_tower)``: what the file fixes about the
  architecture, as ``{"modality": adapter options, "tower": tower config, "model": {"embed_dim"}}``
  (the user's own ``towers.<m>`` settings win over the tower part);
- ``load(model, modality, spec)``: the tensors into the tower (and its projection), returning
  a :class:`~medfm.models.state_dicts.KeyReport` of matched / adapted / missing / unexpected keys;
- ``weights_file(path)``: the file whose sha256 identifies the source.

Formats and how they map onto the engine (``medfm info`` prints this table):

=============  ==================================================================================
timm           timm ``VisionTransformer`` state dict (``.safetensors``, ``.pth``, ``.bin``)
mae            MAE pretraining checkpoint ``{"model": ...}`` (decoder keys reported as unexpected)
retfound       RETFound ``.pth`` (MAE layout; a ``fc_norm`` fine-tuned variant is reported)
octcube        OCTCube 3D ViT (separable ``pos_embed_spatial`` + ``pos_embed_temporal``)
monai          MONAI ``ViT`` state dict (``patch_embedding.*``, ``blocks.*.mlp.linear1``, ...)
open_clip      open_clip CLIP checkpoint: ``visual.*`` into an image tower, the text transformer
               into a ``text`` tower (causal, end-of-text pooling), projections and logit scale
hf             Hugging Face model folder (BERT family) with its tokenizer
barcodebert    BarcodeBERT folder (a ``BertForMaskedLM`` over k-mers) into the ``dna`` tower
medfm          one tower (+ projection) of a medfm checkpoint directory
=============  ==================================================================================

Every file is read with ``safetensors`` or ``torch.load(weights_only=True)``; a pickle
that needs code to load is refused with the reason.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import torch

from medfm import checkpoint as ckpt
from medfm.errors import CheckpointError, ConfigError
from medfm.config_files import load_data_file
from medfm.models.state_dicts import KeyReport, load_matching, load_state_dict_file, strip_prefixes
from medfm.models.vit_weights import (load_openclip_text, load_vit_weights, monai_to_timm, note_shared_trunk,
                                      openclip_depth, openclip_visual_to_timm)
from medfm.registry import WEIGHT_FORMATS, register_weight_format

#: files a Hugging Face model folder keeps its weights in, in order of preference
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_CACHE: Dict[Tuple[str, float], Dict[str, torch.Tensor]] = {}


def read_state(path: Path) -> Dict[str, torch.Tensor]:
    """State dict of a file, read once per (path, mtime) while a config is being built and loaded."""
    key = (str(path), path.stat().st_mtime)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = load_state_dict_file(path)
    return _CACHE[key]


def clear_cache() -> None:
    _CACHE.clear()


def state_keys(path: Path) -> List[str]:
    """Tensor names of a weights file (safetensors: from the header only)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open  # deferred: only a safetensors header is read here

        try:
            with safe_open(str(path), "pt") as fh:
                return list(fh.keys())
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read safetensors header: {e}") from e
    return list(read_state(path))


class WeightFormat:
    """Base class; see the module docstring for the contract."""

    name = ""
    description = ""
    sniff_order = 50

    def weights_file(self, path: Path) -> Path:
        if path.is_dir():
            raise CheckpointError(f"{path}: a folder, but format {self.name!r} reads a single weights file")
        return path

    def sniff(self, path: Path) -> bool:
        return False

    def release(self) -> None:
        """Drop the file read for ``configure``/``load`` (called once every tower is loaded)."""
        clear_cache()

    def configure(self, spec, adapter_cls, options: Dict[str, Any], user_tower: Mapping[str, Any]) -> Dict[str, Any]:
        return {}

    def load(self, model, modality: str, spec) -> KeyReport:
        raise NotImplementedError


def _vit_keys(keys) -> set:
    return {strip_prefixes(k) for k in keys}


# ------------------------------------------------------------------ ViT family
class ViTFamily(WeightFormat):
    """timm / MAE / RETFound / OCTCube: timm ``VisionTransformer`` key names (see :func:`load_vit_weights`)."""

    def _keys(self, path: Path) -> set:
        if path.is_dir() or path.suffix not in (".safetensors", ".pth", ".pt", ".bin", ".ckpt"):
            return set()
        return _vit_keys(state_keys(path))

    def configure(self, spec, adapter_cls, options, user_tower):
        keys = _vit_keys(read_state(spec.path))
        tower: Dict[str, Any] = {}
        if "cls_token" in keys:  # the source attends over a class token: keep it, whatever the pooling
            tower["cls_token"] = True
        if any(k.startswith("norm_pre.") for k in keys):
            tower["trunk"] = {"pre_norm": True}
        return {"tower": tower}

    def load(self, model, modality, spec):
        sd = read_state(spec.path)
        report = load_vit_weights(model, sd, modality=modality)
        keys = _vit_keys(sd)
        if any(k.startswith("fc_norm.") for k in keys) and not any(k.startswith("norm.") for k in keys):
            report.notes.append("fc_norm (applied after mean pooling in the source) loaded as the trunk's final "
                                "norm (applied before pooling): pooled features differ from the source model's")
        note_shared_trunk(model, modality, report)
        return report


class TimmFormat(ViTFamily):
    name = "timm"
    description = "timm VisionTransformer state dict (.safetensors/.pth/.bin)"
    sniff_order = 40

    def sniff(self, path):
        return "patch_embed.proj.weight" in self._keys(path)


class MAEFormat(ViTFamily):
    name = "mae"
    description = "MAE pretraining checkpoint {'model': state_dict}; decoder keys reported, not loaded"
    sniff_order = 30

    def sniff(self, path):
        keys = self._keys(path)
        return "patch_embed.proj.weight" in keys and any(k.startswith(("decoder_", "mask_token")) for k in keys)


class RETFoundFormat(ViTFamily):
    name = "retfound"
    description = "RETFound .pth (MAE ViT layout, {'model': state_dict})"
    sniff_order = 90  # the same keys as MAE/timm: only chosen by name


class OCTCubeFormat(ViTFamily):
    name = "octcube"
    description = "OCTCube 3D ViT (.pth; separable pos_embed_spatial/temporal, 3D tubelets)"
    sniff_order = 20

    def sniff(self, path):
        return "pos_embed_spatial" in self._keys(path)


# ----------------------------------------------------------------------- MONAI
class MONAIFormat(WeightFormat):
    name = "monai"
    description = "MONAI ViT state dict (.pt/.pth/.safetensors); LayerNorm eps 1e-5, qkv bias zero-filled"
    sniff_order = 10

    def sniff(self, path):
        if path.is_dir():
            return False
        return any(k.endswith("patch_embedding.position_embeddings") for k in state_keys(path))

    def configure(self, spec, adapter_cls, options, user_tower):
        sd = read_state(spec.path)
        tower: Dict[str, Any] = {"trunk": {"norm_eps": 1e-5}}
        if any(strip_prefixes(k) == "cls_token" for k in sd):
            tower["cls_token"] = True
        fc1 = next((v for k, v in sd.items() if k.endswith("blocks.0.mlp.linear1.weight")), None)
        if fc1 is not None:
            tower["trunk"].update(width=int(fc1.shape[1]), mlp_ratio=fc1.shape[0] / fc1.shape[1])
        return {"tower": tower}

    def load(self, model, modality, spec):
        report = load_vit_weights(model, monai_to_timm(read_state(spec.path)), modality=modality, pos_prefix=0)
        note_shared_trunk(model, modality, report)
        return report


# ------------------------------------------------------------------- open_clip
#: OpenAI CLIP's mean/std (open_clip's default image normalisation)
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def _oc_state(path: Path) -> Dict[str, torch.Tensor]:
    """An open_clip checkpoint (plain, ``{"state_dict": ...}`` from training, ``module.``-prefixed)."""
    sd = read_state(path)
    out = {}
    for k, v in sd.items():
        while k.startswith(("module.", "_orig_mod.")):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def _oc_part(spec, adapter_cls) -> str:
    part = spec.options.get("tower")
    if part is None:
        part = "text" if getattr(adapter_cls, "name", "") == "text" else "visual"
    if part not in ("visual", "text"):
        raise ConfigError(f"open_clip init: tower must be 'visual' or 'text', got {part!r}")
    return part


class OpenCLIPFormat(WeightFormat):
    """open_clip ``CLIP``: ViT image tower + causal text transformer, their projections and logit scale.

    Image tower: ``conv1`` (no bias: zero bias) → patch embedder; ``class_embedding`` + its position →
    class token; ``ln_pre`` → the trunk's pre-norm; ``resblocks`` → timm blocks (``in_proj`` is timm's
    ``qkv``); ``ln_post`` + class-token pooling; ``proj`` → the modality's projection.
    Text tower: ``token_embedding`` + ``positional_embedding`` → token embedder; causal blocks;
    ``ln_final``; end-of-text pooling (``pool: last``: the last real token of right-padded ids, which is
    open_clip's ``argmax`` with its tokenizer); ``text_projection`` → projection. ``logit_scale`` (and a
    SigLIP ``logit_bias``) load with the text tower. LayerNorm eps 1e-5, exact GELU (``init.act: quick_gelu``
    for OpenAI-trained weights: the file does not record the activation). Attention heads: ``width // 64`` (open_clip's
    default head width) unless ``init.heads`` or ``towers.<m>.trunk.heads`` says otherwise.
    Not supported: attentional pooling (CoCa), ``hf`` text towers (BiomedCLIP's PubMedBERT: import it
    with format ``hf`` instead), timm-backbone image towers.
    """

    name = "open_clip"
    description = "open_clip CLIP checkpoint: visual.* → image tower, text transformer → text tower, + projections"
    sniff_order = 5

    def sniff(self, path):
        if path.is_dir():
            return False
        keys = {k.split("module.", 1)[-1] for k in state_keys(path)}
        return "visual.conv1.weight" in keys or ("text_projection" in keys and "token_embedding.weight" in keys)

    def configure(self, spec, adapter_cls, options, user_tower):
        sd = _oc_state(spec.path)
        part = _oc_part(spec, adapter_cls)
        heads = spec.options.get("heads")
        if part == "visual":
            if "visual.conv1.weight" not in sd:
                raise CheckpointError(f"{spec.path}: no open_clip ViT image tower (visual.conv1.weight); "
                                      "timm-backbone and ResNet towers are not supported")
            if any(k.startswith("visual.attn_pool") for k in sd):
                raise CheckpointError(f"{spec.path}: attentional pooling (CoCa) is not supported")
            w = sd["visual.conv1.weight"]
            width, patch = int(w.shape[0]), int(w.shape[-1])
            fc1 = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"]
            trunk = {"width": width, "depth": openclip_depth(sd, "visual."), "heads": int(heads or max(1, width // 64)),
                     "mlp_ratio": fc1.shape[0] / width, "norm_eps": 1e-5, "pre_norm": "visual.ln_pre.weight" in sd,
                     "act": spec.options.get("act", "gelu")}
            tower = {"pool": "cls", "trunk": trunk, "embedder": {"patch_size": patch}}
            mod = {}
            defaults = getattr(adapter_cls, "defaults", {})
            if "mean" in defaults and "mean" not in options:  # open_clip's normalisation (grey: channel average)
                grey = int(options.get("channels", defaults.get("channels", 3))) == 1
                mod = ({"mean": [sum(OPENAI_MEAN) / 3], "std": [sum(OPENAI_STD) / 3]} if grey
                       else {"mean": OPENAI_MEAN, "std": OPENAI_STD})
            model = {"embed_dim": int(sd["visual.proj"].shape[1])} if "visual.proj" in sd else {}
            return {"tower": tower, "modality": mod, "model": model}
        if "token_embedding.weight" not in sd:
            raise CheckpointError(f"{spec.path}: no open_clip text transformer (token_embedding.weight); "
                                  "a Hugging Face text tower (text.transformer.*) imports with format 'hf'")
        vocab, width = sd["token_embedding.weight"].shape
        ctx = int(sd["positional_embedding"].shape[0])
        fc1 = sd["transformer.resblocks.0.mlp.c_fc.weight"]
        trunk = {"width": int(width), "depth": openclip_depth(sd, ""), "heads": int(heads or max(1, width // 64)),
                 "mlp_ratio": fc1.shape[0] / width, "norm_eps": 1e-5, "causal": True,
                 "act": spec.options.get("act", "gelu")}
        tower = {"trunk": trunk, "pool": "last", "embedder": {"vocab_size": int(vocab), "max_len": ctx}}
        mod = {}
        if getattr(adapter_cls, "name", "") == "text":
            mod = {"tokenizer": "open_clip", "max_length": ctx}
        model = {"embed_dim": int(sd["text_projection"].shape[1])} if "text_projection" in sd else {}
        return {"tower": tower, "modality": mod, "model": model}

    def load(self, model, modality, spec):
        sd = _oc_state(spec.path)
        part = _oc_part(spec, type(model.adapters.get(modality)) if hasattr(model, "adapters") else None)
        tower = model.tower(modality)
        if not hasattr(tower, "trunk"):
            raise CheckpointError(f"open_clip init: the {modality!r} tower is not a vit tower "
                                  f"({type(tower).__name__}); build the model from a config so the format sets it")
        proj_w = None
        if part == "visual":
            src, other = openclip_visual_to_timm(sd)
            proj_w = sd.get("visual.proj")
            report = load_vit_weights(tower, src)
            report.unexpected += other
            report.notes.append("the text tower's keys of this file were not used (import them into a text tower)")
        else:
            report = load_openclip_text(tower, sd, f"{spec.path}", modality)
            proj_w = sd.get("text_projection")
            with torch.no_grad():
                for key in ("logit_scale", "logit_bias"):
                    if key in sd and hasattr(model, key):
                        getattr(model, key).copy_(sd[key].reshape(()))
                        report.loaded.append(f"(model) {key}")
            if any(k.startswith("visual.") for k in sd):
                report.notes.append("the image tower's keys (visual.*) of this file were not used "
                                    "(import them into an image tower)")
        if proj_w is not None and hasattr(model, "projections"):
            lin = model.projections[modality]
            if tuple(lin.weight.shape) != (proj_w.shape[1], proj_w.shape[0]):
                report.mismatched.append((f"projections.{modality}.weight", tuple(proj_w.shape), tuple(lin.weight.shape)))
            else:
                with torch.no_grad():
                    lin.weight.copy_(proj_w.t())
                report.loaded.append(f"projections.{modality}.weight")
                report.adapted.append((f"projections.{modality}.weight", "transposed (x @ proj → Linear)"))
        return report


# --------------------------------------------------------------- Hugging Face
def hf_weights_file(path: Path) -> Path:
    for name in HF_WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    if (path / "model.safetensors.index.json").is_file() or (path / "pytorch_model.bin.index.json").is_file():
        raise CheckpointError(f"{path}: sharded Hugging Face weights are not supported; save with a larger "
                              "max_shard_size")
    raise CheckpointError(f"{path}: no {' or '.join(HF_WEIGHT_FILES)} in this Hugging Face folder")


class HFFormat(WeightFormat):
    """A Hugging Face ``transformers`` folder (BERT family): the tower and the tokenizer come from it.

    ``configure`` sets the adapter's ``model_dir`` (tokenizer + architecture); ``load`` reads the
    weights file again to report every key (a ``BertModel`` checkpoint without MLM head: the head is
    missing, the encoder complete; tied decoder weights: copied from the word embeddings).
    """

    name = "hf"
    description = "Hugging Face model folder (BERT family: config.json + model.safetensors/pytorch_model.bin)"
    sniff_order = 60

    def weights_file(self, path):
        if not path.is_dir():
            raise CheckpointError(f"{path}: format {self.name!r} reads a Hugging Face model folder")
        return hf_weights_file(path)

    def _hf_config(self, path: Path) -> Dict[str, Any]:
        p = path / "config.json"
        if not p.is_file():
            return {}
        return load_data_file(p, kind="json")  # size and nesting bounded

    def sniff(self, path):
        cfg = self._hf_config(path) if path.is_dir() else {}
        return bool(cfg.get("model_type")) and cfg.get("format") != "medfm"

    def configure(self, spec, adapter_cls, options, user_tower):
        defaults = getattr(adapter_cls, "defaults", {})
        if "model_dir" not in defaults:
            raise ConfigError(f"format {self.name!r}: the {getattr(adapter_cls, 'name', '?')!r} modality cannot "
                              "take a Hugging Face model (it has no model_dir option)")
        mod = {"model_dir": str(spec.path)}
        if "tower" in defaults:
            mod["tower"] = "hf"
        return {"modality": mod}

    def load(self, model, modality, spec):
        tower = model.tower(modality)
        if not hasattr(tower, "mlm"):
            raise CheckpointError(f"format {self.name!r}: the {modality!r} tower is a {type(tower).__name__}, "
                                  "not a Hugging Face tower")
        sd = load_state_dict_file(self.weights_file(spec.path))
        tgt = tower.mlm.state_dict()
        base = tower.mlm.base_model_prefix  # "bert", "roberta", ...
        report = KeyReport()
        new: Dict[str, torch.Tensor] = {}
        for k, v in sd.items():
            name = k if k in tgt else f"{base}.{k}"
            if name not in tgt and k.endswith("predictions.bias") and "cls.predictions.decoder.bias" in tgt:
                name = "cls.predictions.decoder.bias"
            if name not in tgt:
                report.unexpected.append(k)
            elif tuple(v.shape) != tuple(tgt[name].shape):
                report.mismatched.append((name, tuple(v.shape), tuple(tgt[name].shape)))
            else:
                new[name] = v
        dec, words = "cls.predictions.decoder.weight", f"{base}.embeddings.word_embeddings.weight"
        if dec in tgt and dec not in new and words in new:
            new[dec] = new[words]
            report.adapted.append((dec, "tied to the word embeddings (not stored separately in the file)"))
        tower.mlm.load_state_dict(new, strict=False)
        report.loaded = sorted(new)
        report.missing = sorted(k for k in tgt if k not in new)
        vocab_file = int(self._hf_config(spec.path).get("vocab_size", tower.vocab_size))
        adapter = getattr(model, "adapters", {}).get(modality)
        tok_vocab = getattr(adapter, "vocab_size", None) if adapter is not None else None
        if tok_vocab is not None and int(tok_vocab) > vocab_file:
            raise CheckpointError(f"{spec.path}: the {modality!r} tokenizer has {tok_vocab} tokens but the model's "
                                  f"vocabulary only {vocab_file}: token ids would fall outside the embedding")
        if tok_vocab is not None and int(tok_vocab) != vocab_file:
            report.notes.append(f"tokenizer vocabulary {tok_vocab} < model vocabulary {vocab_file} (unused rows)")
        return report


class BarcodeBERTFormat(HFFormat):
    """BarcodeBERT (a ``BertForMaskedLM`` over non-overlapping k-mers) into the ``dna`` tower.

    The vocabulary must be the dna adapter's k-mer vocabulary (``4**k`` k-mers + specials, or
    ``5**k`` with ``N``): the sizes are checked; the order of the k-mers cannot be checked from the
    weights, so a vocabulary file in the folder (``vocab.txt``/``tokenizer.json``) is compared when present.
    """

    name = "barcodebert"
    description = "BarcodeBERT folder (BertForMaskedLM over k-mers) into the dna tower; vocabulary checked"
    sniff_order = 95  # a BERT folder: only by name

    def sniff(self, path):
        return False

    def load(self, model, modality, spec):
        report = super().load(model, modality, spec)
        adapter = model.adapters.get(modality)
        vocab = getattr(adapter, "vocab_size", None)
        tower = model.tower(modality)
        if vocab is not None and int(vocab) != int(tower.vocab_size):
            raise CheckpointError(f"{spec.path}: BarcodeBERT vocabulary {tower.vocab_size} ≠ the dna tokenizer's "
                                  f"{vocab} (k={getattr(adapter, 'k', '?')}): set the dna modality's k/alphabet to "
                                  "the checkpoint's")
        vf = spec.path / "vocab.txt"
        tok_vocab = getattr(adapter, "_vocab", None)
        if vf.is_file() and tok_vocab:
            words = [w.strip() for w in vf.read_text(encoding="utf-8").splitlines()]
            diff = [i for i, w in enumerate(words) if w in tok_vocab and tok_vocab[w] != i]
            if diff:
                raise CheckpointError(f"{vf}: k-mer {words[diff[0]]!r} has id {diff[0]} in the checkpoint but "
                                      f"{tok_vocab[words[diff[0]]]} in the dna tokenizer ({len(diff)} differ)")
            report.notes.append(f"vocab.txt order checked against the dna tokenizer ({len(words)} tokens)")
        return report


# ----------------------------------------------------------------------- medfm
class MedFMFormat(WeightFormat):
    """One tower (and its projection) of a medfm checkpoint directory (``init.tower``: its modality name)."""

    name = "medfm"
    description = "one tower (+ projection) of a medfm checkpoint directory (init.tower: source modality)"
    sniff_order = 1

    def weights_file(self, path):
        if not (path / ckpt.WEIGHTS_NAME).is_file():
            raise CheckpointError(f"{path}: not a complete medfm checkpoint (no {ckpt.WEIGHTS_NAME})")
        return path / ckpt.WEIGHTS_NAME

    def sniff(self, path):
        return ckpt.is_medfm_config(path)

    def load(self, model, modality, spec):
        source = type(model).from_pretrained(spec.path)  # the base layout of a medfm checkpoint, the model's class
        src_mod = spec.options.get("tower", modality)
        src_tower = source.tower(src_mod)
        tower = model.tower(modality)
        if type(src_tower) is not type(tower):
            raise CheckpointError(f"{spec.path}: tower {src_mod!r} is a {type(src_tower).__name__}, "
                                  f"the {modality!r} tower a {type(tower).__name__}")
        report = load_matching(tower, src_tower.state_dict())
        pw = source.projections[src_mod].weight
        if pw.shape == model.projections[modality].weight.shape:
            with torch.no_grad():
                model.projections[modality].weight.copy_(pw)
            report.loaded.append(f"projections.{modality}.weight")
        else:
            report.mismatched.append((f"projections.{modality}.weight", tuple(pw.shape),
                                      tuple(model.projections[modality].weight.shape)))
        note_shared_trunk(model, modality, report)
        return report


for _cls in (OpenCLIPFormat, MedFMFormat, MONAIFormat, OCTCubeFormat, MAEFormat, TimmFormat, HFFormat,
             RETFoundFormat, BarcodeBERTFormat):
    register_weight_format(_cls.name)(_cls())


def format_table() -> List[Dict[str, str]]:
    """``[{"name", "description"}]`` of every registered format (for ``medfm info``)."""

    return [{"name": n, "description": f.description} for n, f in WEIGHT_FORMATS.items()]
