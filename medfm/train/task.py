"""The pretraining task: the model and its objectives in one module, so objectives can own parameters.

An objective may hold parameters of its own — a predictor head, an expander, a learnable
temperature — that train with the model. :class:`PretrainTask` is the one module that holds both:
DDP/FSDP wrap it, the optimizer sees every parameter it has, the resumable checkpoint saves the
objectives' state beside the model's (``objectives.safetensors``) and resume restores it, and the
final model folder keeps it too. The model's parameters keep their own names in the optimizer
state (a checkpoint of a model-only run resumes as before); an objective's take the prefix
``objective.`` (:meth:`PretrainTask.state_parameters`).

An objective is registered with :func:`medfm.registry.register_objective`, from a module of the
code base or from a plug-in's ``medfm.objectives`` entry point (:mod:`medfm.registry`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError

#: the objectives' tensors in a checkpoint folder (absent when the objectives hold none)
OBJECTIVES_FILE = "objectives.safetensors"
OBJECTIVE_PREFIX = "objective."


class PretrainTask(nn.Module):
    """``model`` + ``objective`` (a :class:`~medfm.objectives.CompositeObjective`): what a step runs.

    ``task(batch)`` → ``objective(model, batch, cache)`` → ``{"loss": scalar, ...}``. With
    ``zero=True`` (a rank whose batch is empty) the loss is 0 with every trainable parameter
    taking part, so DDP's gradient reduction matches on every rank.
    """

    def __init__(self, model: nn.Module, objective: nn.Module):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Mapping[str, Any], zero: bool = False) -> Dict[str, Any]:
        if zero:
            return {"loss": sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0}
        return self.objective(self.model, batch, {})

    @property
    def has_state(self) -> bool:
        """Whether the objectives hold tensors (parameters or buffers) to save and restore."""
        return bool(self.objective.state_dict())

    def state_parameters(self) -> Dict[str, nn.Parameter]:
        """Every parameter by the name the optimizer state stores it under: the model's own names,
        ``objective.<name>`` for an objective's (see :func:`medfm.train.resume_checkpoint.optimizer_state_by_name`)."""
        out = dict(self.model.named_parameters())
        out.update({OBJECTIVE_PREFIX + n: p for n, p in self.objective.named_parameters()})
        return out

    def save_objectives(self, directory: Path, state: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        """Write the objectives' tensors to ``directory/objectives.safetensors`` (nothing when they hold none).

        ``state``: a full state to write instead of this module's (FSDP: gathered on rank 0).
        """
        state = dict(self.objective.state_dict() if state is None else state)
        if state:
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(Path(directory) / OBJECTIVES_FILE))

    def load_objectives(self, directory: Path) -> None:
        """Restore the objectives' tensors saved by :meth:`save_objectives` (strict: every name, every shape).

        Raises:
            CheckpointError: the objectives hold tensors and the folder has none, or they differ.
        """
        path = Path(directory) / OBJECTIVES_FILE
        if not self.has_state:
            return
        if not path.is_file():
            raise CheckpointError(f"{Path(directory)}: the objectives hold parameters and the checkpoint has no "
                                  f"{OBJECTIVES_FILE}; resume with the checkpoint's objectives, or start afresh "
                                  "(--no-resume or a new --out)")
        try:
            state = load_file(str(path))
        except Exception as e:  # a torn or forged file
            raise CheckpointError(f"{path}: unreadable objective state: {e}") from None
        own = self.objective.state_dict()
        if set(state) != set(own) or any(tuple(state[k].shape) != tuple(own[k].shape) for k in own):
            raise CheckpointError(f"{path}: the objectives' tensors differ from this run's "
                                  f"(saved {sorted(state)[:5]}, run {sorted(own)[:5]}); resume with the checkpoint's "
                                  "objectives, or start afresh (--no-resume or a new --out)")
        self.objective.load_state_dict(state)
