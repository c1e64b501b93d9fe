"""Weight formats of the two-tower image–text families (``init.format``).

* ``open_clip_hf`` — an open_clip folder whose image tower is a timm model and whose text tower is
  a Hugging Face model (BiomedCLIP): ``open_clip_config.json`` + ``open_clip_model.safetensors`` /
  ``open_clip_pytorch_model.bin`` + tokenizer files. ``visual.trunk.*`` → the ``timm`` tower,
  ``visual.head.proj`` → the projection; ``text.transformer.*`` → the ``hf_encoder`` tower,
  ``text.proj`` (an MLP: first layer + GELU in the tower's head, second layer as the projection).
* ``hf_two_tower`` — a transformers ``CLIPModel`` / ``SiglipModel`` folder: each half is built by
  transformers from the folder (``CLIPVisionModel.from_pretrained`` ...); CLIP's
  ``visual_projection`` / ``text_projection`` become the projections (SigLIP has none: identity),
  ``logit_scale`` (and SigLIP's ``logit_bias``) the model's.

``configure`` sets what the files fix (architecture, embed_dim, image size / mean / std from the
folder's preprocessing file, the tokenizer folder and its max length); ``load`` fills the weights
and reports every key, plus each departure of the adapter from the family's input spec.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from medfm.errors import CheckpointError, ConfigError
from medfm.registry import register_weight_format

from .family_load import check_spec, fill_module, fill_projection, fill_scalar, first_file, json_file
from .weight_formats import WeightFormat
from medfm.models.state_dicts import KeyReport, load_state_dict_file

OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_RESAMPLE = {3: "bicubic", 2: "bilinear", 0: "nearest", 1: "lanczos"}


def is_text(modality: str, options: Dict[str, Any]) -> bool:
    return options.get("adapter") == "text_spec" or modality == "text"


def _bert_config(sd: Dict[str, Any], prefix: str, heads: Any) -> Dict[str, Any]:
    """A BERT config read off the tensors (BiomedCLIP's folder carries no text config.json)."""
    emb = sd[f"{prefix}embeddings.word_embeddings.weight"]
    hidden = int(emb.shape[1])
    layers = len({k[len(prefix):].split(".")[2] for k in sd if k.startswith(f"{prefix}encoder.layer.")})
    return {"vocab_size": int(emb.shape[0]), "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": int(heads or max(1, hidden // 64)),
            "intermediate_size": int(sd[f"{prefix}encoder.layer.0.intermediate.dense.weight"].shape[0]),
            "max_position_embeddings": int(sd[f"{prefix}embeddings.position_embeddings.weight"].shape[0]),
            "type_vocab_size": int(sd[f"{prefix}embeddings.token_type_embeddings.weight"].shape[0])}


class OpenCLIPHFFormat(WeightFormat):
    name = "open_clip_hf"
    description = ("open_clip folder with a timm image tower and a Hugging Face text tower (BiomedCLIP): "
                   "open_clip_config.json + weights + tokenizer")
    sniff_order = 20

    def weights_file(self, path: Path) -> Path:
        return first_file(path, OPEN_CLIP_WEIGHTS) if path.is_dir() else path

    def sniff(self, path: Path) -> bool:
        cfg = path / "open_clip_config.json" if path.is_dir() else None
        if cfg is None or not cfg.is_file():
            return False
        model_cfg = json_file(cfg).get("model_cfg", {})
        return "timm_model_name" in model_cfg.get("vision_cfg", {}) and "hf_model_name" in model_cfg.get("text_cfg", {})

    def _cfg(self, path: Path) -> Dict[str, Any]:
        if not path.is_dir():
            raise CheckpointError(f"{path}: open_clip_hf reads the family's folder (open_clip_config.json inside)")
        return json_file(path / "open_clip_config.json")

    def configure(self, spec, adapter_cls, options, user_tower):
        full = self._cfg(spec.path)
        mc, pre = full.get("model_cfg", {}), full.get("preprocess_cfg", {})
        v, t = mc.get("vision_cfg", {}), mc.get("text_cfg", {})
        out: Dict[str, Any] = {"model": {"embed_dim": int(mc["embed_dim"])}}
        if is_text(spec.modality, options):
            if t.get("hf_proj_type", "mlp") not in ("mlp", "linear"):
                raise ConfigError(f"{spec.path}: text projection {t.get('hf_proj_type')!r} is not supported")
            pool = {"cls_last_hidden_state_pooler": "cls", "mean_pooler": "mean", "cls_pooler": "pooler"}.get(
                t.get("hf_pooler_type", "cls_last_hidden_state_pooler"))
            if pool is None:
                raise ConfigError(f"{spec.path}: text pooler {t.get('hf_pooler_type')!r} is not supported")
            local = Path(str(t.get("hf_model_name", ""))).expanduser()
            if (local / "config.json").is_file():
                arch = json_file(local / "config.json")
            else:
                sd = load_state_dict_file(self.weights_file(spec.path))
                arch = {"model_type": "bert", **_bert_config(sd, "text.transformer.", spec.options.get("heads"))}
            tower = {"type": "hf_encoder", "hf_arch": {"model_type": arch.get("model_type", "bert"), "config": arch},
                     "pool": pool, "use_mask": True, "pooling_layer": pool == "pooler"}
            if t.get("hf_proj_type", "mlp") == "mlp":
                d = int(arch["hidden_size"])
                tower["head"] = {"type": "mlp", "hidden": (d + int(mc["embed_dim"])) // 2}
            out["tower"] = tower
            out["modality"] = {"tokenizer_dir": str(spec.path),
                               "weights_spec": {"max_length": int(t.get("context_length", 77))}}
            return out
        if v.get("timm_proj", "linear") != "linear" or v.get("timm_proj_bias", False):
            raise ConfigError(f"{spec.path}: only a bias-free linear image projection is supported "
                              f"(timm_proj {v.get('timm_proj')!r})")
        pool = v.get("timm_pool", "avg")
        size = v.get("image_size", 224)
        size = int(size[0] if isinstance(size, (list, tuple)) else size)
        out["tower"] = {"type": "timm", "model_name": v["timm_model_name"], "model_kwargs": {},
                        "pool": None if pool in ("", None) else pool}
        mod: Dict[str, Any] = {"size": size, "crop": size}
        for key in ("mean", "std"):
            if pre.get(key) is not None:
                mod[key] = [float(x) for x in pre[key]]
        if pre.get("interpolation"):
            mod["interpolation"] = str(pre["interpolation"])
        if pre.get("resize_mode", "shortest") != "shortest":
            mod["resize"] = "square" if pre["resize_mode"] == "squash" else pre["resize_mode"]
        out["modality"] = {"weights_spec": mod}  # what the files state; the user's options apply over it
        return out

    def load(self, model, modality, spec) -> KeyReport:
        path = self.weights_file(spec.path)
        sd = load_state_dict_file(path)
        report = KeyReport()
        tower = model.tower(modality)
        if is_text(modality, model.adapters[modality].config() if modality in model.adapters else {}):
            fill_module(tower.model, {k[len("text.transformer."):]: v for k, v in sd.items()
                                      if k.startswith("text.transformer.")}, report, "text.transformer.")
            if "text.proj.0.weight" in sd:
                fill_module(tower.head[0], {"weight": sd["text.proj.0.weight"]}, report, "text.proj.0.")
                fill_projection(model, modality, sd.get("text.proj.2.weight"), report, "text.proj.2.weight")
            else:
                fill_projection(model, modality, sd.get("text.proj.weight"), report, "text.proj.weight")
        else:
            fill_module(tower.model, {k[len("visual.trunk."):]: v for k, v in sd.items()
                                      if k.startswith("visual.trunk.")}, report, "visual.trunk.")
            fill_projection(model, modality, sd.get("visual.head.proj.weight"), report, "visual.head.proj.weight")
        fill_scalar(model.logit_scale, sd.get("logit_scale"), report, "logit_scale")
        if "logit_bias" in sd:
            fill_scalar(model.logit_bias, sd["logit_bias"], report, "logit_bias")
        check_spec(model, modality, spec, report)
        return report


class HFTwoTowerFormat(WeightFormat):
    name = "hf_two_tower"
    description = "transformers CLIPModel / SiglipModel folder: each half into its tower, projections, logit scale"
    sniff_order = 20

    def weights_file(self, path: Path) -> Path:
        return first_file(path, HF_WEIGHTS) if path.is_dir() else path

    def sniff(self, path: Path) -> bool:
        cfg = path / "config.json" if path.is_dir() else None
        return bool(cfg is not None and cfg.is_file() and json_file(cfg).get("model_type") in ("clip", "siglip"))

    def configure(self, spec, adapter_cls, options, user_tower):
        if not spec.path.is_dir():
            raise CheckpointError(f"{spec.path}: hf_two_tower reads a transformers folder (config.json inside)")
        cfg = json_file(spec.path / "config.json")
        kind = cfg.get("model_type")
        if kind not in ("clip", "siglip"):
            raise CheckpointError(f"{spec.path}: model_type {kind!r} is not a CLIP or SigLIP folder")
        text = is_text(spec.modality, options)
        part_cfg = cfg.get("text_config" if text else "vision_config") or {}
        embed = int(cfg.get("projection_dim", 512)) if kind == "clip" else int(part_cfg.get("hidden_size", 768))
        out: Dict[str, Any] = {"model": {"embed_dim": embed}}
        out["tower"] = {"type": "hf_encoder", "model_dir": str(spec.path), "part": "text" if text else "vision",
                        "pool": "pooler", "use_mask": not (text and kind == "siglip")}
        if text:
            n = int(part_cfg.get("max_position_embeddings", 77 if kind == "clip" else 64))
            out["modality"] = {"tokenizer_dir": str(spec.path), "weights_spec": {"max_length": n}}
            return out
        pre_file = spec.path / "preprocessor_config.json"
        pre = json_file(pre_file) if pre_file.is_file() else {}
        mod: Dict[str, Any] = {}
        size = pre.get("size")
        if isinstance(size, dict) and "shortest_edge" in size:
            crop = pre.get("crop_size", size["shortest_edge"])
            crop = crop.get("height") if isinstance(crop, dict) else crop
            mod.update(resize="shortest_edge", size=int(size["shortest_edge"]),
                       crop=int(crop) if pre.get("do_center_crop", True) else None)
        elif isinstance(size, dict) and "height" in size:
            mod.update(resize="square", size=int(size["height"]), crop=None)
        if "resample" in pre:
            mod["interpolation"] = _RESAMPLE.get(int(pre["resample"]), "bicubic")
        for key, name in (("image_mean", "mean"), ("image_std", "std")):
            if pre.get(key) is not None:
                mod[name] = [float(x) for x in pre[key]]
        out["modality"] = {"weights_spec": mod}  # what the files state; the user's options apply over it
        return out

    def load(self, model, modality, spec) -> KeyReport:
        sd = load_state_dict_file(self.weights_file(spec.path))
        report = KeyReport()
        tower = model.tower(modality)
        report.loaded.extend(f"{k} (transformers from_pretrained)" for k in tower.model.state_dict())
        text = tower.config.get("part") == "text"
        key = "text_projection.weight" if text else "visual_projection.weight"
        fill_projection(model, modality, sd.get(key), report, key)
        fill_scalar(model.logit_scale, sd.get("logit_scale"), report, "logit_scale")
        fill_scalar(model.logit_bias, sd.get("logit_bias"), report, "logit_bias")
        check_spec(model, modality, spec, report)
        return report


class HFEncoderDirFormat(WeightFormat):
    name = "hf_encoder_dir"
    description = "transformers encoder folder (HuBERT / wav2vec2 / BERT-like) into an hf_encoder tower; identity projection"
    sniff_order = 60

    def weights_file(self, path: Path) -> Path:
        return first_file(path, HF_WEIGHTS) if path.is_dir() else path

    def configure(self, spec, adapter_cls, options, user_tower):
        if not (spec.path / "config.json").is_file():
            raise CheckpointError(f"{spec.path}: hf_encoder_dir reads a transformers folder (config.json inside)")
        cfg = json_file(spec.path / "config.json")
        return {"tower": {"type": "hf_encoder", "model_dir": str(spec.path)},
                "model": {"embed_dim": int(cfg["hidden_size"])}}

    def load(self, model, modality, spec) -> KeyReport:
        report = KeyReport()
        tower = model.tower(modality)
        report.loaded.extend(f"{k} (transformers from_pretrained)" for k in tower.model.state_dict())
        fill_projection(model, modality, None, report, "")
        check_spec(model, modality, spec, report)
        return report


for _cls in (OpenCLIPHFFormat, HFTwoTowerFormat, HFEncoderDirFormat):
    register_weight_format(_cls.name)(_cls())
