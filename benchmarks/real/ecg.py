"""12-lead ECG block: 50 PhysioNet/CinC 2021 records from three sources, SNOMED-CT diagnoses.

Sources from the record-name prefix: ``E`` = Georgia, ``HR`` = PTB-XL, ``JS`` =
Chapman-Shaoxing (JS00001–JS10646) or Ningbo (JS10647 and above; these 20 records are all
in the Ningbo range — the CinC challenge ships both under ``JS``).

1. Every record goes through the ``ecg`` adapter (WFDB header + ``.mat``; canonical lead
   order, mV, resampling to 500 Hz, 0.5–40 Hz band-pass, 10 s): a per-record table of
   leads found/derived, duration, flat or non-finite leads and any reader error.
2. Leave-one-source-out: for each source, an ECG tower is pretrained on the *other two*
   sources only — CLIP between two random 5 s crops of each record (100 Hz, 0.25 s patches;
   chosen over the MAE on the training sources, see :func:`tune` and the README) — then every
   record is embedded (mean of its two 5 s halves); the random-weights encoder is the same
   tower at its seeded init. Checkpoints every ``mae_steps // curve_points`` steps give the
   learning curve.
3. Probe of the ``top_codes`` most frequent SNOMED codes: per code a logistic regression
   (standardised inputs, C = 1, balanced class weights — fixed a priori, nothing tuned)
   trained on two sources, scored on the held-out one. A fold whose training sources lack
   positives (or negatives) of a code cannot train and is left out for that code. The
   held-out predictions of all trainable folds are pooled into one AUROC per code, with a
   bootstrap 95% interval over records (n is tiny: read the intervals, not the points).
4. Baseline: simple features — heart rate from R peaks (``scipy.signal.find_peaks``), RR
   SD, a QRS-width proxy and per-lead mean/SD/peak-to-peak/skew/kurtosis.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pandas as pd

from . import TRUNK, Stopwatch, block_result, pretrain
from .baselines import ecg_features
from medfm.modalities.ecg_lead_sets import parse_lead_spec

from .efficiency import crossover_note, ecg_curve

#: lead subsets of the partial-input table (the other leads absent at evaluation)
LEAD_SETS = ("I", "I,II", "limb", "precordial")

SNOMED_NAMES = {
    "427084000": "sinus tachycardia", "284470004": "premature atrial contraction", "426783006": "sinus rhythm",
    "164934002": "T-wave abnormal", "698252002": "nonspecific intraventricular conduction disorder",
    "426177001": "sinus bradycardia", "59931005": "T-wave inversion", "55930002": "ST changes",
    "164889003": "atrial fibrillation", "39732003": "left axis deviation", "427393009": "sinus arrhythmia",
    "270492004": "1st degree AV block", "164873001": "left ventricular hypertrophy",
}
ECG_OPTIONS = {"fs": 500, "duration": 10.0, "patch_size": 50, "per_channel": False, "random_crop": True}
#: the pretrained tower's ECG options, chosen on the training sources only (README, :func:`tune`):
#: 100 Hz, 0.25 s patches, 5 s windows (two random crops of a record are the contrastive views)
MAE_OPTIONS = {**ECG_OPTIONS, "fs": 100, "patch_size": 25, "duration": 5.0}
#: objective weights of the shipped variant ("views5s" of :data:`ECG_VARIANTS`)
PRETRAIN = {"views": 1.0, "mae": 0.0}


def source_of(record: str) -> str:
    if record.startswith("HR"):
        return "PTB-XL"
    if record.startswith("JS"):
        return "Ningbo" if int(record[2:]) >= 10647 else "Chapman-Shaoxing"
    if record.startswith("E"):
        return "Georgia"
    return "unknown"


def read_records(data_dir: Path, max_per_source=None) -> pd.DataFrame:
    """One row per record: reading through the adapter, its problems, features and Dx codes.

    ``max_per_source`` keeps the first records (by name) of each source (quick runs).
    """
    import wfdb
    import medfm

    adapter = medfm.get_modality("ecg", **ECG_OPTIONS)
    rows: List[Dict[str, Any]] = []
    seen: Counter = Counter()
    for hea in sorted((Path(data_dir) / "ecg" / "cinc2021_12lead").glob("*.hea")):
        rec = hea.stem
        seen[source_of(rec)] += 1
        if max_per_source and seen[source_of(rec)] > int(max_per_source):
            continue
        row: Dict[str, Any] = {"record": rec, "source": source_of(rec), "path": str(hea), "problems": []}
        try:
            head = wfdb.rdheader(str(hea.with_suffix("")))
            dx = next((c.split(":", 1)[1] for c in head.comments or [] if c.strip().lower().startswith("dx")), "")
            row["dx"] = [d.strip() for d in dx.split(",") if d.strip()]
            row["native_fs"] = float(head.fs)
            r = adapter.read(str(hea))
            x = np.asarray(r.data)
            fs = float(r.meta["fs"])
            mask, derived = np.asarray(r.meta["lead_mask"]), np.asarray(r.meta["derived_mask"])
            row.update(n_samples=int(x.shape[1]), duration_s=round(x.shape[1] / fs, 2),
                       # flat leads are in the file but masked (and flagged) by the adapter
                       leads_found=int((mask & ~derived).sum()) + len(r.meta.get("flat_leads", [])),
                       leads_derived=int(derived.sum()),
                       ignored_channels=len(r.meta.get("ignored_channels", [])))
            flat = list(r.meta.get("flat_leads", [])) + [i for i in range(12) if mask[i] and np.nanstd(x[i]) < 1e-3]
            if flat:
                row["problems"].append(f"{len(flat)} flat lead(s)")
            if not np.isfinite(x).all():
                row["problems"].append("non-finite samples")
            if r.meta.get("units_assumed"):
                row["problems"].append("units assumed mV")
            if x.shape[1] / fs < ECG_OPTIONS["duration"]:
                row["problems"].append(f"shorter than {ECG_OPTIONS['duration']} s (padded)")
            item = adapter.preprocess(r, train=False)
            row["preprocessed_shape"] = "x".join(map(str, item["x"].shape))
            row["record_obj"] = r
            feats, summ = ecg_features(x, fs)
            row["features"] = feats
            row.update({k: round(v, 1) for k, v in summ.items()})
            row["ok"] = True
        except Exception as e:  # the table reports it; the record is left out of the probes
            row["problems"].append(f"{type(e).__name__}: {e}")
            row["ok"] = False
        rows.append(row)
    return pd.DataFrame(rows)


def probe_codes(X: np.ndarray, df: pd.DataFrame, codes: List[str], *, n_boot: int, seed: int) -> Dict[str, Any]:
    """Leave-one-source-out probes of each code on features ``X (N, F)``; pooled AUROC with CIs.

    ``X`` may be a dict ``{held-out source: (N, F)}`` when the representation depends on the fold.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from medfm.metrics import metrics_with_ci

    sources = sorted(df["source"].unique())
    Y = np.asarray([[int(c in dx) for c in codes] for dx in df["dx"]])
    scores = np.zeros(Y.shape, dtype=np.float64)
    y_eval = np.full(Y.shape, -1)
    folds: List[Dict[str, Any]] = []
    for held in sources:
        Xf = X[held] if isinstance(X, dict) else X
        te = (df["source"] == held).to_numpy()
        tr = ~te
        for j, code in enumerate(codes):
            ytr = Y[tr, j]
            entry = {"held_out": held, "code": code, "n_train_pos": int(ytr.sum()), "n_test_pos": int(Y[te, j].sum()),
                     "n_test": int(te.sum())}
            if ytr.sum() < 2 or (1 - ytr).sum() < 2:
                entry["status"] = "not trainable (training sources lack positives or negatives)"
                folds.append(entry)
                continue
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000,
                                                                     random_state=seed))
            clf.fit(Xf[tr], ytr)
            scores[te, j] = clf.predict_proba(Xf[te])[:, 1]
            y_eval[te, j] = Y[te, j]
            yt = Y[te, j]
            entry["auroc"] = float(roc_auc_score(yt, scores[te, j])) if 0 < yt.sum() < yt.size else None
            entry["status"] = "ok" if entry["auroc"] is not None else "trained; test source has one class only"
            folds.append(entry)
    names = [SNOMED_NAMES.get(c, c) for c in codes]
    point, ci = metrics_with_ci(y_eval, scores, groups=df["record"].tolist(), class_names=names, n_boot=n_boot, seed=seed)
    out: Dict[str, Any] = {"folds": folds}
    for name in names:
        out[f"auroc/{name}"] = {"value": point.get(f"auroc/{name}"), "ci": list(ci.get(f"auroc/{name}", (np.nan, np.nan))),
                                "n": int((y_eval[:, names.index(name)] >= 0).sum())}
    out["macro_auroc"] = {"value": point.get("macro_auroc"), "ci": list(ci.get("macro_auroc", (np.nan, np.nan))),
                          "n": int((y_eval >= 0).any(1).sum())}
    out["_scores"], out["_y"] = scores, y_eval
    return out


