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
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


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
