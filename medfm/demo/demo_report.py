"""The demo's outputs: cohort summary, the metric-vs-chance table, PNG plots, report.md, results.json."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from PIL import Image

from medfm.evaluation.report import plot_roc, plt, to_jsonable

from .chance import chance_row
from .cohort import CLASSES, MODALITIES


def cohort_summary(df: pd.DataFrame) -> Dict[str, Any]:
    """Counts of samples, patients, splits, classes and present/missing modalities."""
    present = {m: int(df[m].notna().sum()) for m in MODALITIES if m in df.columns}
    return {"n_samples": int(len(df)), "n_patients": int(df["patient_id"].nunique()),
            "splits": {str(k): int(v) for k, v in df["split"].value_counts().items()},
            "classes": {str(k): int(v) for k, v in df["label"].value_counts().items()},
            "present": present, "missing": {m: int(len(df) - n) for m, n in present.items()},
            "samples_missing_a_modality": int(df[list(present)].isna().any(axis=1).sum())}


def summary_rows(results: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Every reported metric with its chance level (and CI where there is one)."""
    rows: List[Dict[str, Any]] = []
    for name, r in results["zeroshot"].get("per_modality", {}).items():
        rows.append(chance_row(f"zero-shot {name}", "accuracy", r["accuracy"], r["chance_accuracy"], r["accuracy_ci"], r["n"]))
        rows.append(chance_row(f"zero-shot {name}", "macro AUROC", r["macro_auroc"], 0.5, r["macro_auroc_ci"], r["n"]))
    for name, r in results["retrieval"].get("pairs", {}).items():
        rows.append(chance_row(f"retrieval {name}", "R@1", r["R@1"], r["R@1_chance"], r["R@1_ci"], r["n_queries"]))
        rows.append(chance_row(f"retrieval {name}", "mAP", r["mAP"], r["mAP_chance"], r["mAP_ci"], r["n_queries"]))
    idx = results["index"]
    k = idx["k"]
    rows.append(chance_row("index search (text → x-ray)", f"precision@{k}", idx[f"precision@{k}"],
                     idx[f"precision@{k}_chance"], None, 1))
    for block, key in (("linear probe (fused)", "probe"), ("LoRA fine-tune (x-ray+ECG)", "finetune")):
        r = results[key]
        if r.get("accuracy") is None:
            continue
        rows.append(chance_row(block, "accuracy", r["accuracy"], r["chance_accuracy"], r.get("accuracy_ci"), r.get("n_test")))
        rows.append(chance_row(block, "macro AUROC", r["macro_auroc"], 0.5, r.get("macro_auroc_ci"), r.get("n_test")))
    return rows


def _f(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{nd}f}"


def summary_table(rows: Sequence[Mapping[str, Any]], markdown: bool = False) -> str:
    """The metric-vs-chance table, as plain text (terminal) or Markdown."""
    head = ("block", "metric", "value", "95% CI", "chance", "x chance", "beats chance")
    body = []
    for r in rows:
        ci = f"{_f(r['ci_low'])}–{_f(r['ci_high'])}" if r["ci_low"] is not None else ""
        ratio = r["value"] / r["chance"] if r["chance"] else float("nan")
        body.append((r["block"], r["metric"], _f(r["value"]), ci, _f(r["chance"]), _f(ratio, 2),
                     "yes" if r["beats_chance"] else "NO"))
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "| --- | --- | ---: | :---: | ---: | ---: | :---: |"]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*b) for b in body]
    n_ok = sum(r["beats_chance"] for r in rows)
    lines.append(f"{n_ok}/{len(rows)} metrics beat chance (with a CI: its lower bound).")
    return "\n".join(lines)


