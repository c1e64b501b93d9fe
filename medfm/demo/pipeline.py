"""``medfm demo``: the whole loop on the embedded cohort, in minutes on a laptop CPU.

::

    generate cohort ─► pretrain (contrastive + MAE/MLM, 6 modalities, missing ones) ─► embed
      ─► zero-shot (text prompts) ─► cross-modal retrieval ─► index build + search
      ─► linear probe ─► LoRA fine-tune ─► real pydicom/nibabel files ─► report.md + results.json

Every step uses the public pieces: :class:`medfm.train.Trainer`, ``medfm.evaluation``
(``embed``, ``zeroshot``, ``retrieval``, ``index``, ``probes``, ``metrics``) and
:func:`medfm.finetune.finetune`. Each metric is stored with its chance level and, where
it has one, a patient-level bootstrap 95% CI (:func:`medfm.demo.chance.chance_row`). The
evaluation steps call the same task functions as ``medfm zeroshot`` / ``medfm evaluate``
(:mod:`medfm.evaluation.tasks`).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from medfm.data import read_manifest
from medfm.errors import ConfigError
from medfm.evaluation.embed import embed_manifest, encode_values, logit_scale, rows_for
from medfm.evaluation.index import VectorIndex, model_fingerprint
from medfm.evaluation.tasks import run_probe, run_retrieval, run_zeroshot
from medfm.evaluation.vectors import l2_normalize
from medfm.evaluation.zeroshot import parse_prompt_set, text_classifier, zeroshot_scores
from medfm.finetune import finetune
from medfm.train import Trainer

from . import demo_report as rep
from .cohort import CLASSES, IMAGING, PROMPTS, CohortSpec, copy_real_files, generate_cohort
from .machine import machine_info, machine_line

log = logging.getLogger("medfm.demo")


@dataclass
class DemoSettings:
    """Sizes of one demo run (:func:`settings` gives the full and the ``--quick`` ones)."""

    n_patients: int = 120
    steps: int = 170
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 15
    finetune_epochs: int = 4
    n_boot: int = 200
    masked_weight: float = 0.25


def settings(quick: bool = False) -> DemoSettings:
    """The full demo (≈240 samples, 170 steps) or the ``--quick`` one (≈130 samples, 130 steps) the tests run.

    The full run is sized to finish in about 150 s on a 2-core CPU whose fp32 GEMM rate is about
    90 GFLOP/s (the demo prints the measured rate in its header).
    """
    if quick:
        return DemoSettings(n_patients=60, steps=130, finetune_epochs=3, n_boot=200)
    return DemoSettings()


# -------------------------------------------------------------------- configs
#: adapter options that keep every modality small (see the adapters' ``defaults``)
MODALITY_OPTIONS: Dict[str, Dict[str, Any]] = {
    # NIfTI at 2.5 × 1.5 × 1.5 mm, resampled to 2.5 × 3 × 3 mm: 16 × 32 × 32 voxels, 64 tubelets
    "ct": {"size": [16, 32, 32], "patch_size": [4, 8, 8], "target_spacing": [2.5, 3.0, 3.0],
           "windows": ["lung", "mediastinum"]},
    "oct": {"frames": 16, "size": [32, 32], "patch_size": [8, 8, 8]},
    "xray": {"size": 32, "patch_size": 8},
    "ecg": {"fs": 100, "duration": 2.5, "min_duration": 2.0, "patch_size": 25},
    "dna": {"k": 4, "max_length": 120},
    "text": {"max_length": 48, "vocab_size": 400, "min_frequency": 1, "pool": "mean",
             "hf_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                           "intermediate_size": 128, "max_position_embeddings": 64}},
}


def pretrain_config(manifest: Path, s: DemoSettings, seed: int, progress: bool = True) -> Dict[str, Any]:
    """The :class:`medfm.train.Trainer` run config of the demo (medfm-tiny, CLIP pairs + masked)."""
    return {
        "name": "medfm-demo",
        "model": {"name": "medfm-tiny", "modalities": MODALITY_OPTIONS},
        "data": {"manifest": str(manifest), "split": "train", "batch_size": s.batch_size,
                 "cache_dir": str(manifest.parent.parent / "cache")},
        "objectives": [{"name": "clip", "weight": 1.0, "mode": "pairs"},
                       {"name": "masked", "weight": s.masked_weight, "mask_ratio": {"oct": 0.75}}],
        "optim": {"lr": s.lr, "warmup_steps": s.warmup, "weight_decay": 0.05},
        "train": {"max_steps": s.steps, "checkpoint_every": 0, "seed": seed, "tensorboard": False,
                  "progress": progress, "log_every": 1, "device": "cpu"},
    }


# ------------------------------------------------------------------- helpers
@dataclass
class EmbeddedCohort:
    """Per modality: ``ids`` and ``emb (N, D)`` of the rows that hold it; the manifest rows by id."""

    df: pd.DataFrame
    emb: Dict[str, np.ndarray] = field(default_factory=dict)
    ids: Dict[str, List[str]] = field(default_factory=dict)
    skipped: Dict[str, List[Dict[str, str]]] = field(default_factory=dict)

    def rows(self, modality: str) -> pd.DataFrame:
        return rows_for(self.df, self.ids[modality])

    def select(self, modality: str, split: str):
        """``(emb (n, D), rows)`` of ``modality`` restricted to ``split``."""
        rows = self.rows(modality)
        keep = (rows["split"] == split).to_numpy()
        return self.emb[modality][keep], rows[keep].reset_index(drop=True)

    def fused(self, split: str, modalities: Sequence[str] = IMAGING):
        """Mean of the L2-normalised embeddings a sample has among ``modalities`` → ``(n, D)``, rows."""
        df = self.df[self.df["split"] == split].reset_index(drop=True)
        pos = {sid: i for i, sid in enumerate(df["id"])}
        dim = next(iter(self.emb.values())).shape[1]
        acc, cnt = np.zeros((len(df), dim), np.float32), np.zeros(len(df))
        for m in modalities:
            if m not in self.emb:
                continue
            for sid, z in zip(self.ids[m], self.emb[m]):
                if sid in pos:
                    acc[pos[sid]] += z
                    cnt[pos[sid]] += 1
        keep = cnt > 0
        return l2_normalize(acc[keep] / cnt[keep, None]), df[keep].reset_index(drop=True)


def embed_all(model, df: pd.DataFrame, modalities: Sequence[str], progress: bool) -> EmbeddedCohort:
    out = EmbeddedCohort(df)
    for m in modalities:
        e = embed_manifest(model, df, m, batch_size=64, progress=progress)
        out.emb[m], out.ids[m], out.skipped[m] = e.emb, list(e.ids), e.skipped
    return out


def label_index(rows: pd.DataFrame) -> np.ndarray:
    lut = {c: i for i, c in enumerate(CLASSES)}
    return np.array([lut[v] for v in rows["label"]], dtype=np.int64)


# --------------------------------------------------------------------- steps
def step_zeroshot(model, ec: EmbeddedCohort, s: DemoSettings, seed: int) -> Dict[str, Any]:
    """Text-prompt zero-shot on the test split: each non-text modality and their fusion
    (:func:`medfm.evaluation.tasks.run_zeroshot`)."""
    prompts = parse_prompt_set(PROMPTS, "demo prompts")
    clf = text_classifier(lambda p: encode_values(model, "text", p, source="prompt"), prompts)
    scale = logit_scale(model)
    out: Dict[str, Any] = {"prompts": prompts.positive, "logit_scale": scale, "per_modality": {},
                           "_classify": lambda z: zeroshot_scores(z, clf, scale)}
    targets = {m: ec.select(m, "test") for m in IMAGING if m in ec.emb}
    targets["fused"] = ec.fused("test")
    for name, (emb, rows) in targets.items():
        if len(rows) < 3:
            continue
        res = run_zeroshot(emb, label_index(rows), clf, classes=list(CLASSES), groups=rows["patient_id"].tolist(),
                           logit_scale=scale, n_boot=s.n_boot, seed=seed)
        out["per_modality"][name] = {"n": res.n, **_value(res, "accuracy"), **_value(res, "macro_auroc"),
                                     "chance_accuracy": res.chance["accuracy"], "chance_auroc": res.chance["macro_auroc"]}
        if name == "fused":
            out["_roc"] = (res.details["y"], res.details["scores"])
    return out


def _value(res, metric: str, name: Optional[str] = None) -> Dict[str, Any]:
    """``{name: value, name_ci: [low, high]}`` of one metric of a task result (NaN interval when none)."""
    name = name or metric
    return {name: res.metrics[metric], f"{name}_ci": list(res.ci.get(metric, (np.nan, np.nan)))}


def step_retrieval(ec: EmbeddedCohort, s: DemoSettings, seed: int) -> Dict[str, Any]:
    """Cross-modal retrieval on the test split, each imaging modality → report (and back)
    (:func:`medfm.evaluation.tasks.run_retrieval`).

    Ground truth: the same diagnosis (class label); chance is the exact expectation of a random
    ranking (:func:`medfm.evaluation.retrieval.recall_chance`). R@1 and mAP have patient-bootstrap CIs.
    """
    out: Dict[str, Any] = {"ground_truth": "same class label", "pairs": {}}
    g_emb, g_rows = ec.select("text", "test") if "text" in ec.emb else (None, None)
    if g_emb is None or len(g_rows) < 3:
        return out
    for m in IMAGING:
        if m not in ec.emb:
            continue
        q_emb, q_rows = ec.select(m, "test")
        if len(q_rows) < 3:
            continue
        res = run_retrieval(q_emb, g_emb, list(q_rows["label"]), list(g_rows["label"]),
                            query_groups=q_rows["patient_id"], gallery_groups=g_rows["patient_id"],
                            names=(m, "text"), ks=(1,), n_boot=s.n_boot, seed=seed)
        for direction, n_gallery in ((f"{m}_to_text", len(g_rows)), (f"text_to_{m}", len(q_rows))):
            pre = direction + "_"
            out["pairs"][direction] = {
                "n_queries": int(res.metrics[pre + "n_queries"]), "n_gallery": int(n_gallery),
                **_value(res, pre + "R@1", "R@1"), "R@1_chance": res.chance[pre + "R@1"],
                **_value(res, pre + "mAP", "mAP"), "mAP_chance": res.chance[pre + "mAP"]}
    return out


def step_index(model, ec: EmbeddedCohort, out_dir: Path, query: str, target_class: str,
               modality: str = "xray", k: int = 5) -> Dict[str, Any]:
    """Build a persistent faiss index of the test ``modality`` embeddings, reload it, search it with text."""
    emb, rows = ec.select(modality, "test")
    fp = model_fingerprint(out_dir / "model")
    index = VectorIndex.build(emb, list(rows["id"]), metadata=rows[["label", "split", modality]],
                              model_fingerprint=fp, model_dir=str(out_dir / "model"), modality=modality)
    index.save(out_dir / "index")
    index = VectorIndex.load(out_dir / "index")
    index.check_model(fp)
    q = encode_values(model, "text", [query], source="query")
    hits = index.search_records(q, k=k)[0]
    precision = float(np.mean([h["label"] == target_class for h in hits])) if hits else float("nan")
    return {"modality": modality, "n_indexed": len(index), "kind": index.info["kind"], "query": query,
            "target_class": target_class, "hits": hits, f"precision@{k}": precision,
            f"precision@{k}_chance": float(np.mean(rows["label"] == target_class)), "k": k}


def step_probe(ec: EmbeddedCohort, s: DemoSettings, seed: int) -> Dict[str, Any]:
    """Logistic-regression probe on frozen fused imaging embeddings, C chosen on val
    (:func:`medfm.evaluation.tasks.run_probe`, linear only)."""
    parts = {sp: ec.fused(sp) for sp in ("train", "val", "test")}
    X = np.concatenate([x for x, _ in parts.values()])
    y = np.concatenate([label_index(r) for _, r in parts.values()])
    splits = np.concatenate([[sp] * len(r) for sp, (_, r) in parts.items()])
    groups = np.concatenate([r["patient_id"].to_numpy() for _, r in parts.values()])
    res = run_probe(X, y, splits, classes=list(CLASSES), groups=groups, knn_k=None, shots=(), n_boot=s.n_boot,
                    seed=seed)
    return {"features": "mean of the imaging/ECG/DNA embeddings a sample has", "C": res.info["linear_C"],
            "n_train": res.info["n_train"], "n_test": res.info["n_test"], **_value(res, "linear/accuracy", "accuracy"),
            **_value(res, "linear/macro_auroc", "macro_auroc"), "chance_accuracy": res.chance["linear/accuracy"],
            "chance_auroc": res.chance["linear/macro_auroc"], "_roc": (res.details["y_test"], res.details["linear"])}


def step_finetune(out_dir: Path, manifest: Path, s: DemoSettings, seed: int, progress: bool) -> Dict[str, Any]:
    """LoRA (r=4) on the X-ray and ECG towers with a 3-class head, via :func:`medfm.finetune.finetune`."""
    cfg = {"base": str(out_dir / "model"), "modalities": ["xray", "ecg"],
           "task": {"kind": "multiclass", "label_column": "label"}, "method": "lora",
           "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "fusion": "mean",
           "data": {"manifest": str(manifest), "batch_size": 32, "split_column": "split", "seed": seed},
           "optim": {"lr": 2e-3, "head_lr": 5e-3},
           "train": {"epochs": s.finetune_epochs, "patience": 3, "monitor": "auroc", "seed": seed,
                     "progress": progress, "device": "cpu"},
           "eval": {"n_boot": s.n_boot, "seed": seed}}
    res = finetune(cfg, out_dir / "finetune")
    test, ci = res.get("test", {}), res.get("test_ci", {})
    pred_path = out_dir / "finetune" / "test_predictions.csv"
    chance = float("nan")
    if pred_path.is_file():
        targets = pd.read_csv(pred_path)["target"].astype(str)
        chance = float(targets.value_counts(normalize=True).max())
    return {"method": res.get("method"), "modalities": res.get("modalities"), "n_trainable": res.get("n_trainable"),
            "n_total": res.get("n_total"), "best_epoch": res.get("best_epoch"), "epochs_run": res.get("epochs_run"),
            "n_test": test.get("n"), "accuracy": test.get("accuracy"), "accuracy_ci": ci.get("accuracy"),
            "macro_auroc": test.get("macro_auroc"), "macro_auroc_ci": ci.get("macro_auroc"),
            "chance_accuracy": chance, "chance_auroc": 0.5, "out": res.get("out")}


def step_real_files(model, cohort_dir: Path, classifier_fn: Callable[[np.ndarray], np.ndarray]) -> List[Dict[str, Any]]:
    """Read the pydicom/nibabel files through the adapters, embed them, report what was read (no label)."""
    df = read_manifest(cohort_dir / "real_manifest.csv")
    out = []
    for row in df.to_dict("records"):
        mod = next(m for m in ("ct", "ecg", "xray", "oct") if row.get(m))
        adapter = model.adapters[mod]
        path = str(cohort_dir / row[mod])
        rec = adapter.read(path, sample_id=row["id"], row=row)
        item = adapter.preprocess(rec, train=False)
        z = model.encode(mod, item["x"][None], None).detach().numpy()
        meta = {k: v for k, v in rec.meta.items() if k in ("format", "spacing", "shape", "fs", "source_leads")}
        if "fs" in meta:
            meta["n_leads"], meta["seconds"] = int(rec.data.shape[0]), round(rec.data.shape[-1] / meta["fs"], 2)
            meta.pop("source_leads", None)
        probs = classifier_fn(z)[0]
        out.append({"id": row["id"], "file": row["description"], "modality": mod, "read": meta,
                    "input_shape": list(item["x"].shape), "embedding_norm": float(np.linalg.norm(z)),
                    "zero_shot": {c: float(p) for c, p in zip(CLASSES, probs)}})
    return out


# ---------------------------------------------------------------------- main
def run_demo(out_dir: Any, *, quick: bool = False, seed: int = 0, progress: bool = True,
             echo: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the whole demo into ``out_dir``; returns the ``results.json`` content.

    Writes ``out_dir/cohort/`` (files + manifests), ``model/`` (pretrained checkpoint),
    ``index/``, ``finetune/``, ``report.md`` with PNG plots, and ``results.json``.
    Library chatter that says nothing about the demo (MONAI's optional GPU codec, wfdb's
    pandas deprecations) is silenced for the duration of the run.
    """
    quiet = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
            warnings.filterwarnings("ignore", message=".*inplace keyword.*")
            return _run_demo(Path(out_dir), quick=quick, seed=seed, progress=progress, echo=echo)
    finally:
        quiet.setLevel(level)


