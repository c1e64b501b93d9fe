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

The optimisation step (optimiser groups, precision, clipping, skip counting, logging) is the
training core shared with pretraining (:mod:`medfm.train.loop`); this module keeps what is
particular to fine-tuning: the model (base + adapters + head), the task loss, epochs with
validation and early stopping on the best epoch, the test evaluation and what is saved.
"""
from __future__ import annotations

import os

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Tuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ..card import write_model_card
from ..data import ManifestDataset, MultiModalCollate, move_batch, read_manifest
from ..data.columns import recorded_columns
from ..data.manifest import is_missing
from ..data.splits import make_splits
from ..errors import ConfigError
from ..io import deep_merge, portable_paths, write_json
from ..limits import limits
from ..metrics import cluster_bootstrap, metrics_with_ci
from ..models import MultiModalModel, create_model, resolve_config as resolve_model_config
from ..checkpoint import is_checkpoint
from ..models.init import apply_init, model_config_with_init, summary_lines, write_init_report
from ..train.run_guard import RunLock, RunStopped, StopSignals, stopped_message
from ..modality import fit_on_cohort
from ..registry import get_modality
from ..schema import defaults as schema_defaults
from ..train.loop import MetricsLog, TrainCore, build_optimizer, progress
from ..paths import config_path, optional_config_path
from ..train.schedule import cosine_with_warmup
from . import config_schema as cs
from .layout import finetune_meta
from .heads import TaskHead, TaskSpec, task_loss
from .lora import PRETRAINING_ONLY, apply_lora, count_parameters, freeze, shared_with
from .model import FineTunedModel, load_encoder

log = logging.getLogger("medfm.finetune")

METHODS = ("lora", "full", "linear")

#: the fine-tune config's defaults: the field defaults of :class:`medfm.finetune.config_schema.FinetuneConfig`
DEFAULT_CONFIG: Dict[str, Any] = schema_defaults(cs.FinetuneConfig)

#: monitor name → (metric key, higher is better)
MONITORS = {"auroc": ("macro_auroc", True), "auprc": ("macro_auprc", True), "accuracy": ("accuracy", True),
            "f1": ("macro_f1", True), "mae": ("mae", False), "rmse": ("rmse", False), "r2": ("r2", True),
            "loss": ("loss", False)}


def _typed(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Types and ranges from :mod:`medfm.finetune.config_schema` (key path in the message); keys
    of DEFAULT_CONFIG the schema does not list yet, and the task's extra keys, pass untyped."""
    sections = {"": cs.FinetuneConfig, "task": cs.TaskConfig, "lora": cs.LoraSection, "head": cs.HeadSection,
                "data": cs.FinetuneData, "optim": cs.FinetuneOptim, "eval": cs.FinetuneEval}
    tolerated = {}
    for sec, schema in sections.items():
        have = set(cfg if not sec else (cfg.get(sec) or {}))
        tolerated[sec] = have - {f.name for f in dataclasses.fields(schema)}
        if sec not in ("", "task"):
            tolerated[sec] &= set(DEFAULT_CONFIG.get(sec) or ())
    tolerated[""] &= set(DEFAULT_CONFIG)
    return cs.validate_finetune_config(cfg, tolerated)


