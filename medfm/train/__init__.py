"""Training: the core shared with fine-tuning (:mod:`.loop`), the pretraining trainer,
checkpoints, schedule, sampler and distributed set-up (the path rule is :mod:`medfm.paths`)."""
from .resume_checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from .loop import MetricsLog, SkipCounter, TrainCore, build_optimizer
from .pretrainer import DEFAULT_RUN, Trainer, resolve_run_config

__all__ = ["Trainer", "DEFAULT_RUN", "resolve_run_config", "latest_checkpoint", "load_trainer_state",
           "save_checkpoint", "TrainCore", "SkipCounter", "MetricsLog", "build_optimizer"]