def _run_demo(out: Path, *, quick: bool, seed: int, progress: bool, echo: Callable[[str], None]) -> Dict[str, Any]:
    if out.exists() and any(out.iterdir()):
        if not (out / "results.json").exists() and not (out / "cohort").exists():
            raise ConfigError(f"{out} exists and is not empty (and is not an earlier demo run); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    s = settings(quick)
    torch.manual_seed(seed)
    # Tiny models on a CPU: one intra-op thread is faster than two (no fork/join per small op),
    # and far faster when other processes compete for the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_steps(out, s, quick=quick, seed=seed, progress=progress, echo=echo)
    finally:
        torch.set_num_threads(threads)


def _run_steps(out: Path, s: DemoSettings, *, quick: bool, seed: int, progress: bool,
               echo: Callable[[str], None]) -> Dict[str, Any]:
    times: Dict[str, float] = {}
    t_all = time.perf_counter()
    machine = machine_info()
    echo(f"medfm demo{' --quick' if quick else ''}: {machine_line(machine)}; training runs on 1 thread")

    def tick(name: str, t0: float) -> None:
        times[name] = round(time.perf_counter() - t0, 2)

    # 1. cohort
    t0 = time.perf_counter()
    echo(f"[1/7] generating the cohort ({s.n_patients} patients, seed {seed}) in {out / 'cohort'}")
    for sub in ("cohort", "cache", "model", "index", "finetune"):
        shutil.rmtree(out / sub, ignore_errors=True)
    generate_cohort(out / "cohort", CohortSpec(n_patients=s.n_patients, seed=seed), progress=progress)
    copy_real_files(out / "cohort")
    manifest = out / "cohort" / "manifest.csv"
    df = read_manifest(manifest)
    tick("cohort", t0)
    cohort_info = rep.cohort_summary(df)

    # 2. pretrain
    t0 = time.perf_counter()
    echo(f"[2/7] pretraining medfm-tiny on {cohort_info['splits'].get('train', 0)} training samples, "
         f"{s.steps} steps (CLIP over all modality pairs + masked modelling)")
    trainer = Trainer(pretrain_config(manifest, s, seed, progress), out / "model")
    last = trainer.fit()
    tick("pretrain", t0)
    curve = [json.loads(line) for line in (out / "model" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    model = trainer.model.eval()
    n_params = int(sum(p.numel() for p in model.parameters()))

    # 3. embeddings
    t0 = time.perf_counter()
    echo("[3/7] embedding every sample with every tower")
    with torch.no_grad():
        ec = embed_all(model, df, model.modalities, progress)
        tick("embed", t0)

        # 4. zero-shot, retrieval, index, probe
        t0 = time.perf_counter()
        echo("[4/7] zero-shot classification, retrieval, index search, linear probe")
        zs = step_zeroshot(model, ec, s, seed)
        retr = step_retrieval(ec, s, seed)
        idx = step_index(model, ec, out, "findings: dense consolidation. impression: advanced disease", "advanced")
        probe = step_probe(ec, s, seed)
        real = step_real_files(model, out / "cohort", zs["_classify"])
        tick("evaluate", t0)

    # 5. fine-tune
    t0 = time.perf_counter()
    echo(f"[5/7] LoRA fine-tuning of the X-ray and ECG towers ({s.finetune_epochs} epochs)")
    ft = step_finetune(out, manifest, s, seed, progress)
    tick("finetune", t0)

    # 6. report
    t0 = time.perf_counter()
    echo("[6/7] writing the report")
    results: Dict[str, Any] = {
        "task": "demo", "medfm_demo_version": 1, "seed": seed, "quick": quick, "settings": asdict(s),
        "machine": machine,
        "cohort": cohort_info,
        "pretrain": {"steps": int(last.get("step", 0)), "n_parameters": n_params,
                     "first_loss": curve[0]["loss"] if curve else None, "final_loss": last.get("loss"),
                     "n_skipped": int(last.get("n_skipped", 0)),
                     "loss_curve": [{"step": c["step"], "loss": c["loss"], "clip": c.get("clip"),
                                     "masked": c.get("masked")} for c in curve]},
        "zeroshot": {k: v for k, v in zs.items() if not k.startswith("_")},
        "retrieval": retr, "index": idx,
        "probe": {k: v for k, v in probe.items() if not k.startswith("_")},
        "finetune": ft, "real_files": real,
    }
    plots = rep.make_plots(out, curve, zs.get("_roc"), probe.get("_roc"), idx, out / "cohort")
    results["summary"] = rep.summary_rows(results)
    tick("report", t0)
    times["total"] = round(time.perf_counter() - t_all, 2)
    results["timing_s"] = times
    results["plots"] = [p.name for p in plots]
    rep.write_results(out, results, plots)
    echo("[7/7] done")
    echo(rep.summary_table(results["summary"]))
    echo(f"report: {out / 'report.md'}   results: {out / 'results.json'}   total {times['total']:.0f} s")
    return results