def encode_items(model, items: List[Dict[str, Any]], batch_size: int = 16) -> np.ndarray:
    """Embed already preprocessed ECG items ``[{"x": (12, T)}]`` → ``(N, D)`` (no re-reading)."""
    from medfm.evaluation.embed import encode_batch_items

    return np.concatenate([encode_batch_items(model, "ecg", items[s:s + batch_size])
                           for s in range(0, len(items), batch_size)])


def mae_config(budget: Dict[str, Any], seed: int, ecg_options: Dict[str, Any], *, lr: float = None,
               mask_ratio: float = None, steps: int = None, views: float = 0.0, mae: float = 1.0) -> Dict[str, Any]:
    """Run config of one fold's ECG pretraining (one thread: a tiny model on a shared CPU; see README).

    ``mae``: weight of the MAE loss. ``views`` > 0 adds, with that weight, CLIP between two
    random crops of the same record (``ecg`` and ``ecg_view``, a second ECG tower; CLOCS-style
    record-level positives): what stays the same along a record — rhythm, rate, morphology.
    """
    steps = int(steps or budget["mae_steps"])
    mask_ratio = float(mask_ratio if mask_ratio is not None else ecg_options.get("mask_ratio", 0.75))
    mods = {"ecg": {k: v for k, v in ecg_options.items() if k != "mask_ratio"}}  # the ratio is the objective's
    objectives = [{"name": "masked", "weight": float(mae), "mask_ratio": mask_ratio, "modalities": ["ecg"]}] if mae else []
    if views:
        mods["ecg_view"] = {**mods["ecg"], "adapter": "ecg"}
        objectives.append({"name": "clip", "weight": float(views), "modalities": ["ecg", "ecg_view"]})
    return {"model": {**TRUNK, "modalities": mods},
            "data": {"split": "train", "columns": {m: "ecg" for m in mods}, "batch_size": int(budget["batch_size"])},
            "objectives": objectives,
            "optim": {"lr": float(lr or budget.get("lr", 1e-3)), "weight_decay": 0.05,
                      "warmup_steps": max(1, steps // 10)},
            "train": {"max_steps": steps, "seed": seed, "num_threads": 1}}


def fold_embeddings(ok: pd.DataFrame, budget: Dict[str, Any], seed: int, out_dir: Path, ecg_options: Dict[str, Any],
                    sw: Stopwatch = None, curve_points: int = 0,
                    **cfg_kw) -> Tuple[Dict[str, np.ndarray], np.ndarray, Dict[str, Any]]:
    """Per held-out source: a tower pretrained on the other two sources embeds every record.

    ``curve_points`` > 0 also embeds with checkpoints kept every ``steps // curve_points``
    steps, into ``infos["curve"] = {step: {held-out source: (N, D)}}`` (a learning curve
    from the one run; these are points of one cosine schedule, not separately budgeted runs).

    Returns ``({held-out source: (N, D)}, random-weights embeddings (N, D), training infos)``.
    """
    import torch
    import medfm

    sw = sw or Stopwatch()
    adapter = medfm.get_modality("ecg", **ecg_options)
    with sw("preprocess"):
        # a window shorter than the records: embed consecutive windows and average the embeddings
        n_win = max(1, int(round(10.0 / float(adapter.options["duration"]))))
        windows = []
        for w in range(n_win):
            wins = []
            for r in ok["record_obj"]:
                start = int(round(w * float(adapter.options["duration"]) * float(r.meta["fs"])))
                wins.append({"x": adapter.preprocess(type(r)(r.data[:, start:], r.meta), train=False)["x"]})
            windows.append(wins)

    def encode_all(m, keep=None):
        """Mean over windows; ``keep (12,)``: the other leads absent (zeroed, as the adapter leaves them)."""
        wins = windows if keep is None else [[{"x": it["x"] * torch.as_tensor(keep, dtype=it["x"].dtype)[:, None]}
                                              for it in items] for items in windows]
        return np.mean([encode_items(m, items) for items in wins], axis=0)

    manifest = pd.DataFrame({"id": ok["record"], "patient_id": ok["record"], "split": "train", "ecg": ok["path"],
                             "source": ok["source"]})
    emb: Dict[str, np.ndarray] = {}
    emb_rand, infos = None, {}
    curve: Dict[int, Dict[str, np.ndarray]] = {}
    steps = int(cfg_kw.get("steps") or budget["mae_steps"])
    every = steps // curve_points if curve_points else 0
    threads = torch.get_num_threads()
    try:
        # The MAE of each fold sees the ECGs of the two training sources only (no labels, no test source).
        for held in sorted(ok["source"].unique()):
            with sw("pretrain"):
                model, init, info = pretrain(mae_config(budget, seed, ecg_options, **cfg_kw),
                                             manifest[manifest["source"] != held], out_dir / f"pretrain_without_{held}",
                                             checkpoint_every=every)
            infos[f"pretrain_without_{held}"] = info
            if info["n_skipped"]:
                raise RuntimeError(f"pretraining without {held}: {info['n_skipped']} training samples could not be read")
            with sw("embed"), torch.no_grad():
                emb[held] = encode_all(model)
                for spec in LEAD_SETS:  # partial inputs: the same tower, only these leads present
                    infos.setdefault("_leads", {}).setdefault(spec, {})[held] = encode_all(model, parse_lead_spec(spec))
                if emb_rand is None:
                    emb_rand = encode_all(init)
                if every:
                    from medfm.models import MultiModalModel

                    ckpts = sorted((out_dir / f"pretrain_without_{held}" / "run" / "checkpoints").glob("step_*"))
                    for ck in ckpts:
                        step = int(ck.name.split("_")[1])
                        if step < steps:
                            curve.setdefault(step, {})[held] = encode_all(MultiModalModel.from_pretrained(ck).eval())
                    curve.setdefault(steps, {})[held] = emb[held]
    finally:
        torch.set_num_threads(threads)
    if curve:
        infos["curve"] = {k: v for k, v in sorted(curve.items()) if len(v) == len(emb)}
    return emb, emb_rand, infos


def run(data_dir: Path, out_dir: Path, budget: Dict[str, Any], seed: int = 0) -> Dict[str, Any]:
    out_dir = Path(out_dir)
    sw = Stopwatch()
    res = block_result(budget=dict(budget))
    nb = int(budget["n_boot"])
    with sw("read"):
        table = read_records(data_dir, budget.get("max_per_source"))
    cols = ["record", "source", "native_fs", "n_samples", "duration_s", "leads_found", "leads_derived",
            "ignored_channels", "preprocessed_shape", "heart_rate_bpm", "qrs_width_ms", "dx", "problems"]
    res["tables"]["records"] = table[[c for c in cols if c in table.columns]].assign(
        dx=lambda d: d["dx"].map(lambda v: " ".join(v) if isinstance(v, list) else ""),
        problems=lambda d: d["problems"].map(lambda v: "; ".join(v) if v else "none")).to_dict("records")
    ok = table[table["ok"]].reset_index(drop=True)
    res["metrics"]["records_read"] = {"value": int(len(ok)), "n": int(len(table))}
    counts = Counter(c for dx in ok["dx"] for c in dx)
    codes = [c for c, _ in counts.most_common(int(budget["top_codes"]))]
    res["tables"]["codes"] = [{"code": c, "name": SNOMED_NAMES.get(c, ""), "n": counts[c],
                               **{s: int(sum(c in dx for dx in ok.loc[ok["source"] == s, "dx"]))
                                  for s in sorted(ok["source"].unique())}} for c in codes]
    with sw("features_probe"):
        feats = np.stack(ok["features"].to_list())
        base = probe_codes(feats, ok, codes, n_boot=nb, seed=seed)
    res["baselines"] += ["simple_features", "random"]
    emb_mae, emb_rand, res["training"] = fold_embeddings(ok, budget, seed, out_dir, MAE_OPTIONS, sw,
                                                         curve_points=int(budget.get("curve_points", 0)), **PRETRAIN)
    curve = res["training"].pop("curve", {})
    lead_emb = res["training"].pop("_leads", {})
    with sw("probes"):
        mae = probe_codes(emb_mae, ok, codes, n_boot=nb, seed=seed)
        rnd = probe_codes(emb_rand, ok, codes, n_boot=nb, seed=seed)
    with sw("label_efficiency"):  # the task API's curve on the most frequent code, leave-one-source-out
        try:
            curve = ecg_curve(emb_mae, emb_rand, feats, ok, codes[0], out_dir, seeds=int(budget.get("curve_seeds", 5)))
            res["label_efficiency"], res["tables"]["label_efficiency"] = curve, curve["table"]
            res["plots"].append(out_dir / curve["plot"])
            res["notes"] += crossover_note(f"ECG {SNOMED_NAMES.get(codes[0], codes[0])}", curve)
        except ValueError as e:  # too few records of a class in a quick run: say so, keep the block
            res["notes"].append(f"label-efficiency curve not computed: {e}")
    with sw("partial_leads"):  # one row per lead subset: the pretrained tower's pooled macro AUROC
        rows = [("all 12", mae)] + [(spec, probe_codes(e, ok, codes, n_boot=nb, seed=seed)) for spec, e in lead_emb.items()]
        res["tables"]["partial_leads"] = [{"leads": spec, "macro_auroc": r["macro_auroc"]["value"],
                                           "ci_low": r["macro_auroc"]["ci"][0], "ci_high": r["macro_auroc"]["ci"][1]}
                                          for spec, r in rows]
        for spec, r in rows[1:]:
            res["metrics"][f"pretrained_leads_{spec}/macro_auroc"] = r["macro_auroc"]
    from . import verdict
    for rep, r in (("pretrained", mae), ("random", rnd), ("simple_features", base)):
        for k, v in r.items():
            if not k.startswith("_") and k != "folds":
                res["metrics"][f"{rep}/{k}"] = v
        res["tables"][f"folds_{rep}"] = r["folds"]
    for k in [k for k in mae if k.startswith("auroc/") or k == "macro_auroc"]:
        for bname, b in (("simple_features", base), ("random", rnd)):
            res["comparisons"].append({"task": f"ecg {k}", "ours": "pretrained", "baseline": bname,
                                       "ours_value": mae[k]["value"], "baseline_value": b[k]["value"],
                                       "verdict": verdict(mae[k], b[k])})
    if curve:
        try:
            with sw("learning_curve"):
                res["learning_curve"] = learning_curve(curve, rnd, ok, codes, res["training"], seed=seed,
                                                       n_boot=min(nb, 200))
                res["learning_curve"]["baselines"] = {
                    "random weights": {k: rnd["macro_auroc"][k] for k in ("value", "ci")},
                    "simple features": {k: base["macro_auroc"][k] for k in ("value", "ci")}}
            res["plots"].append(plot_curve(res["learning_curve"], out_dir / "ecg_learning_curve.png"))
            res["tables"]["learning_curve"] = [{"step": p["step"], "minutes": p["minutes"], "macro_auroc": p["value"],
                                                "ci_low": p["ci"][0], "ci_high": p["ci"][1]}
                                               for p in res["learning_curve"]["points"]]
        except Exception as e:  # the curve is extra: report why it is missing, keep the block's numbers
            res["notes"].append(f"learning curve failed: {type(e).__name__}: {e}")
    res["codes"] = codes
    res["_roc"] = {"y": mae["_y"], "pretrained": mae["_scores"], "simple_features": base["_scores"],
                   "names": [SNOMED_NAMES.get(c, c) for c in codes]}
    res["timing_s"] = sw.times
    return res


def learning_curve(curve: Dict[int, Dict[str, np.ndarray]], rnd: Dict[str, Any], ok: pd.DataFrame, codes: List[str],
                   infos: Dict[str, Any], *, seed: int, n_boot: int) -> Dict[str, Any]:
    """Macro AUROC (95% CI) at each kept step vs training minutes, and a log-linear extrapolation.

    Minutes are the mean training seconds of the folds scaled by the step fraction. The
    extrapolation fits ``AUROC = a + b·ln(minutes)`` to the points and says at how many
    minutes the point estimate would pass the random-weights interval's upper end, if ever
    below 1 — a trend, not a promise: n = 50 records, one seed.
    """
    steps_total = max(curve)
    secs = float(np.mean([v["seconds"] for v in infos.values() if isinstance(v, dict) and "seconds" in v]))
    points = [{"step": 0, "minutes": 0.0, **{k: rnd["macro_auroc"][k] for k in ("value", "ci")}}]
    for step, X in curve.items():
        r = probe_codes(X, ok, codes, n_boot=n_boot, seed=seed)["macro_auroc"]
        points.append({"step": int(step), "minutes": round(secs / 60 * step / steps_total, 3),
                       "value": r["value"], "ci": r["ci"]})
    out: Dict[str, Any] = {"points": points, "random_ci_high": rnd["macro_auroc"]["ci"][1],
                           "note": "checkpoints of one cosine schedule per fold (not separately budgeted runs)"}
    xs = np.array([p["minutes"] for p in points[1:]])
    ys = np.array([p["value"] for p in points[1:]], dtype=float)
    if len(xs) >= 2 and np.all(xs > 0) and np.all(np.isfinite(ys)):
        b, a = np.polyfit(np.log(xs), ys, 1)
        target = out["random_ci_high"]
        out["fit"] = {"intercept": float(a), "slope_per_ln_minute": float(b)}
        if b > 0 and target is not None and np.isfinite(target):
            out["minutes_to_pass_random_upper_ci"] = float(np.exp((target - a) / b))
    return out


def plot_curve(lc: Dict[str, Any], path: Path) -> Path:
    from .suite_report import plt

    pts = lc["points"]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    x = [p["minutes"] for p in pts]
    y = [p["value"] for p in pts]
    lo = [p["value"] - p["ci"][0] for p in pts]
    hi = [p["ci"][1] - p["value"] for p in pts]
    ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label="pretrained (held-out sources pooled)")
    for (label, b), c in zip(lc.get("baselines", {}).items(), ("tab:grey", "tab:green")):
        ax.axhline(b["value"], color=c, ls="--", lw=1, label=f"{label} (band: 95% CI)")
        if b.get("ci") and np.isfinite(b["ci"]).all():
            ax.axhspan(b["ci"][0], b["ci"][1], color=c, alpha=0.12)
    if not lc.get("baselines"):
        ax.axhline(lc["random_ci_high"], color="grey", ls="--", lw=1, label="random weights, upper 95% CI")
    ax.set(xlabel="training minutes per fold (this CPU)", ylabel="macro AUROC", ylim=(0.3, 1.0),
           title="ECG: leave-one-source-out macro AUROC vs training time")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------- tuning
#: variants of :func:`tune`: ECG options over :data:`ECG_OPTIONS` and config keywords
ECG_VARIANTS: Dict[str, Dict[str, Any]] = {
    "base": {"opts": {}, "cfg": {}},                                          # 500 Hz, 50-sample patches, 30 steps
    "steps150": {"opts": {}, "cfg": {"steps": 150}},
    "fs100_p25": {"opts": {"fs": 100, "patch_size": 25}, "cfg": {"steps": 150}},
    "fs100_p50_perlead": {"opts": {"fs": 100, "patch_size": 50, "per_channel": True}, "cfg": {"steps": 150}},
    "fs100_p25_mask50": {"opts": {"fs": 100, "patch_size": 25}, "cfg": {"steps": 150, "mask_ratio": 0.5}},
    "fs100_p25_mv": {"opts": {"fs": 100, "patch_size": 25, "normalize": "none"}, "cfg": {"steps": 150}},
    "fs100_p25_cls": {"opts": {"fs": 100, "patch_size": 25, "pool": "cls"}, "cfg": {"steps": 150}},
    "fs100_p25_600": {"opts": {"fs": 100, "patch_size": 25}, "cfg": {"steps": 600}},
    "views5s": {"opts": {"fs": 100, "patch_size": 25, "duration": 5.0}, "cfg": {"steps": 150, "views": 1.0, "mae": 0.0}},
    "views5s_mae": {"opts": {"fs": 100, "patch_size": 25, "duration": 5.0}, "cfg": {"steps": 150, "views": 1.0, "mae": 0.5}},
}


def tune(data_dir: Path, out: Path, only=()) -> None:
    """Validation-only comparison of ECG variants (see :mod:`benchmarks.real.tune`).

    Score: macro AUROC of the probes trained on one *training* source and scored on the
    other, pooled over the three folds — the held-out source of a fold is never scored.
    """
    import json
    import time
    from . import BUDGETS

    budget = BUDGETS["full"]["ecg"]
    ok = read_records(data_dir)
    ok = ok[ok["ok"]].reset_index(drop=True)
    counts = Counter(c for dx in ok["dx"] for c in dx)
    codes = [c for c, _ in counts.most_common(int(budget["top_codes"]))]
    for name, v in ECG_VARIANTS.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        emb, rand, infos = fold_embeddings(ok, budget, 0, out / f"ecg_{name}", {**ECG_OPTIONS, **v["opts"]}, **v["cfg"])
        scores, ys = [], []
        row = {"variant": name, "seconds": round(time.perf_counter() - t0, 1)}
        for label, E in (("mae", emb), ("random", {h: rand for h in emb})):
            val_scores, val_y = [], []
            for held, X in E.items():
                inner = (ok["source"] != held).to_numpy()
                r = probe_codes(X[inner], ok[inner].reset_index(drop=True), codes, n_boot=0, seed=0)
                val_scores.append(r["_scores"])
                val_y.append(r["_y"])
            from medfm.metrics import metrics_with_ci
            names = [SNOMED_NAMES.get(c, c) for c in codes]
            point, _ = metrics_with_ci(np.concatenate(val_y), np.concatenate(val_scores), groups=None,
                                       class_names=names, n_boot=0, seed=0)
            row[f"val_macro_auroc_{label}"] = point.get("macro_auroc")
        row["loss_first_last"] = [[round(i["loss_first"], 3), round(i["loss_last"], 3)] for i in infos.values()]
        print(json.dumps(row), flush=True)
        with open(out / "tune_ecg.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
