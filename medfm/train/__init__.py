"""Training: the core shared with fine-tuning (:mod:`.loop`) and the config sections they share
(:mod:`.sections`), the pretraining trainer and its task module (:mod:`.task`),
checkpoints, schedule, sampler, distributed set-up (the path rule is :mod:`medfm.paths`).

Names are imported on first use (:mod:`medfm.lazy`)."""
from medfm.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".resume_checkpoint": ["latest_checkpoint", "load_trainer_state", "save_checkpoint"],
    ".loop": ["MetricsLog", "SkipCounter", "TrainCore", "build_optimizer"],
    ".pretrainer": ["Trainer", "resolve_run_config"],
    ".run_config": ["RunConfig", "parse_run_config"],
    ".sections": ["DataConfig", "LoopConfig", "OptimConfig"],
    ".task": ["PretrainTask"],
})

__all__ = ["Trainer", "RunConfig", "parse_run_config", "DataConfig", "LoopConfig", "OptimConfig", "PretrainTask",
           "resolve_run_config", "latest_checkpoint", "load_trainer_state",
           "save_checkpoint", "TrainCore", "SkipCounter", "MetricsLog", "build_optimizer"]
