"""The ``hf_encoder`` tower: a ``transformers`` encoder — one half of ``CLIPModel`` / ``SiglipModel``,
a BERT-like or Longformer text encoder, a HuBERT / wav2vec2 signal encoder.

Tower config::

    {"type": "hf_encoder",
     "model_dir": PATH | null,      # a local transformers folder (config.json + weights); never a hub id
     "part": "vision" | "text" | null,   # which half of a two-tower folder (CLIP, SigLIP)
     "hf_arch": {"model_type": ..., "config": {...}} | null,   # the architecture, when no folder
     "pool": "pooler" | "cls" | "mean",  # pooler_output (CLIP: post-LN CLS / EOS token; SigLIP: its
                                         # attention-pool / last-token head), first token, masked mean
     "use_mask": true,              # pass the attention mask (SigLIP's text tower was trained without one)
     "pooling_layer": true,         # false: a BERT-like without its pooler (pool cls/mean)
     "head": null | {"type": "mlp", "hidden": H}}

Weights are read by transformers' own ``from_pretrained(model_dir, local_files_only=True)`` (the
half classes, e.g. ``CLIPVisionModel``, read their half of a full ``CLIPModel`` folder). A saved
medfm checkpoint keeps ``hf_arch`` (not the folder), so it loads after the folder is gone.
Inputs: ``pixel_values (B, 3, H, W)`` for a vision half, ``input_ids (B, L)`` + mask for text,
``input_values (B, T)`` for HuBERT / wav2vec2.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..errors import CheckpointError, ConfigError
from ..registry import register_tower
from .library_tower import LibraryTower, build_head

#: (model_type of a two-tower folder, part) → model_type of the half transformers builds
HALVES = {("clip", "vision"): "clip_vision_model", ("clip", "text"): "clip_text_model",
          ("siglip", "vision"): "siglip_vision_model", ("siglip", "text"): "siglip_text_model"}
SIGNAL_TYPES = ("hubert", "wav2vec2")
_DROP = ("_name_or_path", "transformers_version", "_attn_implementation_autoset", "dtype", "torch_dtype",
         "architectures")


def _half_class(model_type: str):
    from transformers import (CLIPTextModel, CLIPVisionModel, SiglipTextModel,  # deferred: heavy library
                              SiglipVisionModel)

    return {"clip_vision_model": CLIPVisionModel, "clip_text_model": CLIPTextModel,
            "siglip_vision_model": SiglipVisionModel, "siglip_text_model": SiglipTextModel}[model_type]


def build_hf_encoder(model_dir: Optional[str], part: Optional[str], hf_arch: Optional[Dict[str, Any]],
                     pooling_layer: bool = True):
    """The transformers module of the tower (weights from ``model_dir`` when given).

    ``pooling_layer=False`` builds a BERT-like without its pooler (open_clip's HF text tower does so
    when it pools the first token itself)."""
    from transformers import AutoConfig, AutoModel  # deferred: heavy library

    if model_dir:
        p = Path(str(model_dir)).expanduser()
        if not (p / "config.json").is_file():
            raise CheckpointError(f"hf_encoder tower: {p} has no config.json (a transformers model folder is needed)")
        full = AutoConfig.from_pretrained(str(p), local_files_only=True)
        if part is not None:
            half = HALVES.get((full.model_type, part))
            if half is None:
                raise ConfigError(f"hf_encoder tower: part {part!r} of a {full.model_type!r} folder is not known; "
                                  f"two-tower folders: {sorted({k[0] for k in HALVES})}")
            return _half_class(half).from_pretrained(str(p), local_files_only=True)
        if any(full.model_type == k[0] for k in HALVES):
            raise ConfigError(f"hf_encoder tower: {p} holds a two-tower {full.model_type} model; set part: vision|text")
        return AutoModel.from_pretrained(str(p), local_files_only=True)
    if not hf_arch:
        raise ConfigError("hf_encoder tower: give model_dir (a local transformers folder) or hf_arch")
    cfg = AutoConfig.for_model(hf_arch["model_type"], **{k: v for k, v in hf_arch["config"].items()
                                                        if k != "model_type"})
    if cfg.model_type in {v for v in HALVES.values()}:
        return _half_class(cfg.model_type)(cfg)
    if not pooling_layer:
        return AutoModel.from_config(cfg, add_pooling_layer=False)
    return AutoModel.from_config(cfg)


@register_tower("hf_encoder")
class HFEncoderTower(LibraryTower):
    """A transformers encoder → pooled ``(B, width)`` (see the module docstring for the config)."""

    kind = "hf_encoder"

    def __init__(self, model_dir: Optional[str] = None, part: Optional[str] = None,
                 hf_arch: Optional[Dict[str, Any]] = None, pool: str = "pooler", use_mask: bool = True,
                 head: Optional[Dict[str, Any]] = None, pooling_layer: bool = True, **unused: Any):
        super().__init__()
        if unused:
            raise ConfigError(f"hf_encoder tower: unknown option(s) {sorted(unused)}")
        if pool not in ("pooler", "cls", "mean"):
            raise ConfigError(f"hf_encoder tower: pool must be pooler, cls or mean, got {pool!r}")
        self.config = {"model_dir": model_dir, "part": part, "hf_arch": copy.deepcopy(hf_arch), "pool": pool,
                       "use_mask": bool(use_mask), "head": copy.deepcopy(head), "pooling_layer": bool(pooling_layer)}
        self.model = build_hf_encoder(model_dir, part, hf_arch, bool(pooling_layer))
        self.model_type = self.model.config.model_type
        self.backbone_name = f"transformers {type(self.model).__name__}"
        self.pool_kind = pool
        self.use_mask = bool(use_mask)
        self.input_name = ("pixel_values" if self.model_type.endswith("vision_model") else
                           "input_values" if self.model_type in SIGNAL_TYPES else "input_ids")
        self.head, self.width = build_head(head, int(self.model.config.hidden_size), "hf_encoder tower")
        self.backbone_families = ("clip", "bert", "hubert")  # adaptable-layer families (medfm.finetune.lora_targets)

    @property
    def vocab_size(self) -> int:
        """Token ids a text encoder takes (0 for a vision or signal encoder)."""
        return int(getattr(self.model.config, "vocab_size", 0) or 0) if self.input_name == "input_ids" else 0

    def export_config(self) -> Dict[str, Any]:
        """The architecture instead of the folder (the weights are in the medfm checkpoint)."""
        cfg = copy.deepcopy(self.config)
        hf = self.model.config.to_dict()
        for key in _DROP:
            hf.pop(key, None)
        cfg.update(model_dir=None, part=None, hf_arch={"model_type": self.model_type, "config": hf})
        return cfg

    def _run(self, x: torch.Tensor, mask: Optional[torch.Tensor]):
        kwargs: Dict[str, Any] = {self.input_name: x}
        if self.input_name == "input_ids" and self.use_mask:
            pad = getattr(self.model.config, "pad_token_id", None)
            if mask is None and pad is not None:
                mask = (x != pad).long()
            if mask is not None:
                kwargs["attention_mask"] = mask.long()
        return self.model(**kwargs)

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Tokens ``(B, L, hidden)`` (``last_hidden_state``)."""
        return self._run(x, mask).last_hidden_state

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pooled ``(B, width)``."""
        out = self._run(x, mask)
        if self.pool_kind == "pooler":
            pooled = out.pooler_output
            if pooled is None:
                raise ConfigError(f"hf_encoder tower: {self.backbone_name} has no pooler output; use pool: cls or mean")
        elif self.pool_kind == "cls":
            pooled = out.last_hidden_state[:, 0]
        else:
            use = mask if (self.input_name == "input_ids" and self.use_mask) else None
            pooled = self.pool(out.last_hidden_state, use)
        return self.apply_head(pooled)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.model.gradient_checkpointing_disable()
