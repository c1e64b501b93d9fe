"""``FineTunedModel``: a base :class:`~medfm.models.MultiModalModel` + peft adapters + a task head.

The base model knows nothing of heads; this type owns them and its own checkpoint
format (the files: :mod:`medfm.checkpoint`; the ``finetune`` section: :mod:`medfm.finetune.layout`):

- :meth:`FineTunedModel.save_pretrained` writes only what was trained (peft adapters,
  or the trained encoder tensors of method ``full``, and the head) next to a reference to
  the base checkpoint by folder name and relative path + sha256 of its weights (no absolute path);
- :meth:`FineTunedModel.save_merged` writes a complete model directory with the adapters
  folded into the weights (loads without the base);
- :meth:`FineTunedModel.from_pretrained` reads either, refusing a base whose weights changed.

``medfm.load_pretrained(DIR)`` of a fine-tuned or merged directory returns a ``FineTunedModel``
(:mod:`medfm.pretrained`); :func:`load_encoder` gives the encoder of a folder of any kind (what
fine-tuning starts from).

Everything the encoder offers (``encode``, ``encode_batch``, ``modalities``, ``adapters``,
``embed_dim``, ``tower``, ``logit_scale``, ...) is read through from :attr:`encoder`, so a
fine-tuned directory works wherever a base checkpoint does (``medfm embed``, ``export``).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

import torch
import torch.nn as nn
from safetensors.torch import load_file, load_model, save_file

from .. import checkpoint as ckpt
from ..checkpoint import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CONFIG_NAME, FULL_WEIGHTS, HEAD_WEIGHTS
from ..errors import CheckpointError
from ..io import atomic_directory
from ..models.multimodal import MultiModalModel
from .layout import base_sha256, portable_meta, read_finetune_meta, resolve_base, write_config
from .heads import TaskHead, TaskSpec
from .lora import apply_lora, freeze, load_lora_state_dict, lora_state_dict, merge_lora


def _cpu_state(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


class FineTunedModel(nn.Module):
    """A fine-tuned model: :attr:`encoder` (the base, with LoRA layers injected for method
    ``lora``) followed by :attr:`task_head`.

    Args:
        encoder: the base ``MultiModalModel`` (modified in place by LoRA / full training).
        head: the task head over the encoder's ``(B, embed_dim)`` embeddings.
        task: the task (``TaskSpec`` or its dict: ``kind``, ``label_column``, ``classes``, ...).
        meta: the ``finetune`` section of ``config.json``
            (:func:`medfm.finetune.layout.finetune_meta`).

    Parameters are registered encoder first, then head (the order the optimiser sees).
    """

    def __init__(self, encoder: MultiModalModel, head: TaskHead, task, meta: Mapping[str, Any]):
        super().__init__()
        self.encoder = encoder
        self.task_head = head
        self.task: Dict[str, Any] = task.to_dict() if isinstance(task, TaskSpec) else dict(task)
        self.finetune_config: Dict[str, Any] = dict(meta)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules") or {}
            if name == "encoder" or "encoder" not in modules:
                raise
            return getattr(modules["encoder"], name)

    @property
    def method(self) -> str:
        return self.finetune_config.get("method", "lora")

    def predict(self, batch: Mapping[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, n_outputs), scores)`` of a collated batch.

        ``scores`` are class probabilities ``(B, C)`` (softmax), finding probabilities
        ``(B, C)`` (sigmoid) or regression values ``(B,)`` in the label's units. Absent
        modalities count as zeros (concat) or are left out of the mean.
        """
        emb = self.encoder.encode_batch(batch, self.task_head.modalities)
        logits = self.task_head(emb, batch["present"])
        return logits, TaskSpec.from_config(self.task).scores(logits)

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Logits ``(B, n_outputs)`` of a collated batch."""
        return self.predict(batch)[0]

    def trained_encoder_state(self) -> Dict[str, torch.Tensor]:
        """The encoder tensors that train (method ``full``), by their name in the base model."""
        return {n: p.detach().cpu().contiguous() for n, p in self.encoder.named_parameters() if p.requires_grad}

    # ------------------------------------------------------------- saving
    def save_pretrained(self, directory: os.PathLike) -> Path:
        """Write what was trained (peft adapters / trained tensors, head) + ``config.json`` last.

        The base is not copied: ``config.json`` refers to it (``finetune.base``, and
        ``base_name``, ``base_relative`` recomputed for ``directory``, ``base_sha256``; no absolute
        path of this machine). Other files in
        ``directory`` are kept.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = portable_meta(self.finetune_config, d)  # base_relative recomputed for d; no absolute path
        if self.finetune_config.get("merged"):
            raise CheckpointError(f"{d}: this model's adapters are merged into its weights: save it with save_merged")
        # as MultiModalModel.save_pretrained: written into a staging sibling, then moved in file by
        # file with os.replace, config.json last, so a crash never leaves a config over torn weights
        staging = d.parent / f".{d.name}.staging"
        with atomic_directory(staging) as tmp:
            if self.method == "lora":
                save_file(lora_state_dict(self.encoder), str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
                self.encoder.peft_config["default"].save_pretrained(str(tmp))
            elif self.method == "full":
                save_file(self.trained_encoder_state(), str(tmp / FULL_WEIGHTS))
            save_file(_cpu_state(self.task_head), str(tmp / HEAD_WEIGHTS))
            write_config(tmp, self.encoder, meta)
        for f in sorted(staging.iterdir(), key=lambda f: f.name == CONFIG_NAME):
            os.replace(f, d / f.name)
        shutil.rmtree(staging, ignore_errors=True)
        return d

    def save_merged(self, directory: os.PathLike) -> Path:
        """Fold the LoRA layers into the encoder *in place* and write a complete model directory
        (``save_pretrained`` layout of the base + ``head.safetensors``) that loads without the base."""
        d = Path(directory)
        merge_lora(self.encoder)
        d.mkdir(parents=True, exist_ok=True)
        save_file(_cpu_state(self.task_head), str(d / HEAD_WEIGHTS))  # before config.json (written last)
        meta = {**self.finetune_config, "merged": True}
        self.encoder.save_pretrained(d, extra={"finetune": portable_meta(meta, d)})
        self.finetune_config = meta
        return d

    # ------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, directory: os.PathLike, verify_base: bool = True) -> "FineTunedModel":
        """Load a fine-tuned (or merged) directory, in eval mode; only safetensors are read.

        The trainable flags are as in training (LoRA / the ``full`` tensors / none, + the head),
        so saving the loaded model writes the same files.

        Raises:
            CheckpointError: missing files, base not found, or a base whose weights changed.
        """
        d = Path(directory)
        cfg = read_finetune_meta(d)
        meta = cfg["finetune"]
        if ckpt.kind_of(cfg) == ckpt.MERGED:
            encoder = MultiModalModel.from_pretrained(d)
        else:
            base = resolve_base(d, meta)
            if verify_base and meta.get("base_sha256") and ckpt.weights_sha256(base) is not None:
                if base_sha256(base) != meta["base_sha256"]:
                    raise CheckpointError(f"{d}: the base checkpoint {base} has changed since fine-tuning "
                                          "(weights hash differs)")
            meta = {**meta, "base": str(base)}  # where the base was found (a later save refers to it)
            encoder = cls._load_trained(d, load_encoder(base), meta)  # a fine-tuned base: its encoder
        head = TaskHead(**meta["head"])
        if not (d / HEAD_WEIGHTS).is_file():
            raise CheckpointError(f"{d}: {HEAD_WEIGHTS} missing")
        missing, unexpected = load_model(head, str(d / HEAD_WEIGHTS), strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{d / HEAD_WEIGHTS}: does not fit the head config")
        return cls(encoder, head, meta["task"], meta).eval()

    @staticmethod
    def _load_trained(d: Path, encoder: MultiModalModel, meta: Mapping[str, Any]) -> MultiModalModel:
        method = meta["method"]
        if method == "lora":
            from peft import LoraConfig  # deferred: peft is slow to import

            if not (d / ADAPTER_CONFIG).is_file() or not (d / ADAPTER_WEIGHTS).is_file():
                raise CheckpointError(f"{d}: {ADAPTER_CONFIG} / {ADAPTER_WEIGHTS} missing")
            apply_lora(encoder, meta["modalities"], config=LoraConfig.from_pretrained(str(d)))
            load_lora_state_dict(encoder, load_file(str(d / ADAPTER_WEIGHTS)))
        elif method == "full":
            if not (d / FULL_WEIGHTS).is_file():
                raise CheckpointError(f"{d}: {FULL_WEIGHTS} missing")
            trained = load_file(str(d / FULL_WEIGHTS))
            _, unexpected = encoder.load_state_dict(trained, strict=False)
            if unexpected:
                raise CheckpointError(f"{d / FULL_WEIGHTS}: unexpected tensors {sorted(unexpected)[:5]}")
            freeze(encoder)
            for n, p in encoder.named_parameters():
                p.requires_grad_(n in trained)
        else:
            freeze(encoder)
        return encoder


def load_encoder(directory: os.PathLike) -> MultiModalModel:
    """The encoder of a checkpoint folder of any kind (:mod:`medfm.checkpoint`): a base as it is,
    a fine-tuned or merged one with its training applied (LoRA layers kept, head dropped)."""
    if ckpt.checkpoint_kind(directory) == ckpt.BASE:
        return MultiModalModel.from_pretrained(directory)
    return FineTunedModel.from_pretrained(directory).encoder


def load_finetuned(directory: os.PathLike, verify_base: bool = True) -> FineTunedModel:
    """:meth:`FineTunedModel.from_pretrained` (the name earlier medfm versions exported)."""
    return FineTunedModel.from_pretrained(directory, verify_base=verify_base)


def export_merged(model: FineTunedModel, directory: os.PathLike) -> Path:
    """:meth:`FineTunedModel.save_merged` (the name earlier medfm versions exported)."""
    if not isinstance(model, FineTunedModel):
        raise CheckpointError(f"export_merged needs a FineTunedModel, got {type(model).__name__}")
    return model.save_merged(directory)

