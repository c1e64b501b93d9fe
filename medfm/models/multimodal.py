"""``MultiModalModel``: one tower per modality, projections into one shared space."""
from __future__ import annotations

import copy
import inspect
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_model, save_model

from .. import checkpoint as ckpt
from ..errors import CheckpointError, ConfigError
from ..io import atomic_directory, deep_merge
from ..layers.trunk import Trunk
from ..registry import TOWERS, get_modality
from .config import ModelConfig, migrate_saved_config


class MultiModalModel(nn.Module):
    """Per-modality towers → projection to ``embed_dim`` → L2 normalisation.

    Args:
        config: resolved model config (:func:`medfm.models.resolve_config`; its fields and
            defaults: :class:`medfm.models.config.ModelConfig`); ``config["towers"]`` must hold
            a full tower config per modality.
        adapters: modality adapters keyed by name (kept with the model so a checkpoint
            carries its preprocessing and tokenizers).
    """

    def __init__(self, config: Mapping[str, Any], adapters: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.config = copy.deepcopy(dict(config))
        self.adapters: Dict[str, Any] = dict(adapters or {})
        self.embed_dim = int(self.config["embed_dim"])
        tcfg = dict(self.config["trunk"])
        shared = bool(tcfg.pop("shared", True))
        self.towers = nn.ModuleDict()
        self.projections = nn.ModuleDict()
        shared_trunk = None
        for name, tower_cfg in self.config["towers"].items():
            tower_cfg = dict(tower_cfg)
            kind = tower_cfg.pop("type", "vit")
            cls = TOWERS.get(kind)
            params = inspect.signature(cls).parameters
            if "trunk" in params:
                own = tower_cfg.pop("trunk", None)
                if own is not None:
                    trunk = Trunk(**deep_merge(tcfg, own))
                elif shared:
                    shared_trunk = shared_trunk or Trunk(**tcfg)
                    trunk = shared_trunk
                else:
                    trunk = Trunk(**tcfg)
                tower_cfg["trunk"] = trunk
                tower_cfg.setdefault("decoder", self.config.get("decoder"))
            try:
                self.towers[name] = cls(**tower_cfg)
            except (ConfigError, TypeError) as e:  # the tower checks its own options; say where they were
                raise ConfigError(f"model.towers.{name} ({kind} tower): {e}") from e
            if hasattr(self.towers[name], "export_config"):  # e.g. an hf tower loaded from a model_dir
                self.config["towers"][name] = {**self.towers[name].export_config(), "type": kind}
            self.projections[name] = nn.Linear(self.towers[name].width, self.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(self.config.get("init_logit_scale",
                                                                           ModelConfig.init_logit_scale))))
        self.logit_bias = nn.Parameter(torch.tensor(float(self.config.get("init_logit_bias",
                                                                          ModelConfig.init_logit_bias))))
        #: the tensor names this config builds: what the base layout can hold and rebuild
        self._built_keys = frozenset(self.state_dict())

    # ------------------------------------------------------------------ api
    @property
    def modalities(self):
        return list(self.towers.keys())

    def tower(self, modality: str) -> nn.Module:
        if modality not in self.towers:
            raise ConfigError(f"this model has no {modality!r} tower; it has: {', '.join(self.towers)}")
        return self.towers[modality]

    def forward_features(self, modality: str, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Tokens of one modality: ``(B, N, width)``."""
        return self.tower(modality).forward_features(x, mask)

    def encode(self, modality: str, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
               normalize: bool = True) -> torch.Tensor:
        """Embed one modality's batch ``x`` (``(B, ...)`` as its adapter makes it) → ``(B, embed_dim)``."""
        pooled = self.tower(modality)(x, mask)  # pool(forward_features) (+ a tower's global path)
        z = self.projections[modality](pooled)
        return F.normalize(z, dim=-1) if normalize else z

    def masked_loss(self, modality: str, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                    mask_ratio: Optional[float] = None) -> Dict[str, Any]:
        """MAE or MLM loss of one modality's batch; ``{"loss": scalar, ...}``."""
        return self.tower(modality).masked_loss(x, mask=mask, mask_ratio=mask_ratio)

    def encode_batch(self, batch: Mapping[str, Any], modalities=None) -> Dict[str, torch.Tensor]:
        """Embed every modality of a collated batch.

        Returns ``{modality: (B, embed_dim)}`` for each modality of the model (or of
        ``modalities``), L2-normalised, with zero rows where the sample lacks it.
        """
        b = len(batch["id"])
        out: Dict[str, torch.Tensor] = {}
        ref = self.logit_scale
        for mod in modalities or self.modalities:
            present = batch["present"].get(mod)
            inputs = batch["inputs"].get(mod)
            full = ref.new_zeros(b, self.embed_dim)
            if present is not None and inputs is not None and bool(present.any()):
                z = self.encode(mod, inputs["x"], inputs.get("mask"))
                idx = present.nonzero(as_tuple=True)[0].to(z.device)
                full = full.to(z.dtype).index_copy(0, idx, z)
            out[mod] = full
        return out

    def forward(self, batch: Mapping[str, Any], objective: nn.Module) -> Dict[str, Any]:
        """Run ``objective(self, batch, cache)``; the entry point DDP/FSDP wrap."""
        return objective(self, batch, {})

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for tower in self.towers.values():
            if hasattr(tower, "set_grad_checkpointing"):
                tower.set_grad_checkpointing(enable)

    # --------------------------------------------------------- checkpoints
    def save_pretrained(self, directory: os.PathLike, extra: Optional[Dict[str, Any]] = None) -> Path:
        """Write the base layout (:mod:`medfm.checkpoint`): ``config.json`` + ``model.safetensors``
        + ``modalities/<name>/`` adapter files; ``extra`` adds sections to ``config.json``.

        Everything is written into a temporary sibling first and then moved into
        ``directory`` entry by entry with ``os.replace``, weights before config, so a
        crash never leaves a config pointing at torn weights. Other files already in
        ``directory`` (metrics, training checkpoints) are kept.

        Raises:
            CheckpointError: the model holds tensors its config does not build (layers injected
                after it was built): the base layout could not rebuild them.
        """
        changed = sorted(set(self.state_dict()) ^ self._built_keys)
        if changed:
            raise CheckpointError(f"{directory}: this model holds tensors its config does not build ({changed[0]}, "
                                  f"{len(changed)} in all): layers were injected after it was built (e.g. unmerged "
                                  "LoRA layers); save it with what injected them, or merge them first")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        staging = directory.parent / f".{directory.name}.staging"
        with atomic_directory(staging) as tmp:
            cfg = ckpt.new_config(self.config_with_adapters(),
                                  init_sources=getattr(self, "init_sources", None) or None)  # weights it started from
            cfg.update(extra or {})
            save_model(self, str(tmp / ckpt.WEIGHTS_NAME))
            for name, adapter in self.adapters.items():
                sub = ckpt.adapter_dir(tmp, name)
                sub.mkdir(parents=True, exist_ok=True)
                adapter.save_pretrained(sub)
            ckpt.write_config(tmp, cfg)
        for entry in (ckpt.WEIGHTS_NAME, ckpt.ADAPTERS_DIR, ckpt.CONFIG_NAME):
            src, dst = staging / entry, directory / entry
            if not src.exists():
                continue
            if src.is_dir() and dst.exists():
                shutil.rmtree(dst)
            os.replace(src, dst)
        shutil.rmtree(staging, ignore_errors=True)
        return directory

    def config_with_adapters(self) -> Dict[str, Any]:
        cfg = copy.deepcopy(self.config)
        cfg["modalities"] = {name: a.config() for name, a in self.adapters.items()}
        return cfg

    @classmethod
    def from_pretrained(cls, directory: os.PathLike, strict: bool = True) -> "MultiModalModel":
        """Load the base layout of a checkpoint folder (what :meth:`save_pretrained` wrote; also the
        encoder of a merged fine-tuned export). Reads safetensors only — never unpickles.

        A fine-tuned folder holding only what was trained is refused with a
        :class:`CheckpointError` (:func:`medfm.checkpoint.read_base_config`): which class loads
        which kind of checkpoint is :func:`medfm.load_pretrained`'s choice, not the model layer's.
        """
        directory = Path(directory)
        weights = directory / ckpt.WEIGHTS_NAME
        meta = ckpt.read_base_config(directory)
        config = migrate_saved_config(meta["model"])
        adapters = {}
        for name, options in config.get("modalities", {}).items():
            adapter = get_modality(name, **options)
            sub = ckpt.adapter_dir(directory, name)
            if sub.is_dir():
                adapter.load_pretrained(sub)
            adapters[name] = adapter
        model = cls(config, adapters)
        try:
            missing, unexpected = load_model(model, str(weights), strict=False)
        except Exception as e:  # torn or forged safetensors (header, offsets, dtype)
            raise CheckpointError(f"{weights}: unreadable weights: {type(e).__name__}: {e}") from e
        if strict and (missing or unexpected):
            raise CheckpointError(
                f"{weights}: weights do not match the config; missing: {sorted(missing)[:10]}, "
                f"unexpected: {sorted(unexpected)[:10]}")
        model.init_sources = dict(meta.get("init_sources") or {})
        return model
