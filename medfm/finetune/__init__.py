"""Cohort fine-tuning: LoRA/DoRA (peft) or full or frozen encoders, with task heads.

Public API::

    from medfm.finetune import finetune, load_finetuned
    result = finetune(config, "runs/ft")          # dict of metrics (see finetune's docstring)
    model = load_finetuned("runs/ft")             # MultiModalModel + model.task_head, model.task
    logits, scores = predict_scores(model, batch) # a MultiModalCollate batch

Modules: :mod:`.lora` (presets, apply/merge), :mod:`.heads` (TaskSpec, TaskHead, fusion,
losses), :mod:`.splits` (patient-grouped splits), :mod:`.trainer` (training loop),
:mod:`.checkpoint` (save/load/merge).
"""
from .checkpoint import export_merged, load_finetuned, save_finetuned, weight_files
from .heads import TaskHead, TaskSpec, fuse, task_loss
from .lora import (PRESETS, apply_lora, count_parameters, find_target_modules, freeze, lora_state_dict, merge_lora,
                   load_lora_state_dict)
from ..data.splits import assign_patients, check_no_leakage, make_splits
from .trainer import DEFAULT_CONFIG, FineTuner, finetune, predict_loader, predict_scores, regression_metrics

__all__ = [
    "finetune", "FineTuner", "DEFAULT_CONFIG", "predict_scores", "predict_loader", "regression_metrics",
    "load_finetuned", "save_finetuned", "export_merged", "weight_files",
    "TaskHead", "TaskSpec", "fuse", "task_loss",
    "PRESETS", "apply_lora", "find_target_modules", "freeze", "merge_lora", "lora_state_dict", "load_lora_state_dict",
    "count_parameters",
    "make_splits", "assign_patients", "check_no_leakage",
]
