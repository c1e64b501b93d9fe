"""``results.json`` + ``report.md`` (+ PNG plots) of the real-data suite.

The JSON holds every block's full record (metrics as ``{"value", "ci": [lo, hi], "n"}``,
tables, training logs, budgets, timings); the Markdown shows a headline table with each
learned model against its block's named baseline (ratio = ours / baseline) and the
random-weights encoder, the plain list of wins and losses, and a section per block.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: headline rows: (block, metric suffix, ours, named baseline)
HEADLINE: List[Tuple[str, str, str, str]] = [
    ("dna", "1nn_species_acc_seen", "ssl", "kmer6"),
    ("dna", "1nn_genus_acc_unseen", "ssl", "kmer6"),
    ("dna", "probe_species_acc_seen", "ssl", "kmer4"),
    ("dna", "bioscan_seen_species_micro", "ssl", "kmer6"),
    ("dna", "bioscan_seen_species_macro", "ssl", "kmer6"),
    ("dna", "bioscan_unseen_genus_micro", "ssl", "kmer6"),
    ("dna", "bioscan_unseen_genus_macro", "ssl", "kmer6"),
    ("dna", "bioscan_unseen_family_micro", "ssl", "kmer6"),
    ("dna", "bioscan_unseen_order_micro", "ssl", "kmer6"),
    ("dna", "zeroshot_genus_acc_unseen_species", "clibd", ""),
    ("dna", "zeroshot_genus_acc_unseen_species_genus_in_train", "clibd", ""),
    ("dna", "zeroshot_genus_acc_seen_test", "clibd", ""),
    ("ecg", "macro_auroc", "pretrained", "simple_features"),
    ("reports", "findings_to_impression_R@1", "clip", "tfidf"),
    ("reports", "findings_to_impression_R@5", "clip", "tfidf"),
    ("reports", "findings_to_impression_R@10", "clip", "tfidf"),
]


def fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.{nd}f}"
    return str(v)


def fmt_ci(m: Optional[Mapping[str, Any]]) -> str:
    if not m:
        return "n/a"
    ci = m.get("ci")
    if ci and all(c is not None and math.isfinite(c) for c in ci):
        return f"{fmt(m.get('value'))} [{fmt(ci[0])}, {fmt(ci[1])}]"
    return fmt(m.get("value"))


def headline_rows(blocks: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Rows of the headline table: metric, ours (CI), named baseline, ratio, random weights, verdict."""
    from . import verdict

    rows = []
    ecg_codes = []
    if "ecg" in blocks and "metrics" in blocks["ecg"]:
        ecg_codes = [k.split("/", 1)[1] for k in blocks["ecg"]["metrics"] if k.startswith("pretrained/auroc/")]
    extra = [("ecg", c, "pretrained", "simple_features") for c in ecg_codes]
    for block, metric, ours, base in HEADLINE[:13] + extra + HEADLINE[13:]:
        m = (blocks.get(block) or {}).get("metrics") or {}
        o = m.get(f"{ours}/{metric}")
        if o is None:
            continue
        b = m.get(f"{base}/{metric}") if base else None
        r = m.get(f"random/{metric}")
        ratio = (o["value"] / b["value"]) if (b and o.get("value") is not None and b.get("value")
                                              and b["value"] != 0) else None
        if b is None and not base:  # zero-shot: against chance (1 / number of genera)
            chance = (blocks[block].get("zeroshot") or {}).get("chance")
            b = {"value": chance} if chance else None
            lo = (o.get("ci") or [None])[0]
            v = ("above chance" if lo is not None and chance and lo > chance else "not above chance") if b else ""
            ratio = o["value"] / chance if chance and o.get("value") is not None else None
        else:
            v = verdict(o, b) if b else ""
        rows.append({"block": block, "metric": metric, "model": ours, "value": o, "baseline": base or "chance",
                     "baseline_value": b, "ratio": ratio, "random": r, "verdict": v,
                     "verdict_random": verdict(o, r) if r else ""})
    return rows


def table_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """Plain-text table for the terminal."""
    head = f"{'block':8} {'metric':48} {'model':6} {'value [95% CI]':26} {'baseline':16} {'base value':26} {'ratio':>6}  {'random':26} verdict"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['block']:8} {r['metric'][:48]:48} {r['model']:6} {fmt_ci(r['value']):26} {r['baseline']:16} "
                     f"{fmt_ci(r['baseline_value']):26} {fmt(r['ratio'], 2):>6}  {fmt_ci(r['random']):26} {r['verdict']}")
    return "\n".join(lines)


