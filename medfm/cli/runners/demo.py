"""What ``medfm demo`` runs (its parser: :mod:`medfm.cli.commands.demo`)."""
from __future__ import annotations

from ...demo import run_demo


def run(args) -> int:
    results = run_demo(args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    weak = [f"{r['block']} {r['metric']}" for r in results["summary"] if not r["beats_chance"]]
    if weak:  # a demo, not a test: say so, but the run itself succeeded
        print(f"medfm demo: {len(weak)} metric(s) did not beat chance: {', '.join(weak)}")
    return 0
