"""``python -m benchmarks.real --data ../shared/data --out DIR [--quick] [--blocks dna,ecg,...]``.

Runs every real-data block with the fixed budgets of :data:`benchmarks.real.BUDGETS`
(``full`` ≤ 30 min on a 2-core CPU; ``--quick`` = the CI's tiny budgets), then writes
``DIR/results.json``, ``DIR/report.md`` and the PNG plots, and prints the headline table.
A block that fails is recorded with its error (and the exit status is 1); the others run.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import logging
import os
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import List, Optional

BLOCKS = ("dna", "ecg", "imaging", "reports")
#: the module that runs each block
BLOCK_MODULES = {"dna": "dna", "ecg": "ecg", "imaging": "imaging", "reports": "radiology_reports"}


def environment() -> dict:
    import numpy
    import sklearn
    import torch

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "sklearn": sklearn.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "cpu": f"{os.cpu_count()}-core {platform.machine()} CPU", "load_average_at_start": load}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.real", description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the shared data folder (../shared/data)")
    ap.add_argument("--out", required=True, help="output folder (results.json, report.md, plots, run dirs)")
    ap.add_argument("--quick", action="store_true", help="tiny budgets (the CI test)")
    ap.add_argument("--blocks", default=",".join(BLOCKS), help=f"comma-separated subset of {','.join(BLOCKS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = ap.parse_args(argv)

    import torch
    import medfm.modalities  # noqa: F401  (registers the adapters)
    from . import BUDGETS
    from . import suite_report

    torch.set_num_threads(int(args.threads))
    logging.getLogger("medfm").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    data, out = Path(args.data).resolve(), Path(args.out).resolve()
    if not data.is_dir():
        print(f"error: data folder {data} not found", file=sys.stderr)
        return 2
    blocks = [b.strip() for b in args.blocks.split(",") if b.strip()]
    unknown = sorted(set(blocks) - set(BLOCKS))
    if unknown:
        print(f"error: unknown block(s) {unknown}; known: {', '.join(BLOCKS)}", file=sys.stderr)
        return 2
    mode = "quick" if args.quick else "full"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = {"suite": "medfm real-data benchmark", "mode": mode, "seed": args.seed,
               "command": " ".join(["python -m benchmarks.real", *(argv if argv is not None else sys.argv[1:])]),
               "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "environment": environment(), "budgets": {b: BUDGETS[mode][b] for b in blocks}, "blocks": {}}
    failed = False
    for name in blocks:
        mod = importlib.import_module(f"{__package__}.{BLOCK_MODULES[name]}")
        print(f"[{time.perf_counter() - t0:7.1f} s] block {name} …", flush=True)
        tb = time.perf_counter()
        try:
            rec = mod.run(data, out / name, BUDGETS[mode][name], seed=args.seed)
            rec["doc"] = mod.__doc__
        except Exception as e:  # record and go on with the other blocks
            failed = True
            rec = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            print(rec["traceback"], file=sys.stderr)
        rec["wall_s"] = round(time.perf_counter() - tb, 1)
        results["blocks"][name] = rec
        print(f"[{time.perf_counter() - t0:7.1f} s] block {name} done in {rec['wall_s']} s", flush=True)
    results["wall_s"] = time.perf_counter() - t0
    try:
        results["environment"]["load_average_at_end"] = os.getloadavg()
    except OSError:
        pass
    paths = suite_report.write(out, results)
    print()
    print(suite_report.table_text(suite_report.headline_rows(results["blocks"])))
    print(f"\nwall time {results['wall_s']:.0f} s; wrote {paths['results']} and {paths['report']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
