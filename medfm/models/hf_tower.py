"""A generic Hugging Face ``transformers`` tower (tower type ``"hf"``).

Built from a tower config such as a text or DNA adapter returns::

    {"type": "hf", "model_dir": None | path, "hf_config": {BertConfig kwargs},
     "pool": "cls" | "mean", "masked": {"kind": "mlm", "mask_ratio": 0.15},
     "mask_id": 1, "pad_id": 0, "vocab_size": V, "special_ids": [0, 1, 2, 3, 4]}

(``masked.mask_ratio`` is the adapter's fallback for its modality; the masked objective owns the
setting and passes its ratio to :meth:`HFTower.masked_loss`.)

- ``model_dir`` given: ``AutoModelForMaskedLM.from_pretrained(model_dir, local_files_only=True)``
  (a BarcodeBERT-style ``BertForMaskedLM`` or any BERT/RoBERTa-family masked LM on the
  user's disk; no remote code, nothing downloaded).
- otherwise a small ``BertConfig(**hf_config)`` + ``BertForMaskedLM`` with SDPA attention.

Tied weights: Hugging Face ties the MLM decoder to the word embeddings (and the
decoder bias to ``predictions.bias``). Shared tensors cannot be written by
``safetensors.torch.save_file``, so the tower *unties* them right after building
(the copies start equal, so outputs are unchanged) and drops the head's alias
``bias`` parameter (the decoder's own bias is the one used in ``forward``). The
tower's ``state_dict`` therefore holds no shared storage.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError
from ..registry import register_tower
from .masking import mlm_mask as bert_mlm_mask  # noqa: F401  (re-exported)

#: a small BERT used when no ``model_dir`` is given (overridden by ``hf_config``).
DEFAULT_HF_CONFIG: Dict[str, Any] = {
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 256,
    "max_position_embeddings": 512,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
}


def untie_weights(model: nn.Module) -> int:
    """Give every parameter registered under several names its own copy.

    Also removes the alias ``bias`` of MLM heads (a module holding a ``decoder``
    ``nn.Linear`` and its own ``bias``), which only exists to be tied to
    ``decoder.bias``. Returns the number of parameters untied.
    """
    for module in model.modules():
        dec = getattr(module, "decoder", None)
        if isinstance(dec, nn.Linear) and isinstance(module._parameters.get("bias"), nn.Parameter):
            if dec.bias is not None:
                if dec.bias is module._parameters["bias"]:
                    dec.bias = nn.Parameter(module._parameters["bias"].detach().clone())
                module.register_parameter("bias", None)
    seen: Dict[int, str] = {}
    n = 0
    for name, mod in list(model.named_modules(remove_duplicate=False)):
        for pname, p in list(mod._parameters.items()):
            if p is None:
                continue
            key = id(p)
            if key in seen:
                setattr(mod, pname, nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
                n += 1
            else:
                seen[key] = f"{name}.{pname}"
    if hasattr(model, "config"):
        model.config.tie_word_embeddings = False
    return n


@register_tower("hf")
class HFTower(nn.Module):
    """A ``transformers`` masked-LM encoder behind the tower interface.

    Args:
        config: the tower config (see module docstring); keyword arguments update it.
    Attributes:
        width: hidden size of the encoder.
    """

    def __init__(self, config: Optional[Mapping[str, Any]] = None, **kwargs: Any):
        super().__init__()
        cfg = copy.deepcopy(dict(config or {}))
        cfg.update(copy.deepcopy(kwargs))
        self.config = cfg
        self.pool_mode = cfg.get("pool", "cls")
        if self.pool_mode not in ("cls", "mean"):
            raise ConfigError(f"hf tower: pool must be 'cls' or 'mean', got {self.pool_mode!r}")
        masked = cfg.get("masked") or {}
        self.mask_ratio = float(masked.get("mask_ratio", 0.15))
        self.mask_id = int(cfg.get("mask_id", 1))
        self.pad_id = int(cfg.get("pad_id", 0))
        self.mlm = self._build(cfg)
        untie_weights(self.mlm)
        self.vocab_size = int(self.mlm.config.vocab_size)
        self.special_ids = [int(s) for s in cfg.get("special_ids", (self.pad_id, self.mask_id))]
        self.width = int(self.mlm.config.hidden_size)

    @staticmethod
    def _build(cfg: Mapping[str, Any]) -> nn.Module:
        # deferred: transformers takes seconds to import; the registry imports this module to list its towers
        from transformers import AutoConfig, AutoModelForMaskedLM, BertConfig, BertForMaskedLM

        arch = cfg.get("hf_arch")
        if arch:  # a checkpoint's own record of the architecture: no model_dir needed any more
            hf_cfg = AutoConfig.for_model(arch["model_type"], **{k: v for k, v in arch["config"].items()
                                                                  if k != "model_type"})
            try:
                return AutoModelForMaskedLM.from_config(hf_cfg, attn_implementation="sdpa")
            except (ValueError, ImportError):
                return AutoModelForMaskedLM.from_config(hf_cfg)
        model_dir = cfg.get("model_dir")
        if model_dir:
            p = Path(str(model_dir)).expanduser()
            if not (p / "config.json").is_file():
                raise CheckpointError(f"hf tower: {p} has no config.json (a transformers model directory is needed)")
            try:
                return AutoModelForMaskedLM.from_pretrained(str(p), local_files_only=True, attn_implementation="sdpa")
            except (ValueError, ImportError):  # an architecture without SDPA support
                return AutoModelForMaskedLM.from_pretrained(str(p), local_files_only=True)
        kw = dict(DEFAULT_HF_CONFIG)
        kw.update(cfg.get("hf_config") or {})
        if "vocab_size" in cfg:
            kw["vocab_size"] = int(cfg["vocab_size"])
        if "vocab_size" not in kw:
            raise ConfigError("hf tower: vocab_size is required when no model_dir is given")
        kw.setdefault("pad_token_id", int(cfg.get("pad_id", 0)))
        kw["tie_word_embeddings"] = False
        return BertForMaskedLM(BertConfig(attn_implementation="sdpa", **kw))

    def export_config(self) -> Dict[str, Any]:
        """The tower config to store in a checkpoint: the architecture itself, not ``model_dir``.

        A checkpoint built from a local ``model_dir`` therefore loads after that directory is gone
        (its weights are in ``model.safetensors``).
        """
        cfg = copy.deepcopy(self.config)
        cfg["model_dir"] = None
        hf = self.mlm.config.to_dict()
        for key in ("_name_or_path", "transformers_version", "_attn_implementation_autoset", "dtype", "torch_dtype"):
            hf.pop(key, None)
        cfg["hf_arch"] = {"model_type": self.mlm.config.model_type, "config": hf}
        return cfg

    @property
    def encoder(self) -> nn.Module:
        """The base model (``BertModel``, ``RobertaModel``, ...) without the MLM head."""
        return self.mlm.base_model

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token features. ``x``: ``(B, L)`` ids; ``mask``: ``(B, L)`` 1 = real → ``(B, L, width)``."""
        if mask is None:
            mask = (x != self.pad_id).long()
        return self.encoder(input_ids=x, attention_mask=mask.long()).last_hidden_state

    def pool(self, tokens: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, L, width)`` → ``(B, width)``: the first (CLS) token, or the mean of real tokens."""
        if self.pool_mode == "cls":
            return tokens[:, 0]
        if mask is None:
            return tokens.mean(1)
        m = mask.to(tokens.dtype).unsqueeze(-1)
        return (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pooled features ``(B, width)``."""
        if mask is None:
            mask = (x != self.pad_id).long()
        return self.pool(self.forward_features(x, mask), mask)

    def masked_loss(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, mask_ratio: Optional[float] = None,
                    generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
        """Masked-token prediction loss on ``x (B, L)``; cross-entropy on the chosen positions only.

        Returns ``{"loss": scalar, "n_masked": int, "accuracy": float}``.
        """
        if mask is None:
            mask = (x != self.pad_id).long()
        ratio = self.mask_ratio if mask_ratio is None else float(mask_ratio)
        inputs, chosen = bert_mlm_mask(x, mask, mask_ratio=ratio, mask_id=self.mask_id, vocab_size=self.vocab_size,
                                       special_ids=self.special_ids, generator=generator)
        n = int(chosen.sum())
        logits = self.mlm(input_ids=inputs, attention_mask=mask.long()).logits
        if n == 0:
            return {"loss": logits.sum() * 0.0, "n_masked": 0, "accuracy": 0.0}
        sel = logits[chosen]
        target = x[chosen]
        loss = F.cross_entropy(sel.float(), target)
        acc = float((sel.argmax(-1) == target).float().mean())
        return {"loss": loss, "n_masked": n, "accuracy": acc}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn activation checkpointing of the encoder layers on or off."""
        if enable:
            self.mlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.mlm.gradient_checkpointing_disable()
