"""``medfm audit data MANIFEST`` and ``medfm audit model MODEL --manifest M``: trust audits."""
from __future__ import annotations

from pathlib import Path

from medfm.errors import UsageError


def _pairs(values, what: str):
    out = {}
    for v in values or ():
        col, sep, adapter = v.partition("=")
        if not sep or not col or not adapter:
            raise UsageError(f"{what} expects COLUMN=ADAPTER, got {v!r}")
        out[col] = adapter
    return out or None


def register(sub) -> None:
    p = sub.add_parser("audit", help="trust audits: a cohort before training (data), a trained model (model)",
                       description="Writes a JSON record and a Markdown summary; with --model-dir (data) or "
                                   "MODEL (model) the record also goes to MODEL/trust/ and the model card's "
                                   "Trust section is rewritten.")
    s = p.add_subparsers(dest="audit_command", metavar="WHAT")
    d = s.add_parser("data", help="duplicates, leakage across splits, conflicting labels, PHI, balance",
                     description="Exact duplicates (hash of the decoded sample) and near-duplicates (per-modality "
                                 "distance: average hash for images/volumes, correlation for ECGs, 12-mer identity "
                                 "for DNA, normalised text for reports); a pair across splits under two patient "
                                 "ids, or a patient in two splits, is leakage (exit code 1 unless --warn-only). "
                                 "PHI: names, record numbers, dates, phone numbers in free text; DICOM PS3.15 "
                                 "Basic Profile attributes in the headers the manifest points at (counts only).")
    d.add_argument("manifest")
    d.add_argument("--out", default=None, help="output folder (default: audit_<manifest stem> here)")
    d.add_argument("--column", action="append", metavar="COLUMN=ADAPTER",
                   help="read COLUMN with ADAPTER (repeat); default: columns named like an adapter")
    d.add_argument("--label-column", action="append", help="label column (repeat); default: label, label*, ...")
    d.add_argument("--site-column", action="append", help="site/source column for balance (repeat)")
    d.add_argument("--template-min-patients", type=int, default=2,
                   help="a report or sequence shared by this many patients is shared content, not a leak")
    d.add_argument("--model-dir", default=None, help="also record this audit on the card of this checkpoint")
    d.add_argument("--warn-only", action="store_true", help="leakage found: warn, exit 0")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=run_data)
    m = s.add_parser("model", help="membership inference, PGD robustness, backdoor scan by trigger inversion",
                     description="On a checkpoint and a manifest that pairs a modality with reports (text column): "
                                 "membership AUROC (pair similarity, train vs held-out patients, patient bootstrap "
                                 "interval), zero-shot accuracy (with --prompts) and retrieval R@1 clean vs PGD L-inf "
                                 "(images: N/255 of the intensity range; ECG: microvolts), and a backdoor scan that "
                                 "inverts a patch trigger per candidate target report (suspicion = anomaly index of "
                                 "the best target's attack success rate). Writes audit_model.json/.md to --out and "
                                 "the Trust section of MODEL's card.")
    m.add_argument("model", help="checkpoint directory")
    m.add_argument("--manifest", required=True)
    m.add_argument("--out", default=None, help="output folder (default: MODEL/trust)")
    m.add_argument("--modality", action="append", help="modality to audit (repeat); default: every one paired with text")
    m.add_argument("--text-column", default="text")
    m.add_argument("--label-column", default="label", help="class per row, for zero-shot accuracy")
    m.add_argument("--prompts", default=None, help="prompt set YAML: adds zero-shot accuracy under attack")
    m.add_argument("--checks", default="membership,robustness,backdoor", help="comma-separated subset")
    m.add_argument("--image-eps", default="1,4", help="image L-inf budgets in grey levels of 255 (default 1,4)")
    m.add_argument("--ecg-uv", default="10,50", help="ECG L-inf budgets in microvolts (default 10,50)")
    m.add_argument("--pgd-steps", type=int, default=10)
    m.add_argument("--scan-steps", type=int, default=30)
    m.add_argument("--max-rows", type=int, default=200, help="rows per check (drawn by --seed)")
    m.add_argument("--max-targets", type=int, default=16, help="candidate target reports of the backdoor scan "
                                                                   "(the most frequent reports)")
    m.add_argument("--scan-rows", type=int, default=64, help="held-out images the backdoor scan patches")
    m.add_argument("--n-boot", type=int, default=1000)
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=run_model)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _numbers(text: str, what: str):
    try:
        vals = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} expects comma-separated numbers, got {text!r}") from None
    if any(v < 0 for v in vals):
        raise UsageError(f"{what}: budgets must be >= 0")
    return vals


def run_model(args) -> int:
    # deferred: the audit loads torch and the model only when it runs
    from medfm.card import write_model_card
    # deferred: as above
    from medfm.evaluation.audit.model import audit_model
    # deferred: as above
    from medfm.evaluation.audit.report import model_markdown, write_record
    # deferred: as above
    from medfm.trust import record_trust

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
    # deferred: the audit reads through the adapters (numpy, pandas, pydicom) only when it runs
    from medfm.evaluation.audit.data import audit_manifest
    # deferred: as above
    from medfm.evaluation.audit.report import data_markdown, write_record
    # deferred: as above
    from medfm.trust import record_trust

    if args.template_min_patients < 2:
        raise UsageError("--template-min-patients must be at least 2")
    rec = audit_manifest(args.manifest, columns=_pairs(args.column, "--column"), label_columns=args.label_column,
                         site_columns=args.site_column, template_min_patients=args.template_min_patients,
                         progress=not args.no_progress)
    out = Path(args.out or f"audit_{Path(args.manifest).name.split('.')[0]}")
    path = write_record(rec, out, "audit_data", data_markdown(rec))
    if args.model_dir:
        # deferred: as above
        from medfm.card import write_model_card

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
