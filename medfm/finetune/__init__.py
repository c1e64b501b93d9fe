"""Cohort fine-tuning: LoRA/DoRA (peft) or full or frozen encoders, with task heads.

Public API::

    from medfm.finetune import FineTunedModel, finetune
    result = finetune(config, "runs/ft")          # dict of metrics (see finetune's docstring)
    model = FineTunedModel.from_pretrained("./runs/ft")  # a local folder: encoder + adapters + task_head
    logits, scores = model.predict(batch)              # a MultiModalCollate batch
    model.save_pretrained("copy"); model.save_merged("merged")

Modules: :mod:`.lora` (presets, apply/merge), :mod:`.heads` (TaskSpec, TaskHead, fusion,
losses), :mod:`medfm.data.splits` (patient-grouped splits), :mod:`.config_schema` (the typed
config), :mod:`.finetuner` (the run: what a fine-tuning step and epoch compute, on the core
:mod:`medfm.train.loop`; :mod:`.build` the base and method, :mod:`.scoring` predictions, metrics
and early stopping),
:mod:`.model` (``FineTunedModel``: save/load/merge), :mod:`.layout` (the ``finetune`` section;
the folder's files: :mod:`medfm.checkpoint`).
Names are imported on first use (:mod:`medfm.lazy`).
"""
from medfm.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "medfm.checkpoint": ["weight_files"],
    ".model": ["FineTunedModel", "export_merged", "load_encoder", "load_finetuned"],
    ".heads": ["TaskHead", "TaskSpec", "fuse", "task_loss"],
    ".lora": ["PRESETS", "apply_lora", "count_parameters", "find_target_modules", "freeze", "lora_state_dict",
              "merge_lora", "load_lora_state_dict"],
    "medfm.data.splits": ["assign_patients", "check_no_leakage", "make_splits"],
    ".finetuner": ["FineTuner", "finetune"],
    ".config_schema": ["FinetuneConfig", "parse_finetune_config"],
    ".scoring": ["EarlyStopping", "predict_loader", "predict_scores", "task_metrics"],
    "medfm.metrics": ["regression_metrics"],
})

__all__ = [
    "finetune", "FineTuner", "FinetuneConfig", "parse_finetune_config", "EarlyStopping", "task_metrics",
    "predict_scores", "predict_loader", "regression_metrics",
    "FineTunedModel", "load_encoder", "load_finetuned", "export_merged", "weight_files",
    "TaskHead", "TaskSpec", "fuse", "task_loss",
    "PRESETS", "apply_lora", "find_target_modules", "freeze", "merge_lora", "lora_state_dict", "load_lora_state_dict",
    "count_parameters",
    "make_splits", "assign_patients", "check_no_leakage",
]
