"""Cohort fine-tuning: LoRA/DoRA (peft) or full or frozen encoders, with task heads.

Public API::

    from medfm.finetune import FineTunedModel, finetune
    result = finetune(config, "runs/ft")          # dict of metrics (see finetune's docstring)
    model = FineTunedModel.from_pretrained("./runs/ft")  # a local folder: encoder + adapters + task_head
    logits, scores = model.predict(batch)              # a MultiModalCollate batch
    model.save_pretrained("copy"); model.save_merged("merged")

Modules: :mod:`.lora` (presets, apply/merge), :mod:`.heads` (TaskSpec, TaskHead, fusion,
losses), :mod:`medfm.data.splits` (patient-grouped splits), :mod:`.finetuner` (the run: what a
fine-tuning step and epoch compute, on the core :mod:`medfm.train.loop`),
:mod:`.model` (``FineTunedModel``: save/load/merge), :mod:`.layout` (the directory layout).
"""
from .layout import weight_files
from .model import FineTunedModel, export_merged, load_finetuned
from .heads import TaskHead, TaskSpec, fuse, task_loss
from .lora import (PRESETS, apply_lora, count_parameters, find_target_modules, freeze, lora_state_dict, merge_lora,
                   load_lora_state_dict)
from ..data.splits import assign_patients, check_no_leakage, make_splits
from .finetuner import DEFAULT_CONFIG, FineTuner, finetune, predict_loader, predict_scores, regression_metrics

__all__ = [
    "finetune", "FineTuner", "DEFAULT_CONFIG", "predict_scores", "predict_loader", "regression_metrics",
    "FineTunedModel", "load_finetuned", "export_merged", "weight_files",
    "TaskHead", "TaskSpec", "fuse", "task_loss",
    "PRESETS", "apply_lora", "find_target_modules", "freeze", "merge_lora", "lora_state_dict", "load_lora_state_dict",
    "count_parameters",
    "make_splits", "assign_patients", "check_no_leakage",
]
