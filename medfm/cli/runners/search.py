"""What ``medfm search`` runs (its parser: :mod:`medfm.cli.commands.search`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from medfm.errors import ConfigError, DataError, UsageError
from medfm.modality import file_reference
from medfm.evaluation.embed import encode_values, load_model, require_modality
from medfm.evaluation.index import VectorIndex, model_fingerprint, sample_key


def _query_value(adapter, path: str):

    ref = file_reference(path, getattr(adapter, "suffixes", ())) if adapter.input_kind != "path" else None
    if ref is not None:  # FILE or FILE#RECORD (FASTA/TSV, .txt): the adapter reads it
        if not ref[0].is_file():
            raise DataError("query file not found", source=str(ref[0]))
        return path
    p = Path(path)
    if not p.is_file():
        raise DataError("query file not found", source=str(p))
    suffixes = [s.lower() for s in getattr(adapter, "suffixes", ())]
    if adapter.input_kind == "path" or any(p.name.lower().endswith(s) for s in suffixes):
        return str(p)
    try:
        text = p.read_text().strip()
    except (UnicodeDecodeError, OSError) as e:
        raise DataError(f"cannot read query file as {adapter.name} text: {e}", source=str(p)) from None
    if not text:
        raise DataError("query file is empty", source=str(p))
    return text


def run(args) -> int:
    if args.k < 1:
        raise UsageError("-k must be at least 1")
    index = VectorIndex.load(args.index)
    model_dir = args.model or index.info.get("model_dir")
    if not model_dir:
        raise ConfigError("the index records no model directory; pass --model DIR")
    index.check_model(model_fingerprint(model_dir), model_dir)
    model, _ = load_model(model_dir)
    if args.text is not None:
        modality = args.text_modality
        require_modality(model, modality)
        value, label = args.text, "text"
    else:
        modality = args.query_modality or index.info.get("modality")
        adapter = require_modality(model, modality)
        value, label = _query_value(adapter, args.query), args.query
    z = encode_values(model, modality, [value], source=label, num_workers=args.workers or 0, threads=args.threads)
    own = {"sample": [], "patient": []}
    if args.text is None and not args.include_self:
        own = index.self_positions(sample_key(args.query, Path.cwd()))
    hits = index.search_records(z, args.k, exclude=own["sample"] + own["patient"])[0]
    excluded = {"sample": [str(index.metadata["id"].iloc[i]) for i in own["sample"]],
                "n_same_patient": len(own["patient"])}
    if own["sample"]:
        print(f"left out the query's own sample ({', '.join(excluded['sample'])}) and "
              f"{excluded['n_same_patient']} other sample(s) of its patient; --include-self keeps them",
              file=sys.stderr)
    answered = {"kind": index.info.get("kind"), "params": index.info.get("params", {}),
                "recall_at_build": index.info.get("recall")}
    if args.json:
        print(json.dumps({"query": label if args.text is None else args.text, "query_modality": modality,
                          "index_modality": index.info.get("modality"), "index": answered, "excluded": excluded,
                          "results": hits}, indent=2))
        return 0
    rec = answered["recall_at_build"]
    print(f"index: {answered['kind']} {answered['params'] or '(exact)'}"
          + (f", recall@{rec['k']} {rec['recall_at_k']:.3f} vs exact at build" if rec else ""), file=sys.stderr)
    cols = index.info.get("metadata_columns", [])
    print("\t".join(["rank", "id", "score"] + cols))
    for h in hits:
        print("\t".join([str(h["rank"]), str(h["id"]), f"{h['score']:.4f}"] + [str(h.get(c, "")) for c in cols]))
    return 0
