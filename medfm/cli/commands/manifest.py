"""``medfm manifest SOURCE... --out cohort.csv``: a manifest from folders of real files and tables."""
from __future__ import annotations

from medfm.cli.common import lazy_run


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
    p.set_defaults(func=lazy_run("medfm.cli.runners.manifest:run"))
