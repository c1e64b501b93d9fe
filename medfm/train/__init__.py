"""Training: the trainer, checkpoints, schedule, sampler and distributed set-up."""
from .checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from .trainer import DEFAULT_RUN, Trainer, resolve_run_config

__all__ = ["Trainer", "DEFAULT_RUN", "resolve_run_config", "latest_checkpoint", "load_trainer_state",
           "save_checkpoint"]
