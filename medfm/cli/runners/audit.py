"""What ``medfm audit`` runs (its parser: :mod:`medfm.cli.commands.audit`)."""
from __future__ import annotations

from pathlib import Path
from medfm.errors import UsageError
from medfm.card import write_model_card
from medfm.evaluation.audit.model import audit_model
from medfm.trust import record_trust
from medfm.evaluation.audit.data import audit_manifest
from medfm.evaluation.audit.report import data_markdown, model_markdown, write_record


def _pairs(values, what: str):
    out = {}
    for v in values or ():
        col, sep, adapter = v.partition("=")
        if not sep or not col or not adapter:
            raise UsageError(f"{what} expects COLUMN=ADAPTER, got {v!r}")
        out[col] = adapter
    return out or None


def _numbers(text: str, what: str):
    try:
        vals = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} expects comma-separated numbers, got {text!r}") from None
    if any(v < 0 for v in vals):
        raise UsageError(f"{what}: budgets must be >= 0")
    return vals


def run_model(args) -> int:
    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    rec = audit_model(args.model, args.manifest, modalities=args.modality, text_column=args.text_column,
                      label_column=args.label_column, prompts=args.prompts, checks=checks,
                      image_budgets=[int(v) if float(v).is_integer() else v for v in _numbers(args.image_eps, "--image-eps")],
                      ecg_budgets_uv=_numbers(args.ecg_uv, "--ecg-uv"), pgd_steps=args.pgd_steps,
                      scan_steps=args.scan_steps, max_rows=args.max_rows, max_targets=args.max_targets,
                      scan_rows=args.scan_rows,
                      n_boot=args.n_boot, seed=args.seed)
    out = Path(args.out) if args.out else Path(args.model) / "trust"
    path = write_record(rec, out, "audit_model", model_markdown(rec))
    record_trust(args.model, "model", rec)
    card = write_model_card(args.model)
    parts = []
    if "membership" in rec and "auroc" in rec["membership"]:
        mem = rec["membership"]
        parts.append(f"membership AUROC {mem['auroc']:.3f} [{mem['ci'][0]:.3f}, {mem['ci'][1]:.3f}]"
                     + (" FLAGGED" if mem["flagged"] else ""))
    for r in (rec.get("robustness") or {}).get("rows", []):
        parts.append(f"{r['modality']} {r['metric']} {r['clean']:.3f} -> {r['attacked']:.3f} at {r['budget']}")
    if "backdoor" in rec:
        bd = rec["backdoor"]
        parts.append(f"backdoor suspicion {bd['suspicion']:.2f}" + (" FLAGGED" if bd["flagged"] else "")
                     + f" (target {bd['target_id']})")
    print(f"audit model in {rec['seconds']} s: " + "; ".join(parts) + f"; wrote {path} and {card}")
    return 0


def run_data(args) -> int:
    if args.template_min_patients < 2:
        raise UsageError("--template-min-patients must be at least 2")
    rec = audit_manifest(args.manifest, columns=_pairs(args.column, "--column"), label_columns=args.label_column,
                         site_columns=args.site_column, template_min_patients=args.template_min_patients,
                         progress=not args.no_progress)
    out = Path(args.out or f"audit_{Path(args.manifest).name.split('.')[0]}")
    path = write_record(rec, out, "audit_data", data_markdown(rec))
    if args.model_dir:
        record_trust(args.model_dir, "data", rec)
        write_model_card(args.model_dir)
    s = rec["summary"]
    print(f"audit data: {s['rows']} rows in {rec['seconds']} s; leakage pairs {s['n_leakage_pairs']}, patients in "
          f"several splits {s['n_patients_across_splits']}, duplicate clusters {s['n_duplicate_clusters']}, conflicts "
          f"{s['n_conflicts']}, PHI text hits {s['phi_text_hits']}, DICOM cells with PHI {s['phi_dicom_cells']}; "
          f"wrote {path} and {path.with_suffix('.md')}")
    if s["leakage_found"]:
        print(f"medfm: leakage across splits found ({s['n_leakage_pairs']} pairs, {s['n_patients_across_splits']} "
              f"patients)" + (" [--warn-only]" if args.warn_only else ""), flush=True)
        return 0 if args.warn_only else 1
    return 0
