"""What ``medfm manifest`` runs (its parser: :mod:`medfm.cli.commands.manifest`)."""
from __future__ import annotations

import json
from pathlib import Path
from medfm.data.confine import sidecar_path
from medfm.errors import MedFMError, UsageError
from medfm.registry import get_modality
from medfm.io import atomic_write_text, write_json
from medfm.data.cohort import (build_manifest, format_summary, load_or_create_salt, parse_fractions,
                                   salt_from_text)


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
