"""Training: the core shared with fine-tuning (:mod:`.loop`), the pretraining trainer,
checkpoints, schedule, sampler, distributed set-up (the path rule is :mod:`medfm.paths`).

Names are imported on first use (:mod:`medfm.lazy`)."""
from medfm.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".resume_checkpoint": ["latest_checkpoint", "load_trainer_state", "save_checkpoint"],
    ".loop": ["MetricsLog", "SkipCounter", "TrainCore", "build_optimizer"],
    ".pretrainer": ["DEFAULT_RUN", "Trainer", "resolve_run_config"],
})

__all__ = ["Trainer", "DEFAULT_RUN", "resolve_run_config", "latest_checkpoint", "load_trainer_state",
           "save_checkpoint", "TrainCore", "SkipCounter", "MetricsLog", "build_optimizer"]
