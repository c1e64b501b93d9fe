"""``medfm audit data MANIFEST`` and ``medfm audit model MODEL --manifest M``: trust audits."""
from __future__ import annotations

from medfm.cli.common import lazy_run


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
    d.set_defaults(func=lazy_run("medfm.cli.runners.audit:run_data"))
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
    m.set_defaults(func=lazy_run("medfm.cli.runners.audit:run_model"))
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
