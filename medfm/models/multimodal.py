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

from ..errors import CheckpointError, ConfigError
from ..config_files import load_data_file
from ..io import atomic_directory, deep_merge, write_json
from ..layers.trunk import Trunk
from ..registry import CHECKPOINT_KINDS, TOWERS, get_modality
from .config import ModelConfig, migrate_saved_config
from .files import CONFIG_NAME, FORMAT, FORMAT_VERSION, WEIGHTS_NAME  # noqa: F401  (re-exported)

def read_checkpoint_config(directory: os.PathLike) -> Dict[str, Any]:
    """The checked ``config.json`` of a medfm checkpoint directory (a base model or one built on it).

    Raises:
        CheckpointError: naming the file, when it is missing, unreadable, not a medfm model config,
            or of a newer format version.
    """
    directory = Path(directory)
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"{directory}: not a medfm checkpoint (no {CONFIG_NAME})")
    try:
        meta = load_data_file(cfg_path, kind="json")  # size and nesting bounded
    except (OSError, ValueError, ConfigError) as e:
        raise CheckpointError(f"{cfg_path}: unreadable config: {type(e).__name__}: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "model" not in meta:
        raise CheckpointError(f"{cfg_path}: not a medfm model config")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{cfg_path}: format version {meta['format_version']} is newer than this medfm")
    return meta


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
        """Write ``config.json`` + ``model.safetensors`` (+ ``modalities/<name>/`` adapter files).

        Everything is written into a temporary sibling first and then moved into
        ``directory`` entry by entry with ``os.replace``, weights before config, so a
        crash never leaves a config pointing at torn weights. Other files already in
        ``directory`` (metrics, training checkpoints) are kept.
        """
        unmerged = next((n for n, _ in self.named_parameters() if ".lora_" in n), None)
        if unmerged is not None:  # peft layers injected by fine-tuning: this layout would not load them
            raise CheckpointError(f"{directory}: this model carries unmerged LoRA layers ({unmerged}); save the "
                                  "fine-tuned model (FineTunedModel.save_pretrained, adapters only) or merge "
                                  "them first (FineTunedModel.save_merged)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        staging = directory.parent / f".{directory.name}.staging"
        with atomic_directory(staging) as tmp:
            cfg = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": self.config_with_adapters()}
            if getattr(self, "init_sources", None):  # weights this model started from (name + sha256)
                cfg["init_sources"] = self.init_sources
            if extra:
                cfg.update(extra)
            save_model(self, str(tmp / WEIGHTS_NAME))
            for name, adapter in self.adapters.items():
                sub = tmp / "modalities" / name
                sub.mkdir(parents=True, exist_ok=True)
                adapter.save_pretrained(sub)
            write_json(tmp / CONFIG_NAME, cfg)
        for entry in (WEIGHTS_NAME, "modalities", CONFIG_NAME):
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
    def from_pretrained(cls, directory: os.PathLike, strict: bool = True, finetune: bool = True) -> "MultiModalModel":
        """Load what :meth:`save_pretrained` wrote. Reads safetensors only — never unpickles.

        A directory whose ``config.json`` carries a section registered with
        :data:`medfm.registry.CHECKPOINT_KINDS` (a fine-tuned checkpoint: ``"finetune"``) is handed to
        that kind's loader, which may return another type; ``finetune=False`` reads only the
        complete base layout (``config.json`` ``model`` + ``model.safetensors``) of the directory.
        """
        directory = Path(directory)
        weights = directory / WEIGHTS_NAME
        meta = read_checkpoint_config(directory)
        if finetune:
            for section, loader in CHECKPOINT_KINDS.items():
                if section in meta:
                    return loader(directory)
        config = migrate_saved_config(meta["model"])
        adapters = {}
        for name, options in config.get("modalities", {}).items():
            adapter = get_modality(name, **options)
            sub = directory / "modalities" / name
            if sub.is_dir():
                adapter.load_pretrained(sub)
            adapters[name] = adapter
        model = cls(config, adapters)
        if not weights.is_file():
            raise CheckpointError(f"{directory}: {WEIGHTS_NAME} is missing")
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