# --------------------------------------------------------------------- plots
def plot_loss(curve: Sequence[Mapping[str, Any]], path: Path) -> Optional[Path]:
    """Pretraining loss (total, contrastive, masked) per step."""
    if not curve:
        return None
    steps = [c["step"] for c in curve]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, style in (("loss", "-"), ("clip", "--"), ("masked", ":")):
        vals = [c.get(key) for c in curve]
        if all(v is not None for v in vals):
            ax.plot(steps, vals, style, lw=1.2, label=key)
    ax.set(xlabel="step", ylabel="loss", title="Pretraining loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
    return path


def plot_retrieval_example(idx: Mapping[str, Any], cohort_dir: Path, path: Path) -> Optional[Path]:
    """The text query and the X-ray images of its top hits, titled with their class and score."""
    hits = idx.get("hits") or []
    if not hits:
        return None
    fig, axes = plt.subplots(1, len(hits), figsize=(2.1 * len(hits), 2.6))
    axes = np.atleast_1d(axes)
    for ax, h in zip(axes, hits):
        with Image.open(cohort_dir / h[idx["modality"]]) as im:
            ax.imshow(np.asarray(im), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"#{h['rank']} {h['label']}\ncos {h['score']:.2f}", fontsize=8,
                     color="green" if h["label"] == idx["target_class"] else "red")
        ax.axis("off")
    fig.suptitle(f"query: \"{idx['query']}\"", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
    return path


def make_plots(out: Path, curve, zs_roc: Optional[Tuple[np.ndarray, np.ndarray]],
               probe_roc: Optional[Tuple[np.ndarray, np.ndarray]], idx: Mapping[str, Any],
               cohort_dir: Path) -> List[Path]:
    """Loss curve, ROC curves (zero-shot fused, linear probe) and the retrieval example, as PNGs in ``out``."""
    plots = [plot_loss(curve, out / "loss_curve.png")]
    if zs_roc is not None:
        plots.append(plot_roc(zs_roc[0], zs_roc[1], CLASSES, out / "roc_zeroshot_fused.png",
                              title="Zero-shot (fused embeddings), test"))
    if probe_roc is not None:
        plots.append(plot_roc(probe_roc[0], probe_roc[1], CLASSES, out / "roc_linear_probe.png",
                              title="Linear probe, test"))
    plots.append(plot_retrieval_example(idx, cohort_dir, out / "retrieval_example.png"))
    return [p for p in plots if p is not None]


# -------------------------------------------------------------------- files
def render_report(results: Mapping[str, Any], plots: Sequence[Path]) -> str:
    """``report.md``: cohort, pretraining, metric-vs-chance table, index search, real files, plots."""
    c, p = results["cohort"], results["pretrain"]
    lines = ["# medfm demo", "",
             f"Seed {results['seed']}{' (quick run)' if results['quick'] else ''}; total "
             f"{results['timing_s'].get('total', float('nan')):.0f} s "
             f"({', '.join(f'{k} {v:.0f} s' for k, v in results['timing_s'].items() if k != 'total')}).", "",
             "## Cohort", "",
             f"{c['n_samples']} samples of {c['n_patients']} patients; splits {c['splits']}; classes {c['classes']}. "
             f"{c['samples_missing_a_modality']} samples miss at least one modality; present per modality: "
             f"{c['present']}.", "",
             "## Pretraining", "",
             f"medfm-tiny ({p['n_parameters']:,} parameters), {p['steps']} steps of CLIP over every modality pair "
             f"+ masked modelling; loss {_f(p['first_loss'])} → {_f(p['final_loss'])}; "
             f"{p['n_skipped']} samples skipped.", "",
             "## Metrics against chance (test split)", "",
             "Zero-shot uses text prompts only; retrieval ground truth is the same class; "
             "CIs are 95% patient-level bootstrap intervals.", "",
             summary_table(results["summary"], markdown=True), ""]
    idx = results["index"]
    lines += ["## Index search", "",
              f"A {idx['kind']} faiss index of {idx['n_indexed']} test {idx['modality']} embeddings, saved, reloaded "
              f"and queried with \"{idx['query']}\":", "",
              "| rank | id | class | score |", "| ---: | --- | --- | ---: |"]
    lines += [f"| {h['rank']} | {h['id']} | {h['label']} | {h['score']:.3f} |" for h in idx["hits"]]
    lines += ["", "## Real files read through the adapters", "",
              "| file | modality | read as | model input | zero-shot (no label) |", "| --- | --- | --- | --- | --- |"]
    for r in results["real_files"]:
        zs = max(r["zero_shot"], key=r["zero_shot"].get)
        read = ", ".join(f"{k}={v}" for k, v in r["read"].items())
        lines.append(f"| {r['file']} | {r['modality']} | {read} | {tuple(r['input_shape'])} | {zs} "
                     f"({r['zero_shot'][zs]:.2f}) |")
    ft = results["finetune"]
    if ft.get("n_trainable") is not None:
        lines += ["", f"LoRA fine-tune: {ft['n_trainable']:,} trainable of {ft['n_total']:,} parameters, "
                      f"best epoch {ft['best_epoch']} of {ft['epochs_run']}."]
    lines += [""] + [f"![{Path(pl).stem}]({Path(pl).name})" for pl in plots]
    return "\n".join(lines) + "\n"


def write_results(out: Path, results: Dict[str, Any], plots: Sequence[Path]) -> None:
    """``results.json`` (plain JSON, NaN → null) and ``report.md``."""
    (out / "results.json").write_text(json.dumps(to_jsonable(results), indent=2, allow_nan=False))
    (out / "report.md").write_text(render_report(results, plots))