def bar_ci(groups: Mapping[str, Mapping[str, Mapping[str, Any]]], path: Path, title: str, ylabel: str) -> Optional[Path]:
    """Grouped bars: ``{metric: {representation: {"value", "ci"}}}`` with 95% CI whiskers."""
    metrics = [m for m in groups if groups[m]]
    if not metrics:
        return None
    reps = sorted({r for m in metrics for r in groups[m]}, key=lambda r: list(groups[metrics[0]]).index(r)
                  if r in groups[metrics[0]] else 99)
    width = 0.8 / max(1, len(reps))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(metrics) + 2), 4))
    for i, rep in enumerate(reps):
        vals, lo, hi = [], [], []
        for m in metrics:
            v = groups[m].get(rep, {})
            val = v.get("value")
            val = float(val) if val is not None and math.isfinite(val) else np.nan
            ci = v.get("ci") or [np.nan, np.nan]
            vals.append(val)
            lo.append(val - ci[0] if ci[0] is not None and math.isfinite(ci[0]) else 0)
            hi.append(ci[1] - val if ci[1] is not None and math.isfinite(ci[1]) else 0)
        x = np.arange(len(metrics)) + (i - (len(reps) - 1) / 2) * width
        ax.bar(x, vals, width, yerr=[np.maximum(lo, 0), np.maximum(hi, 0)], capsize=2, label=rep)
    ax.set_xticks(np.arange(len(metrics)), [m.replace("_", " ") for m in metrics], rotation=20, ha="right", fontsize=7)
    ax.set(ylabel=ylabel, title=title, ylim=(0, 1.05))
    ax.legend(fontsize=7, ncol=min(6, len(reps)))
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
    return path