def resolve_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Merge ``config`` over :data:`DEFAULT_CONFIG` and check names and values."""
    unknown = sorted(set(config) - set(DEFAULT_CONFIG) - {"name", "description"})
    if unknown:
        raise ConfigError(f"unknown fine-tuning config key(s) {unknown}; known: {sorted(DEFAULT_CONFIG)}")
    cfg = deep_merge(DEFAULT_CONFIG, config)
    for section in ("lora", "data", "optim", "eval", "head"):
        extra = sorted(set(cfg[section]) - set(DEFAULT_CONFIG[section]))
        if extra:
            raise ConfigError(f"{section}: unknown option(s) {extra}; known: {sorted(DEFAULT_CONFIG[section])}")
    cfg = _typed(cfg)
    if not cfg["base"]:
        raise ConfigError("base is required: the directory of a pretrained medfm checkpoint")
    if not cfg["data"]["manifest"]:
        raise ConfigError("data.manifest is required (a CSV/TSV/JSONL/Parquet cohort manifest)")
    if cfg["method"] not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {cfg['method']!r}")
    kind = cfg["task"].get("kind")
    mon = cfg["optim"]["monitor"] or ("mae" if kind == "regression" else "auroc")
    if mon not in MONITORS:
        raise ConfigError(f"optim.monitor must be one of {sorted(MONITORS)}, got {mon!r}")
    regression_only = {"mae", "rmse", "r2"}
    if (kind == "regression") != (mon in regression_only) and mon != "loss":
        raise ConfigError(f"optim.monitor {mon!r} does not fit a {kind} task")
    cfg["optim"]["monitor"] = mon
    return cfg


# ------------------------------------------------------------------- metrics
def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> Dict[str, float]:
    """MAE, RMSE, R² (scikit-learn) and Pearson r of ``(N,)`` targets and predictions.

    (``medfm.metrics`` has classification metrics only; regression lives here.)
    """
    from scipy.stats import pearsonr  # deferred: scipy and scikit-learn are slow to import
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    out = {"mae": float(mean_absolute_error(y_true, y_pred)),
           "rmse": float(math.sqrt(mean_squared_error(y_true, y_pred))), "r2": float("nan"),
           "pearson_r": float("nan")}
    if len(y_true) > 1 and np.ptp(y_true) > 0:
        out["r2"] = float(r2_score(y_true, y_pred))
        if np.ptp(y_pred) > 0:
            out["pearson_r"] = float(pearsonr(y_true, y_pred)[0])
    return out


def labelled(task: TaskSpec, y: np.ndarray) -> np.ndarray:
    """Boolean ``(N,)``: rows with a usable label."""
    if task.kind == "multiclass":
        return y >= 0
    if task.kind == "multilabel":
        return (y >= 0).any(1)
    return ~np.isnan(y)


def task_metrics(task: TaskSpec, y: np.ndarray, scores: np.ndarray, groups=None, n_boot: int = 0,
                 seed: int = 0) -> Tuple[Dict[str, float], Dict[str, Tuple[float, float]]]:
    """Point metrics and patient-level bootstrap CIs (``n_boot`` > 0) on labelled rows.

    Classification metrics come from :mod:`medfm.metrics`.
    """
    keep = labelled(task, y)
    y, scores = y[keep], scores[keep]
    groups = None if groups is None else np.asarray(groups)[keep]
    if len(y) == 0:
        return {}, {}
    if task.kind == "regression":
        point = regression_metrics(y, scores)
        ci = cluster_bootstrap(regression_metrics, y, scores, groups, n_boot=n_boot, seed=seed) if n_boot else {}
        return point, ci
    return metrics_with_ci(y, scores, groups, task.classes, n_boot=n_boot, seed=seed)


# ---------------------------------------------------------------- prediction
def predict_scores(model: FineTunedModel, batch: Mapping[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(logits (B, n_outputs), scores)`` of a collated batch: :meth:`FineTunedModel.predict`."""
    return model.predict(batch)


@torch.no_grad()
def predict_loader(model, loader, device) -> Dict[str, Any]:
    """Run the head over a loader → ``{"index": (N,), "id", "patient_id", "logits": (N, K), "scores"}``."""
    model.eval()
    idx, ids, pids, logits, scores, skipped = [], [], [], [], [], 0
    for batch in loader:
        skipped += batch["n_skipped"]
        if not batch["id"]:
            continue
        batch = move_batch(batch, device)
        lg, sc = predict_scores(model, batch)
        idx.append(batch["index"].cpu())
        ids += batch["id"]
        pids += batch["patient_id"]
        logits.append(lg.float().cpu())
        scores.append(sc.float().cpu())
    k = model.task_head.n_outputs
    return {"index": torch.cat(idx).numpy() if idx else np.zeros(0, int), "id": ids, "patient_id": pids,
            "logits": torch.cat(logits) if logits else torch.zeros(0, k),
            "scores": torch.cat(scores).numpy() if scores else np.zeros((0, k)), "n_skipped": skipped}


# ------------------------------------------------------------ early stopping
class EarlyStopping:
    """Best-epoch tracking: an epoch improves when its score beats the best by more than
    ``min_delta`` (a NaN score never improves); the first epoch is kept as best in any case.
    :attr:`should_stop` once ``patience`` (> 0) epochs in a row did not improve.

    Args:
        higher: whether a higher score is better.
        min_delta: the least change that counts as an improvement.
        patience: epochs without improvement before stopping (0 = never stop).
    """

    def __init__(self, higher: bool, min_delta: float = 0.0, patience: int = 0):
        self.higher, self.min_delta, self.patience = higher, float(min_delta), int(patience)
        self.best_score, self.best_state, self.best_epoch, self.best_val = None, None, 0, {}
        self.bad, self.should_stop = 0, False

    def update(self, score: float, epoch: int, state: Callable[[], Any], val: Mapping[str, Any]) -> bool:
        """Record an epoch's ``score``; ``state()`` is called (a copy of the weights) when it is
        the best so far. Returns whether it improved."""
        improved = score == score and (self.best_score is None or (
            score > self.best_score + self.min_delta if self.higher else score < self.best_score - self.min_delta))
        if improved or self.best_state is None:
            self.best_score, self.best_state, self.best_epoch, self.best_val = score, state(), epoch, val
            self.bad = 0 if improved else self.bad + 1
        else:
            self.bad += 1
        self.should_stop = self.patience > 0 and self.bad >= self.patience
        return improved


