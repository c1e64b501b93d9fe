"""Same global batch → same loss at 1, 2 and 4 gloo ranks (the check behind docs/scaling.md).

Run by hand (not part of pytest; the 2-rank case is tests/test_train.py)::

    PYTHONPATH=.:tests python benchmarks/check_scaling.py [--ranks 1 2 4] [--steps 3] [--strategy ddp]

Trains the tiny two-modality toy model of the tests (CLIP objective, global batch 16) for a few
steps at each world size, with batch 16 / W per rank, and prints the loss of every step and its
largest relative difference from the 1-rank run. Launches ``torch.distributed.run --standalone``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"])
    args = ap.parse_args(argv)
    from toy_cohort import write_toy_manifest

    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = write_toy_manifest(tmp / "m.csv", n=64, missing_every=0)
        for w in args.ranks:
            cfg = {"model": {"name": "medfm-tiny", "modalities": {"toy": {}, "toyb": {"channels": 3}}},
                   "data": {"manifest": str(manifest), "batch_size": args.global_batch // w, "split": None},
                   "objectives": [{"name": "clip", "weight": 1.0}],
                   "optim": {"lr": 3e-3, "warmup_steps": 2},
                   "train": {"max_steps": args.steps, "checkpoint_every": 0, "tensorboard": False,
                             "progress": False, "strategy": args.strategy}}
            path = tmp / f"run{w}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   "--nproc_per_node", str(w), str(ROOT / "tests" / "toy_cli.py"), "pretrain",
                                   str(path), "--out", str(tmp / f"out{w}")],
                                  capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if proc.returncode:
                print(proc.stderr[-3000:])
                return 1
            rows = [json.loads(x) for x in (tmp / f"out{w}" / "metrics.jsonl").read_text().splitlines()]
            losses[w] = [r["loss"] for r in rows]
            print(f"{w} rank(s): {time.perf_counter() - t0:.1f} s wall", flush=True)
    base = losses[args.ranks[0]]
    print(f"\nglobal batch {args.global_batch}, strategy {args.strategy}, CLIP loss per step")
    print(f"{'ranks':>5} {'batch/rank':>10} " + " ".join(f"{'step ' + str(i + 1):>10}" for i in range(args.steps))
          + f" {'max rel diff':>13}")
    for w, ls in losses.items():
        diff = max(abs(a - b) / abs(b) for a, b in zip(ls, base))
        print(f"{w:>5} {args.global_batch // w:>10} " + " ".join(f"{x:>10.6f}" for x in ls) + f" {diff:>13.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
