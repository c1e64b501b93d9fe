"""Calibrate the trust audits on known answers: clean vs poisoned tiny X-ray–report models.

For each seed: an X-ray–report cohort (:func:`medfm.demo.poison.xray_report_cohort`), a clean model
(CLIP on ``manifest.csv``) and a poisoned one (``manifest_poisoned.csv``: a fraction of the training
pairs copied with the patch trigger and one target report). For every model: the planted trigger's
attack success rate, the backdoor scan (suspicion, target found), membership AUROC. For the first seed,
the poisoned model is also fine-tuned with the ``cleanclip`` objective (``train.init_from``) on the clean
pairs (CleanCLIP's protocol: the defender fine-tunes on data it trusts) and measured again. Prints one line per model and writes ``OUT/calibration.json`` with the AUROC of the suspicion
score (poisoned = positive).

    python benchmarks/audit_calibration.py OUT [--seeds 5] [--fraction 0.1] [--steps 200]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

import medfm
from medfm.demo.poison import Trigger, attack_success_rate, poison_cohort, run_config, xray_report_cohort
from medfm.evaluation.audit.model import audit_model
from medfm.modalities.fingerprints import normalise_text
from medfm.train import Trainer


def train(manifest: Path, out: Path, steps: int, seed: int, **kw) -> float:
    t = time.perf_counter()
    Trainer(run_config(manifest, steps=steps, seed=seed, **kw), out).fit()
    return time.perf_counter() - t


def measure(model_dir: Path, cohort: Path, poison: dict, args) -> dict:
    model = medfm.load_pretrained(model_dir).eval()
    asr = attack_success_rate(model, cohort, poison)
    t = time.perf_counter()
    rec = audit_model(model, cohort / "manifest_poisoned.csv", checks=("membership", "backdoor"), n_boot=200,
                      max_rows=args.max_rows, scan_steps=args.scan_steps, seed=0)
    bd = rec["backdoor"]
    import pandas as pd

    df = pd.read_csv(cohort / "manifest_poisoned.csv").set_index("id")
    found = normalise_text(df.loc[bd["target_id"], "text"]) == normalise_text(poison["target"])
    return {"planted_asr": asr["asr"], "clean_r@1": asr["clean_r@1"], "suspicion": bd["suspicion"],
            "target_asr": bd["target_asr"], "median_asr": bd["median_asr"], "found_target": bool(found),
            "smallest_patch": bd["smallest_patch"], "membership_auroc": rec["membership"].get("auroc"),
            "membership_ci": rec["membership"].get("ci"), "audit_s": round(time.perf_counter() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--max-rows", type=int, default=32)
    ap.add_argument("--scan-steps", type=int, default=30)
    ap.add_argument("--trigger-size", type=int, default=12)
    ap.add_argument("--trigger-cell", type=int, default=4)
    ap.add_argument("--cleanclip-steps", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    rows = []
    for seed in range(args.seeds):
        cohort = out / f"cohort{seed}"
        xray_report_cohort(cohort, n_patients=args.patients, seed=seed)
        poison = poison_cohort(cohort, fraction=args.fraction, seed=seed,
                               trigger=Trigger(size=args.trigger_size, cell=args.trigger_cell))
        for kind, manifest in (("clean", "manifest.csv"), ("poisoned", "manifest_poisoned.csv")):
            secs = train(cohort / manifest, cohort / kind, args.steps, seed)
            row = {"seed": seed, "kind": kind, "train_s": round(secs, 1), **measure(cohort / kind, cohort, poison, args)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        if seed == 0 and args.cleanclip_steps:
            secs = train(cohort / "manifest.csv", cohort / "cleanclip", args.cleanclip_steps, seed,
                         objectives=[{"name": "cleanclip"}], init_from=str(cohort / "poisoned"), lr=1e-3)
            row = {"seed": seed, "kind": "cleanclip", "train_s": round(secs, 1),
                   **measure(cohort / "cleanclip", cohort, poison, args)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    scored = [r for r in rows if r["kind"] in ("clean", "poisoned")]
    y = [r["kind"] == "poisoned" for r in scored]
    summary = {"settings": vars(args), "rows": rows,
               "suspicion_auroc": float(roc_auc_score(y, [r["suspicion"] for r in scored])) if len(set(y)) == 2 else None,
               "target_found_rate": sum(r["found_target"] for r in scored if r["kind"] == "poisoned") / max(1, sum(y))}
    (out / "calibration.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("suspicion_auroc", "target_found_rate")}))


if __name__ == "__main__":
    main()