# -------------------------------------------------------------------- runner
class FineTuner:
    """One fine-tuning run; see :func:`finetune` for the configuration.

    Args:
        config: fine-tuning config (merged over :data:`DEFAULT_CONFIG`).
        out_dir: output directory.
        model: an already loaded base model (``config["base"]`` is still recorded as its source).
        config_dir: the config file's folder: relative ``base`` / ``data.manifest`` paths resolve
            against it (:mod:`medfm.paths`; the working directory when ``None``).

    After construction :attr:`model` is the :class:`FineTunedModel` being trained.
    """

    def __init__(self, config: Mapping[str, Any], out_dir, model=None, config_dir=None):
        self.cfg = resolve_config(config)
        self.out = Path(out_dir)
        self.config_dir = config_dir
        self._lock = RunLock(self.out).acquire()  # the run owns OUT (released by fit, or when building fails)
        try:
            self._setup(model, config_dir)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release ``OUT``'s run lock (done by :meth:`fit`; for a fine-tuner that is not fitted)."""
        self._lock.release()

    def _setup(self, model, config_dir) -> None:
        cfg = self.cfg
        torch.manual_seed(int(cfg["seed"]))
        np.random.seed(int(cfg["seed"]))
        dcfg = cfg["data"]
        self.df = read_manifest(config_path(dcfg["manifest"], config_dir, "data.manifest"))
        self.base = config_path(cfg["base"], config_dir, "base") if not isinstance(cfg["base"], Mapping) else None
        # the column mapping the base checkpoint recorded (read before an --init base is re-saved to OUT/base)
        self._recorded_columns = recorded_columns(self.base) if self.base is not None else {}
        if model is None:
            model = self._base_model(cfg, config_dir)
        if isinstance(model, FineTunedModel):  # a fine-tuned base: its encoder, without its head
            model = model.encoder
        encoder: MultiModalModel = model
        self.columns = self._columns(encoder.modalities)
        mods = cfg["modalities"] or [m for m in encoder.modalities if self.columns[m] in self.df.columns]
        if not cfg["modalities"]:
            for m in encoder.modalities:
                if m not in mods:
                    log.warning("modality %r of the base has no column %r in the manifest: not fine-tuned "
                                "(map it with columns: {%s: COLUMN} or --column %s=COLUMN)",
                                m, self.columns[m], m, m)
        for m in mods:
            if m not in encoder.modalities:
                raise ConfigError(f"modality {m!r} is not in the base model; it has {encoder.modalities}")
            if self.columns[m] not in self.df.columns:
                raise ConfigError(f"the manifest has no column {self.columns[m]!r} for modality {m!r}")
        if not mods:
            raise ConfigError("no modality of the base model has a column in the manifest")
        self.modalities = list(mods)
        self.splits = make_splits(self.df, dcfg["split_column"], float(dcfg["val_fraction"]),
                                  float(dcfg["test_fraction"]), int(dcfg["seed"]))
        self.task = TaskSpec.from_config(cfg["task"]).fit(self.splits["train"])
        self.targets = {s: self.task.encode(d) for s, d in self.splits.items()}
        self._weights_cpu = self.task.loss_weights(self.targets["train"])
        self.device = self._device(cfg["device"])
        self._setup_method(encoder)
        head = TaskHead(self.modalities, encoder.embed_dim, self.task.n_outputs, cfg["fusion"], **cfg["head"])
        meta = finetune_meta(self.base, self.out, cfg["method"], self.modalities, self.task, head,
                             fusion=cfg["fusion"], manifest_sha256=self.df.attrs.get("sha256"),
                             columns=dict(self.columns))
        self.model = FineTunedModel(encoder, head, self.task, meta)
        self.model.to(self.device)
        self.n_trainable, self.n_total = count_parameters(self.model)

    # ---------------------------------------------------------- building
    def _columns(self, modalities) -> Dict[str, str]:
        """``{modality: column}``: the config's ``columns`` over the mapping the base checkpoint
        recorded (:mod:`medfm.data.columns`), else the modality's name."""
        mapping = {**self._recorded_columns, **(self.cfg["columns"] or {})}
        return {m: mapping.get(m, m) for m in modalities}

    def _base_model(self, cfg: Mapping[str, Any], config_dir) -> MultiModalModel:
        """The base checkpoint, or — with ``init`` or a model config as ``base`` — a model built and
        initialised from imported weights, saved to ``OUT/base`` (the fine-tuned checkpoint refers to it)."""
        inits = dict(cfg.get("init") or {})
        is_ckpt = self.base is not None and is_checkpoint(self.base)
        if is_ckpt and not inits:
            return load_encoder(self.base)  # a fine-tuned base: its encoder, without its head
        if is_ckpt:
            model = load_encoder(self.base)
            apply_init(model, inits, base_dir=config_dir)
        else:

            base_cfg = cfg["base"] if isinstance(cfg["base"], Mapping) or self.base is None or not self.base.is_file() \
                else str(self.base)
            mcfg = resolve_model_config(model_config_with_init(base_cfg, inits, config_dir))
            adapters = {}
            for name, options in (mcfg.get("modalities") or {}).items():  # tokenizers learnt on the training rows
                adapter = get_modality(name, **(options or {}))
                column = (cfg["columns"] or {}).get(name, name)
                if column in self.df.columns:
                    present = [(adapter.source_from_row(r, column), r.get("patient_id"))
                               for r in self.df.to_dict("records")]
                    present = [(v, p) for v, p in present if not is_missing(v)]
                    fit_on_cohort(adapter, [v for v, _ in present], [p for _, p in present])
                adapters[name] = adapter
            model = create_model(mcfg, adapters=adapters)
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

    def _setup_method(self, model: MultiModalModel) -> None:
        """Make the base ready for ``method``: LoRA layers injected, or the right tensors trainable."""
        method = self.cfg["method"]
        others = shared_with(model, self.modalities)
        if method != "linear" and others:
            log.warning("the towers of %s share weights with %s: fine-tuning changes those too",
                        self.modalities, others)
        if method == "lora":
            lc = self.cfg["lora"]
            apply_lora(model, self.modalities, r=lc["r"], alpha=lc["alpha"], dropout=lc["dropout"], dora=lc["dora"],
                       target_modules=lc["target_modules"])
        else:
            freeze(model)
            if method == "full":  # the towers (less their pretraining-only decoders/MLM heads) + projections
                for m in self.modalities:
                    for n, p in model.tower(m).named_parameters():
                        p.requires_grad_(not PRETRAINING_ONLY.fullmatch(n))
                    for p in model.projections[m].parameters():
                        p.requires_grad_(True)

    def _loader(self, split: str, train: bool) -> DataLoader:
        dcfg = self.cfg["data"]
        adapters = {m: self.model.adapters[m] for m in self.modalities}
        ds = ManifestDataset(self.splits[split], adapters, train=train, columns=self.columns,
                             base_dir=self.df.attrs.get("base_dir"), data_roots=self.df.attrs.get("data_roots"),
                             cache_dir=optional_config_path(dcfg["cache_dir"], self.config_dir, "data.cache_dir"),
                             seed=int(dcfg["seed"]), root=optional_config_path(dcfg["root"], self.config_dir,
                                                                               "data.root"),
                             confine=bool(dcfg["confine_paths"]))
        ds.warn = not train  # training rows: the core's SkipLedger warns once per sample, however many epochs
        return DataLoader(ds, batch_size=int(dcfg["batch_size"]), shuffle=train,
                          num_workers=int(dcfg["num_workers"] or 0), collate_fn=MultiModalCollate(adapters),
                          generator=torch.Generator().manual_seed(int(self.cfg["seed"])))

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW with the core's weight-decay policy; the head's groups take ``optim.head_lr``."""
        oc = self.cfg["optim"]
        lr = float(oc["lr"])
        head_lr = float(oc["head_lr"]) if oc["head_lr"] is not None else lr
        return build_optimizer(self.model, lr, float(oc["weight_decay"]), betas=(0.9, 0.999),  # torch's default
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
        ecfg = self.cfg["eval"]
        point, ci = task_metrics(self.task, y, pred["scores"], pred["patient_id"], n_boot=n_boot,
                                 seed=int(ecfg["seed"]))
        if len(y):
            t = torch.as_tensor(y)
            point["loss"] = float(task_loss(self.task, pred["logits"], t, self._weights_cpu))
        point["n"] = int(labelled(self.task, y).sum()) if len(y) else 0
        return point, ci, {**pred, "y": y}

    def _train_epoch(self, core: TrainCore, loader: DataLoader, loss_of) -> float:
        """One pass over the training split, one core step per batch; the mean batch loss."""
        self.model.train()
        tot, nb = 0.0, 0
        for batch in loader:
            if not batch["id"]:  # every sample of the batch was unreadable (counted)
                core.skips.add_batch(batch)
                continue
            res = core.step(lambda b=batch: b, loss_of)
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
            with StopSignals() as stop, limits(**(self.cfg["data"]["limits"] or {})):
                self._stop, self._n_steps = stop, 0
                return self._fit()
        finally:
            self._stop = None
            self.close()

    def _fit(self) -> Dict[str, Any]:
        cfg, oc = self.cfg, self.cfg["optim"]
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "finetune_config.json", portable_paths(cfg, self.out))  # paths relative to OUT
        train_loader = self._loader("train", True)
        val_loader = self._loader("val", False) if len(self.splits["val"]) else None
        weights = None if self._weights_cpu is None else self._weights_cpu.to(self.device)
        optimizer = self._optimizer()
        epochs = int(oc["epochs"])
        sched = cosine_with_warmup(optimizer, int(oc["warmup_steps"]), max(1, epochs * len(train_loader)))
        core = TrainCore(self.model, optimizer, sched, device=self.device, precision="fp32",
                         grad_clip=float(oc["grad_clip"] or 0))
        key, higher = MONITORS[oc["monitor"]]
        stop = EarlyStopping(higher, float(oc["min_delta"]), int(oc["patience"]) if val_loader is not None else 0)
        history: List[Dict[str, Any]] = []
        y_train = torch.as_tensor(self.targets["train"])

        def loss_of(model: FineTunedModel, batch: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
            logits, _ = model.predict(batch)
            return {"loss": task_loss(self.task, logits, y_train[batch["index"].cpu()].to(self.device), weights)}

        bar = progress(epochs, f"finetune ({cfg['method']})", bool(cfg["progress"]))
        history_log = MetricsLog(self.out / "history.jsonl", mode="w", prefix="finetune",
                                 tensorboard=self.out / "tb" if cfg["tensorboard"] else None)
        try:
            for epoch in range(1, epochs + 1):
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
                bar.set_postfix(loss=f"{rec['train_loss']:.4f}", **{oc["monitor"]: f"{score:.4f}"})
                bar.update(1)
                if stop.should_stop:
                    break
        finally:
            bar.close()
            history_log.close()
        # a run that learned from nothing fails here: no checkpoint, metrics.json or card (medfm.data.skips)
        core.skips.check(what=f"this fine-tuning run ({len(history)} epochs)", knob="--set data.max_skip_fraction=F",
                         max_skip_fraction=cfg["data"]["max_skip_fraction"], source=self.df.attrs.get("source"))
        self._load_trainable(stop.best_state)
        result: Dict[str, Any] = {
            "out": str(self.out), "method": cfg["method"], "modalities": self.modalities, "task": self.task.kind,
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
            test, ci, pred = self._evaluate("test", self._loader("test", False), n_boot=int(cfg["eval"]["n_boot"]))
            n_skipped += pred["n_skipped"]
            result["test"], result["test_ci"] = test, {k: list(v) for k, v in ci.items()}
            self._write_predictions(pred)
        else:
            log.warning("no test split: test metrics are not computed")
        result["n_skipped"] = n_skipped
        if getattr(self.model.encoder, "init_sources", None):
            result["init_sources"] = self.model.encoder.init_sources
        self.model.save_pretrained(self.out)
        if cfg["merge"]:
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


def finetune(config: Mapping[str, Any], out_dir, *, model=None, config_dir=None) -> Dict[str, Any]:
    """Fine-tune a pretrained medfm model on a cohort and evaluate it; the stable Python API.

    Args:
        config: fine-tuning config; every key has a default (:data:`DEFAULT_CONFIG`) except
            ``base`` (pretrained checkpoint directory) and ``data.manifest`` (``task.label_column``
            defaults to ``"label"``)::

                {"base": DIR, "modalities": ["ecg"],
                 "task": {"kind": "multiclass"|"multilabel"|"regression", "label_column": "dx",
                          "separator": ";", "class_balanced": False},
                 "method": "lora"|"full"|"linear",
                 "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "dora": False, "target_modules": None},
                 "fusion": "concat"|"mean", "head": {"hidden": 0, "dropout": 0.0},
                 "data": {"manifest": PATH, "batch_size": 16, "split_column": "split",
                          "val_fraction": 0.15, "test_fraction": 0.15, "seed": 0},
                 "optim": {"lr": 1e-3, "weight_decay": 0.01, "epochs": 20, "patience": 5,
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
