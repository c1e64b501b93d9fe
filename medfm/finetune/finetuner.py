"""Fine-tune a pretrained model on a cohort: LoRA / full / linear head, early stopping, test CIs.

Python use (the API ``medfm demo`` and the CLI call)::

    from medfm.finetune import finetune
    result = finetune({"base": "ckpt/", "modalities": ["ecg"],
                       "task": {"kind": "multilabel", "label_column": "dx"},
                       "data": {"manifest": "cohort.csv"}}, "runs/ecg_lora")
    result["test"]["macro_auroc"], result["test_ci"]["macro_auroc"]      # point, (low, high)

The output directory then holds a fine-tuned checkpoint (a
:class:`~medfm.finetune.model.FineTunedModel`, layout in :mod:`medfm.finetune.layout`),
``metrics.json`` (the returned dict), ``history.jsonl`` (one line per epoch) and
``test_predictions.csv``.

The config is validated once, at the edge (:func:`~medfm.finetune.config_schema.parse_finetune_config`),
and :class:`FineTuner` reads the typed :class:`~medfm.finetune.config_schema.FinetuneConfig`. The
optimisation step (AdamW groups and betas, precision, accumulation, clipping, skip counting,
logging) is the training core shared with pretraining, built from the shared sections
(:meth:`medfm.train.loop.TrainCore.from_config`); reading is confined to the data roots and
bounded by ``data.limits`` as in pretraining. This module keeps what is particular to
fine-tuning: the model (base + adapters + head: :mod:`.build`), the task loss, epochs with
validation and early stopping on the best epoch (:mod:`.scoring`), the test evaluation and what
is saved.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple, Union

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ..card import write_model_card
from ..errors import ConfigError
from ..data import ManifestDataset, MultiModalCollate, read_manifest
from ..data.columns import recorded_columns
from ..data.splits import make_splits
from ..io import portable_paths, write_json
from ..limits import limits
from ..metrics import regression_metrics
from ..models import MultiModalModel
from ..models.init import summary_lines, write_init_report
from ..paths import config_path, optional_config_path
from ..schema import to_dict
from ..train.loop import MetricsLog, TrainCore, progress
from ..train.run_guard import RunLock, RunStopped, StopSignals, stopped_message
from . import build
from .config_schema import MONITORS, FinetuneConfig, parse_finetune_config
from .heads import TaskHead, TaskSpec, task_loss
from .layout import finetune_meta
from .lora import count_parameters
from .model import FineTunedModel
from .scoring import EarlyStopping, labelled, predict_loader, predict_scores, task_metrics

log = logging.getLogger("medfm.finetune")

__all__ = ["FineTuner", "finetune", "resolve_config", "MONITORS", "EarlyStopping",
           "labelled", "task_metrics", "predict_scores", "predict_loader", "regression_metrics"]


def resolve_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """A fine-tuning config validated (:func:`~medfm.finetune.config_schema.parse_finetune_config`), defaults
    filled in and the monitor chosen, as plain containers (what ``finetune_config.json`` records)."""
    return to_dict(parse_finetune_config(config))


class FineTuner:
    """One fine-tuning run; see :func:`finetune` for the configuration.

    Args:
        cfg: the typed config (:func:`~medfm.finetune.config_schema.parse_finetune_config`), or a mapping
            that is validated here (the Python API's edge).
        out_dir: output directory.
        model: an already loaded base model (``base`` is still recorded as its source).
        config_dir: the config file's folder: relative ``base`` / ``data.manifest`` / ``data.root`` /
            ``data.cache_dir`` resolve against it (:mod:`medfm.paths`; the working directory when ``None``).

    After construction :attr:`model` is the :class:`FineTunedModel` being trained.
    """

    def __init__(self, cfg: Union[FinetuneConfig, Mapping[str, Any]], out_dir, model=None, config_dir=None):
        self.cfg: FinetuneConfig = cfg if isinstance(cfg, FinetuneConfig) else parse_finetune_config(cfg)
        self.out = Path(out_dir)
        self.config_dir = config_dir
        self._lock = RunLock(self.out).acquire()  # the run owns OUT (released by fit, or when building fails)
        try:
            self._setup(model)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release ``OUT``'s run lock (done by :meth:`fit`; for a fine-tuner that is not fitted)."""
        self._lock.release()

    def _setup(self, model) -> None:
        cfg, config_dir = self.cfg, self.config_dir
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.df = read_manifest(config_path(cfg.data.manifest, config_dir, "data.manifest"))
        # `base` by the one path rule (medfm.paths): beside the config file, or as typed on the command line
        self.base = config_path(cfg.base, config_dir, "base")
        # the column mapping the base checkpoint recorded (read before an --init base is re-saved to OUT/base)
        recorded = recorded_columns(self.base)
        if model is None:
            model = self._base_model()
        encoder: MultiModalModel = model.encoder if isinstance(model, FineTunedModel) else model
        self.columns = build.column_map(cfg.data.columns, recorded, encoder.modalities)
        self.modalities = build.chosen_modalities(cfg.modalities, encoder, self.columns, self.df)
        dcfg = cfg.data
        self.splits = make_splits(self.df, dcfg.split_column, dcfg.val_fraction, dcfg.test_fraction, dcfg.seed)
        self.task = TaskSpec.from_config(cfg.task).fit(self.splits["train"])
        for m in self.modalities:  # the task's label is never a feature of a table modality
            if getattr(encoder.adapters.get(m), "is_feature", lambda c: False)(self.task.label_column):
                raise ConfigError(f"task.label_column {self.task.label_column!r} is a feature of modality {m!r}")
        self.targets = {s: self.task.encode(d) for s, d in self.splits.items()}
        self._weights_cpu = self.task.loss_weights(self.targets["train"])
        self.device = self._device(cfg.train.device)
        build.setup_method(encoder, cfg.method, self.modalities, cfg.lora)
        head = TaskHead(self.modalities, encoder.embed_dim, self.task.n_outputs, cfg.fusion, hidden=cfg.head.hidden,
                        dropout=cfg.head.dropout)
        meta = finetune_meta(self.base, self.out, cfg.method, self.modalities, self.task, head,
                             fusion=cfg.fusion, manifest_sha256=self.df.attrs.get("sha256"),
                             columns=dict(self.columns))
        self.model = FineTunedModel(encoder, head, self.task, meta)
        self.model.to(self.device)
        self.n_trainable, self.n_total = count_parameters(self.model)

    # ---------------------------------------------------------- building
    def _base_model(self) -> MultiModalModel:
        """The base (:func:`.build.base_model`); one built or initialised here is saved to ``OUT/base``
        (the fine-tuned checkpoint refers to it)."""
        model = build.base_model(self.cfg, self.base, self.df, self.config_dir)
        if build.is_checkpoint(self.base) and not self.cfg.init:
            return model
        for line in summary_lines(model.init_reports):
            log.info(line)
        self.base = self.out / "base"
        model.save_pretrained(self.base)
        write_init_report(self.out, model)
        return model

    @staticmethod
    def _device(name: str) -> torch.device:
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(name)

    def _loader(self, split: str, train: bool) -> DataLoader:
        """The split's rows, read like pretraining's: confined to ``data.root`` / the manifest's data roots
        (``data.confine_paths``), cached under ``data.cache_dir``."""
        dcfg = self.cfg.data
        adapters = {m: self.model.adapters[m] for m in self.modalities}
        ds = ManifestDataset(self.splits[split], adapters, train=train, columns=self.columns,
                             base_dir=self.df.attrs.get("base_dir"), data_roots=self.df.attrs.get("data_roots"),
                             cache_dir=optional_config_path(dcfg.cache_dir, self.config_dir, "data.cache_dir"),
                             seed=dcfg.seed, root=optional_config_path(dcfg.root, self.config_dir, "data.root"),
                             confine=dcfg.confine_paths)
        ds.warn = not train  # training rows: the core's SkipLedger warns once per sample, however many epochs
        return DataLoader(ds, batch_size=dcfg.batch_size, shuffle=train, num_workers=dcfg.num_workers,
                          collate_fn=MultiModalCollate(adapters),
                          generator=torch.Generator().manual_seed(self.cfg.train.seed))

    def _core(self, n_batches: int) -> TrainCore:
        """The training core from the shared sections: AdamW (the head's groups take ``optim.head_lr``),
        warm-up + cosine over the run's optimizer steps, ``train.precision`` and ``train.accumulation``."""
        oc, tc = self.cfg.optim, self.cfg.train
        head_lr = oc.head_lr if oc.head_lr is not None else oc.lr
        steps = max(1, tc.epochs * math.ceil(n_batches / tc.accumulation))
        return TrainCore.from_config(self.model, tc, oc, device=self.device, total_steps=steps,
                                     key=lambda name, p: name.startswith("task_head."), lr_of={True: head_lr})

    def _trainable_state(self) -> Dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def _load_trainable(self, state: Dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, v in state.items():
                params[n].copy_(v)

    # ------------------------------------------------------------ phases
    def _evaluate(self, split: str, loader, n_boot: int = 0) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any]]:
        pred = predict_loader(self.model, loader, self.device)
        y = self.targets[split][pred["index"]] if len(pred["index"]) else self.targets[split][:0]
        point, ci = task_metrics(self.task, y, pred["scores"], pred["patient_id"], n_boot=n_boot,
                                 seed=self.cfg.eval.seed)
        if len(y):
            t = torch.as_tensor(y)
            point["loss"] = float(task_loss(self.task, pred["logits"], t, self._weights_cpu))
        point["n"] = int(labelled(self.task, y).sum()) if len(y) else 0
        return point, ci, {**pred, "y": y}

    def _train_epoch(self, core: TrainCore, loader: DataLoader, loss_of) -> float:
        """One pass over the training split, one core step per ``train.accumulation`` batches (the last step
        of the epoch takes what is left); the mean step loss."""
        self.model.train()
        tot, nb = 0.0, 0
        batches = iter(loader)

        def next_batch():
            for batch in batches:
                if batch["id"]:
                    return batch
                core.skips.add_batch(batch)  # every sample of the batch was unreadable (counted)
            return None

        while True:
            first = next_batch()
            if first is None:
                break
            pending = [first]
            res = core.step(lambda: pending.pop() if pending else next_batch(), loss_of)
            tot, nb = tot + res.logs["loss"], nb + 1
            self._n_steps = getattr(self, "_n_steps", 0) + 1
            stop = getattr(self, "_stop", None)
            if stop is not None and stop.requested:
                # fine-tuning keeps no resumable checkpoint (it is short): the message says so
                raise RunStopped(stopped_message(self._n_steps, resumable=False))
        return tot / max(nb, 1)

    def fit(self) -> Dict[str, Any]:
        """Train with early stopping, restore the best epoch, test, save; returns the metrics dict.

        ``data.limits`` (see :mod:`medfm.limits`) apply to every read of this run. The run owns
        ``OUT`` (:class:`~medfm.train.run_guard.RunLock`: a second run into it is refused);
        SIGTERM/SIGINT stop it at the next step boundary with :class:`RunStopped`.
        """
        try:
            with StopSignals() as stop, limits(**self.cfg.data.limits.as_kwargs()):
                self._stop, self._n_steps = stop, 0
                return self._fit()
        finally:
            self._stop = None
            self.close()

    def _fit(self) -> Dict[str, Any]:
        cfg, tc = self.cfg, self.cfg.train
        self.out.mkdir(parents=True, exist_ok=True)
        # the typed config as recorded; paths relative to OUT
        write_json(self.out / "finetune_config.json", portable_paths(to_dict(cfg), self.out))
        train_loader = self._loader("train", True)
        val_loader = self._loader("val", False) if len(self.splits["val"]) else None
        weights = None if self._weights_cpu is None else self._weights_cpu.to(self.device)
        core = self._core(len(train_loader))
        key, higher = MONITORS[tc.monitor]
        stop = EarlyStopping(higher, tc.min_delta, tc.patience if val_loader is not None else 0)
        history: List[Dict[str, Any]] = []
        y_train = torch.as_tensor(self.targets["train"])

        def loss_of(model: FineTunedModel, batch: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
            logits, _ = model.predict(batch)
            return {"loss": task_loss(self.task, logits, y_train[batch["index"].cpu()].to(self.device), weights)}

        bar = progress(tc.epochs, f"finetune ({cfg.method})", tc.progress)
        history_log = MetricsLog(self.out / "history.jsonl", mode="w", prefix="finetune",
                                 tensorboard=self.out / "tb" if tc.tensorboard else None)
        try:
            for epoch in range(1, tc.epochs + 1):
                train_loader.dataset.set_epoch(epoch)
                rec: Dict[str, Any] = {"epoch": epoch, "train_loss": self._train_epoch(core, train_loader, loss_of)}
                if val_loader is not None:
                    val, _, _ = self._evaluate("val", val_loader)
                    rec.update({f"val_{k}": v for k, v in val.items() if not k.startswith(("auroc/", "auprc/"))})
                    score = val.get(key, float("nan"))
                else:
                    val, score = {}, -rec["train_loss"] if higher else rec["train_loss"]
                stop.update(score, epoch, self._trainable_state, val)
                rec["monitor"] = score
                history.append(rec)
                history_log.write(rec, step=epoch)
                bar.set_postfix(loss=f"{rec['train_loss']:.4f}", **{tc.monitor: f"{score:.4f}"})
                bar.update(1)
                if stop.should_stop:
                    break
        finally:
            bar.close()
            history_log.close()
        # a run that learned from nothing fails here: no checkpoint, metrics.json or card (medfm.data.skips)
        core.skips.check(what=f"this fine-tuning run ({len(history)} epochs)", knob="--set data.max_skip_fraction=F",
                         max_skip_fraction=cfg.data.max_skip_fraction, source=self.df.attrs.get("source"))
        self._load_trainable(stop.best_state)
        result: Dict[str, Any] = {
            "out": str(self.out), "method": cfg.method, "modalities": self.modalities, "task": self.task.kind,
            "label_column": self.task.label_column, "classes": self.task.classes, "monitor": key,
            "best_epoch": stop.best_epoch, "epochs_run": len(history), "stopped_early": stop.should_stop,
            "n_trainable": self.n_trainable, "n_total": self.n_total,
            "n_samples": {s: len(d) for s, d in self.splits.items()},
            "n_patients": {s: int(d["patient_id"].nunique()) for s, d in self.splits.items()},
            "val": stop.best_val, "test": {}, "test_ci": {}, "history": history,
        }
        return self._test_and_save(result, core.skips.n_skipped)

    def _test_and_save(self, result: Dict[str, Any], n_skipped: int) -> Dict[str, Any]:
        """Test metrics (with CIs) and predictions of the restored best model, then the checkpoint,
        ``metrics.json`` and the model card; returns ``result`` completed."""
        cfg = self.cfg
        if len(self.splits["test"]):
            test, ci, pred = self._evaluate("test", self._loader("test", False), n_boot=cfg.eval.n_boot)
            n_skipped += pred["n_skipped"]
            result["test"], result["test_ci"] = test, {k: list(v) for k, v in ci.items()}
            self._write_predictions(pred)
        else:
            log.warning("no test split: test metrics are not computed")
        result["n_skipped"] = n_skipped
        if getattr(self.model.encoder, "init_sources", None):
            result["init_sources"] = self.model.encoder.init_sources
        self.model.save_pretrained(self.out)
        if cfg.merge:
            result["merged"] = str(self.model.save_merged(self.out / "merged"))
        # on disk, paths are relative to the run folder (metrics.json travels with the checkpoint)
        write_json(self.out / "metrics.json", {**result, "out": ".", **(
            {"merged": os.path.relpath(result["merged"], self.out)} if result.get("merged") else {})})
        write_model_card(self.out)
        return result

    def _write_predictions(self, pred: Dict[str, Any]) -> None:
        df = pd.DataFrame({"id": pred["id"], "patient_id": pred["patient_id"]})
        y, s = pred["y"], pred["scores"]
        if self.task.kind == "regression":
            df["target"], df["prediction"] = y, s
        else:
            if self.task.kind == "multiclass":
                df["target"] = [self.task.classes[int(v)] if v >= 0 else "" for v in y]
            for j, c in enumerate(self.task.classes):
                if self.task.kind == "multilabel":
                    df[f"target/{c}"] = y[:, j]
                df[f"score/{c}"] = s[:, j]
        df.to_csv(self.out / "test_predictions.csv", index=False)


def finetune(config: Union[FinetuneConfig, Mapping[str, Any]], out_dir, *, model=None,
             config_dir=None) -> Dict[str, Any]:
    """Fine-tune a pretrained medfm model on a cohort and evaluate it; the stable Python API.

    Args:
        config: fine-tuning config (typed, or a mapping validated here); every key has a default
            (:class:`~medfm.finetune.config_schema.FinetuneConfig`, ``medfm info --config-schema finetune``) except
            ``base`` (pretrained checkpoint directory) and ``data.manifest`` (``task.label_column``
            defaults to ``"label"``)::

                {"base": DIR, "modalities": ["ecg"],
                 "task": {"kind": "multiclass"|"multilabel"|"regression", "label_column": "dx",
                          "separator": ";", "class_balanced": False},
                 "method": "lora"|"full"|"linear",
                 "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "dora": False, "target_modules": None},
                 "fusion": "concat"|"mean", "head": {"hidden": 0, "dropout": 0.0},
                 "data": {"manifest": PATH, "columns": {}, "batch_size": 16, "split_column": "split",
                          "val_fraction": 0.15, "test_fraction": 0.15, "seed": 0, "root": None,
                          "confine_paths": True, "limits": {...}},
                 "optim": {"lr": 1e-3, "head_lr": None, "weight_decay": 0.01, "betas": [0.9, 0.999]},
                 "train": {"device": "auto", "seed": 0, "precision": "fp32", "accumulation": 1,
                           "epochs": 20, "patience": 5,
                           "monitor": "auroc"|"auprc"|"accuracy"|"mae"|"rmse"|"r2"|"loss"},
                 "eval": {"n_boot": 1000}, "merge": False}
        out_dir: where the fine-tuned checkpoint and reports go.
        model: optional already-loaded base model (modified in place).
        config_dir: folder that relative paths in ``config`` resolve against.

    Returns:
        JSON-serialisable dict: ``test`` (point metrics, e.g. ``macro_auroc``, ``accuracy``,
        ``mae``), ``test_ci`` (``{metric: [low, high]}``, 95% patient-level bootstrap),
        ``val`` (best epoch), ``best_epoch``, ``epochs_run``, ``n_trainable``, ``n_total``,
        ``n_samples``, ``history``, ``classes``, ``monitor``, ``out`` (and ``merged``).
    """
    return FineTuner(config, out_dir, model=model, config_dir=config_dir).fit()
