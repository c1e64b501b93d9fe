"""``medfm.load_pretrained``: which class loads a checkpoint folder, decided by its kind.

This dispatch sits above both :mod:`medfm.models` (which loads bases only) and
:mod:`medfm.finetune` (which loads what fine-tuning wrote): the kind comes from the folder's
``config.json`` (:func:`medfm.checkpoint.checkpoint_kind`).

=========  =========================================  ==========================================
kind       the folder                                 loaded as
=========  =========================================  ==========================================
base       ``config.json`` + ``model.safetensors``    ``MultiModalModel.from_pretrained``
finetuned  adapters / trained tensors + head, base    ``FineTunedModel.from_pretrained``
           by relative path + sha256
merged     a complete base layout + head              ``FineTunedModel.from_pretrained``
=========  =========================================  ==========================================
"""
from __future__ import annotations

import os

import torch.nn as nn

from .checkpoint import BASE, checkpoint_kind
from .finetune.model import FineTunedModel
from .models.multimodal import MultiModalModel


def load_pretrained(directory: os.PathLike) -> nn.Module:
    """Load a checkpoint folder of any kind: a ``MultiModalModel`` for a base, a
    ``FineTunedModel`` for a fine-tuned or merged one (in eval mode, as it loads).

    Raises:
        CheckpointError: naming the folder or file, when it is not a medfm checkpoint, is torn,
            or (fine-tuned) its base is missing or changed.
    """
    if checkpoint_kind(directory) == BASE:
        return MultiModalModel.from_pretrained(directory)
    return FineTunedModel.from_pretrained(directory)