def loss_plot(curves: Mapping[str, Sequence[float]], path: Path) -> Optional[Path]:
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, c in curves.items():
        ax.plot(np.arange(1, len(c) + 1), c, label=name, lw=1)
    ax.set(xlabel="step", ylabel="training loss", title="pretraining loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
    return path


def curve_plot(rows: Sequence[Mapping[str, Any]], baselines: Mapping[str, Mapping[str, Mapping[str, Any]]],
               path: Path, title: str = "DNA: learning curve") -> Optional[Path]:
    """Metric vs training minutes (with CI bars) from a ``learning_curve`` table, one panel per metric.

    ``baselines``: ``{metric: {label: {"value", "ci"}}}`` drawn as horizontal lines with their
    95% intervals as bands (e.g. k-mer 6 cosine and the random-weights tower).
    """
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [k for k in rows[0] if k not in ("step", "minutes") and not k.endswith("_ci")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4), squeeze=False)
    x = [r["minutes"] for r in rows]
    colors = ("tab:red", "tab:grey", "tab:green")
    for ax, mname in zip(axes[0], metrics):
        y = [r.get(mname, float("nan")) for r in rows]
        err = [[v - r[mname + "_ci"][0] for v, r in zip(y, rows)], [r[mname + "_ci"][1] - v for v, r in zip(y, rows)]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label="trained")
        for (label, b), c in zip(baselines.get(mname, {}).items(), colors):
            ax.axhline(b["value"], ls="--", lw=0.9, color=c, label=label)
            lo, hi = (b.get("ci") or [None, None])[:2]
            if lo is not None and hi is not None and np.isfinite([lo, hi]).all():
                ax.axhspan(lo, hi, color=c, alpha=0.12)
        ax.set_xlabel("training minutes (this CPU)")
        ax.set_title(mname, fontsize=8)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("accuracy")
    fig.suptitle(title + " (bands: 95% CI)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def block_plots(name: str, rec: Dict[str, Any], out: Path) -> List[Path]:
    """Plots of one block (bars with CIs, loss curves, ROC), written into ``out``."""
    from medfm.evaluation.report import plot_roc

    m = rec.get("metrics", {})
    plots: List[Path] = []

    def group(metrics: Sequence[str], reps: Sequence[str]) -> Dict[str, Dict[str, Any]]:
        return {mm: {r: m[f"{r}/{mm}"] for r in reps if f"{r}/{mm}" in m} for mm in metrics}

    if name == "dna":
        plots.append(bar_ci(group(["1nn_species_acc_seen", "probe_species_acc_seen", "1nn_genus_acc_unseen",
                                   "bioscan_unseen_genus_micro", "bioscan_unseen_family_micro",
                                   "bioscan_unseen_order_micro"], ["ssl", "clibd", "random", "kmer4", "kmer5", "kmer6"]),
                            out / "dna_accuracy.png", "DNA barcodes: frozen-embedding accuracy (95% CI)", "accuracy"))
        bands = {}
        for rep, label in (("kmer6", "k-mer 6"), ("random", "random weights")):
            for k, v in m.items():
                if k.startswith(rep + "/"):
                    bands.setdefault(k.split("/", 1)[1], {})[label] = v
        plots.append(curve_plot(rec.get("tables", {}).get("learning_curve") or [], bands,
                                out / "dna_learning_curve.png"))
        plots.append(bar_ci({k.split("/", 1)[1]: {"clibd": v} for k, v in m.items() if "/zeroshot_" in k},
                            out / "dna_zeroshot.png", "DNA → taxonomy text zero-shot genus accuracy", "accuracy"))
        plots.append(loss_plot({k: v.get("losses", []) for k, v in rec.get("training", {}).items()},
                               out / "dna_loss.png"))
    elif name == "ecg":
        codes = [k.split("/", 1)[1] for k in m if k.startswith("pretrained/auroc/")] + ["macro_auroc"]
        plots.append(bar_ci(group(codes, ["pretrained", "random", "simple_features"]), out / "ecg_auroc.png",
                            "ECG leave-one-source-out AUROC (pooled, 95% CI)", "AUROC"))
        roc = rec.get("_roc")
        if roc is not None:
            for rep in ("pretrained", "simple_features"):
                plots.append(plot_roc(roc["y"], roc[rep], roc["names"], out / f"ecg_roc_{rep}.png",
                                      title=f"ECG ROC ({rep}, held-out sources pooled)"))
        plots.append(loss_plot({k: v.get("losses", []) for k, v in rec.get("training", {}).items()},
                               out / "ecg_loss.png"))
    elif name == "reports":
        plots.append(bar_ci(group([f"findings_to_impression_R@{k}" for k in (1, 5, 10)], ["clip", "random", "tfidf"]),
                            out / "reports_recall.png", "Findings → impression retrieval (95% CI)", "recall"))
        plots.append(loss_plot({k: v.get("losses", []) for k, v in rec.get("training", {}).items()
                                if isinstance(v, dict)}, out / "reports_loss.png"))
    return [p for p in plots if p is not None]


def _md_table(rows: Sequence[Mapping[str, Any]], limit: int = 60) -> List[str]:
    if not rows:
        return []
    cols = list(rows[0].keys())
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows[:limit]:
        out.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    if len(rows) > limit:
        out.append(f"| … {len(rows) - limit} more rows in results.json |" + " |" * (len(cols) - 1))
    return out


def render(results: Mapping[str, Any], plots: Mapping[str, Sequence[Path]]) -> str:
    """The Markdown report."""
    blocks = results["blocks"]
    rows = headline_rows(blocks)
    L = ["# medfm real-data benchmark", "",
         f"- command: `{results['command']}`", f"- mode: **{results['mode']}**, seed {results['seed']}",
         f"- started {results['started']}, wall time {results['wall_s']:.0f} s on {results['environment']['cpu']}",
         f"- environment: {json.dumps(results['environment'])}", "",
         "## Budgets (fixed before the run, nothing tuned on a test split)", "", "```",
         json.dumps(results["budgets"], indent=1), "```", "",
         "## Headline: learned model vs named baseline and random weights", "",
         "Values are point estimates with percentile-bootstrap 95% intervals. *wins*/*loses* = the two 95% "
         "intervals are disjoint; otherwise a tie. Ratio = model / baseline.", "",
         "| block | metric | model | value [95% CI] | baseline | baseline value | ratio | random weights | vs baseline | vs random |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['block']} | {r['metric']} | {r['model']} | {fmt_ci(r['value'])} | {r['baseline']} | "
                 f"{fmt_ci(r['baseline_value'])} | {fmt(r['ratio'], 2)} | {fmt_ci(r['random'])} | {r['verdict']} | "
                 f"{r['verdict_random']} |")
    L += ["", "## Where the pretrained models win and where they lose", ""]
    for name, rec in blocks.items():
        for c in rec.get("comparisons", []):
            L.append(f"- {c['task']}: {c['ours']} {fmt(c['ours_value'])} vs {c['baseline']} "
                     f"{fmt(c['baseline_value'])} → **{c['verdict']}**")
    for name, rec in blocks.items():
        L += ["", f"## Block: {name}", ""]
        if "error" in rec:
            L += [f"**FAILED**: `{rec['error']}`", ""]
            continue
        doc = rec.get("doc")
        if doc:
            L += [doc.strip(), ""]
        L.append(f"- baselines computed: {', '.join(rec.get('baselines', []))}")
        L.append(f"- budget: `{json.dumps(rec.get('budget', {}))}`")
        L.append(f"- timing (s): `{json.dumps(rec.get('timing_s', {}))}`")
        for tname, t in (rec.get("training") or {}).items():
            if isinstance(t, dict):
                L.append(f"- training `{tname}`: {t.get('steps')} steps in {t.get('seconds')} s on "
                         f"{t.get('n_train_rows')} rows; loss {fmt(t.get('loss_first'))} → {fmt(t.get('loss_last'))}")
        for n in rec.get("notes", []):
            L.append(f"- note: {n}")
        if name == "imaging":
            ct = rec.get("ct", {})
            L += ["", "### CT: DICOM series vs NIfTI crop", ""]
            L += _md_table([{"file": k, **{kk: json.dumps(vv) if isinstance(vv, list) else vv for kk, vv in v.items()}}
                            for k, v in ct.get("files", {}).items()])
            L += ["", f"- overlap of world extents (mm, x/y/z): {ct.get('overlap_mm_xyz')}",
                  f"- cosine(series, NIfTI crop) = {fmt(ct.get('cosine_series_vs_nifti'), 4)}; "
                  f"cosine(series, same series written as NIfTI) = {fmt(ct.get('cosine_series_vs_series_as_nifti'), 4)}, "
                  f"max |ΔHU| = {fmt(ct.get('control_max_abs_hu_diff'))}",
                  f"- {ct.get('series_slice_note', '')}", f"- **why not ≥ 0.99**: {ct.get('explanation', '')}", ""]
            L += ["### OCT device files", ""]
            L += _md_table([{k: v for k, v in f.items() if k in ("file", "adapter", "status", "shape", "input",
                                                                  "embedding_norm", "error", "limitation")}
                            for f in rec.get("oct", {}).get("files", [])])
            L += ["", f"- reader versions: {rec.get('oct', {}).get('versions')}"]
        L += ["", "### Metrics", "", "| metric | value [95% CI] | n |", "|---|---|---|"]
        for k, v in rec.get("metrics", {}).items():
            L.append(f"| {k} | {fmt_ci(v)} | {v.get('n', '') if isinstance(v, dict) else ''} |")
        for tname, t in (rec.get("tables") or {}).items():
            if isinstance(t, list) and t and isinstance(t[0], dict):
                L += ["", f"### Table: {tname}", ""] + _md_table(t)
            elif t:
                L += ["", f"### {tname}", "", ", ".join(map(str, t))]
        for p in plots.get(name, []):
            L += ["", f"![{Path(p).stem}]({Path(p).name})"]
    return "\n".join(L) + "\n"


def write(out_dir: Path, results: Dict[str, Any]) -> Dict[str, Path]:
    """Write plots, ``results.json`` and ``report.md`` into ``out_dir``; returns their paths."""
    from medfm.evaluation.report import to_jsonable

    out_dir = Path(out_dir)
    plots: Dict[str, List[Path]] = {}
    for name, rec in results["blocks"].items():
        if "error" in rec:
            continue
        plots[name] = list(rec.get("plots", [])) + block_plots(name, rec, out_dir)
    clean = {**results, "blocks": {n: {k: v for k, v in r.items() if not k.startswith("_")}
                                   for n, r in results["blocks"].items()}}
    for n, r in clean["blocks"].items():
        r["plots"] = [Path(p).name for p in plots.get(n, [])]
        r.pop("doc", None)
    clean["headline"] = headline_rows(results["blocks"])
    (out_dir / "results.json").write_text(json.dumps(to_jsonable(clean), indent=1, allow_nan=False, default=str))
    # plots live next to the report: copy references as relative names
    for n, ps in plots.items():
        for p in ps:
            p = Path(p)
            if p.parent.resolve() != out_dir.resolve():
                target = out_dir / p.name
                target.write_bytes(p.read_bytes())
    (out_dir / "report.md").write_text(render(results, plots))
    return {"results": out_dir / "results.json", "report": out_dir / "report.md"}
