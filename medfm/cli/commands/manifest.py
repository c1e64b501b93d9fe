"""``medfm manifest SOURCE... --out cohort.csv``: a manifest from folders of real files and tables."""
from __future__ import annotations

import json
from pathlib import Path
from medfm.data.confine import sidecar_path
from medfm.errors import MedFMError, UsageError
from medfm.registry import get_modality
from medfm.io import atomic_write_text, write_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "manifest", help="walk folders and tables of real files and write a manifest the other commands accept",
        description="Sources: DICOM trees (grouped by study and series; the Modality tag picks the column), WFDB "
                    "folders, PTB-XL/CinC-style record tables, BOLD/BIOSCAN barcode tables, FASTA files, image "
                    "folders with one subfolder per label, NIfTI and vendor OCT files. MODALITY=PATH forces the "
                    "column of what PATH holds (e.g. oct=scans/). Rows of one patient and study are paired. "
                    "patient_id is a salted HMAC-SHA256 of the DICOM PatientID or the table's patient column; "
                    "sample ids of DICOM studies are salted hashes too. Raw identifiers are never written. "
                    "Writes OUT, OUT.summary.json (counts, unreadable files and the data roots walked: the "
                    "other commands read the manifest's paths inside its folder and those roots) and (once) "
                    "the salt file.")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="folder or file, or MODALITY=PATH")
    p.add_argument("--out", required=True, help="manifest to write (.csv, .tsv, .jsonl or .parquet)")
    p.add_argument("--salt-file", default=None,
                   help="hex salt of the identifier hashes, created on first use (default: OUT.salt; keep it "
                        "private and reuse it to pair manifests built separately)")
    p.add_argument("--salt", default=None, metavar="TEXT",
                   help="the salt as text (at least 16 characters) instead of a salt file: the same TEXT, sources "
                        "and --seed give the same ids and split on every machine. A salt written down is public: "
                        "use it for public data and examples, and a private --salt-file for patients")
    p.add_argument("--split", default=None, metavar="NAME=FRAC,...",
                   help="patient-grouped split, e.g. train=0.7,val=0.1,test=0.2 (the rest goes to train)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument("--verify", action="store_true",
                   help="read every cell with its modality adapter; unreadable cells are dropped and listed")
    p.add_argument("--follow-links", action="store_true",
                   help="follow folder symlinks that lead outside a source folder (default: listed as unreadable, "
                        "not followed; a folder is never walked twice, so a link back into the walk adds nothing)")
    p.add_argument("--max-depth", type=int, default=32, metavar="N",
                   help="folders walked below a source at most (default 32)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it goes to stderr)")
    p.set_defaults(func=run)


def _verifier():

    adapters = {}

    def verify(entry):
        try:
            ad = adapters.get(entry.modality) or adapters.setdefault(entry.modality, get_modality(entry.modality))
            ad.read(entry.value, sample_id=entry.key)
        except MedFMError as e:
            return getattr(e, "reason", str(e))
        except Exception as e:  # a reader library failed in its own words
            return f"{type(e).__name__}: {e}"
        return None
    return verify


def run(args) -> int:
    # deferred: keeps `medfm --help` from importing pandas (and the source scanners)
    from medfm.data.cohort import (build_manifest, format_summary, load_or_create_salt, parse_fractions,
                                   salt_from_text)

    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".tsv", ".jsonl", ".parquet"):
        raise UsageError(f"--out must end in .csv, .tsv, .jsonl or .parquet, not {out.suffix!r}")
    split = parse_fractions(args.split) if args.split else None
    if args.salt is not None and args.salt_file is not None:
        raise UsageError("give --salt TEXT or --salt-file FILE, not both")
    salt = salt_from_text(args.salt) if args.salt is not None else load_or_create_salt(args.salt_file or str(out) + ".salt")
    res = build_manifest(args.sources, out, salt=salt, split=split, seed=args.seed,
                         verify=_verifier() if args.verify else None, follow_links=args.follow_links,
                         max_depth=args.max_depth, progress=not args.no_progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    sfx = out.suffix.lower()
    if sfx == ".parquet":
        res.df.to_parquet(out, index=False)
    elif sfx == ".jsonl":
        atomic_write_text(out, res.df.to_json(orient="records", lines=True))
    else:
        atomic_write_text(out, res.df.to_csv(index=False, sep="\t" if sfx == ".tsv" else ","))
    res.summary["manifest"] = str(out)
    write_json(sidecar_path(out), res.summary)
    if args.json:
        print(json.dumps(res.summary, indent=2))
    else:
        print(f"wrote {out}: " + format_summary(res.summary))
    return 0
