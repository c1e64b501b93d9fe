"""Contrastive loss (forward + backward): medfm vs open_clip's ClipLoss, 2 gloo ranks on CPU.

Run by hand (not part of pytest):

    PYTHONPATH=. python benchmarks/bench_contrastive_loss.py [--sizes 1024 4096] [--dim 512]

Baseline: ``open_clip.loss.ClipLoss(local_loss=True, gather_with_grad=True)`` measured
in the same run on the same features (open-clip-torch is not a dependency of medfm:
``pip install open-clip-torch``; the benchmark skips with a message when it is
absent). For memory, each (implementation, batch, world size) runs in fresh processes so that
the peak-memory figure (max RSS minus the RSS before the first loss, per rank,
the max over ranks) belongs to that implementation alone; each figure is the median of
``--mem-runs`` (≥ 3) such process groups, the implementations alternating run by run. Time is the median
forward+backward time per step on rank 0, one thread per rank, the two
implementations interleaved step by step in the same processes. Losses and feature
gradients of the two implementations are asserted equal before timing.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import resource
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def load_open_clip_loss():
    """open_clip's ``loss`` module, or None. Loaded by path when the package's own
    ``__init__`` needs optional extras (ftfy, torchvision) that are not installed."""
    try:
        return importlib.import_module("open_clip.loss")
    except ImportError:
        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            return None
        path = os.path.join(list(spec.submodule_search_locations)[0], "loss.py")
        mod_spec = importlib.util.spec_from_file_location("open_clip_loss_standalone", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        return module


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def features(n_global: int, dim: int, rank: int, world: int):
    g = torch.Generator().manual_seed(0)
    za = F.normalize(torch.randn(n_global, dim, generator=g), dim=-1)
    zb = F.normalize(torch.randn(n_global, dim, generator=g), dim=-1)
    b = n_global // world
    rows = slice(rank * b, (rank + 1) * b)
    return za[rows].clone().requires_grad_(True), zb[rows].clone().requires_grad_(True)


def make_loss(impl: str, rank: int, world: int):
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    if impl == "medfm":
        from medfm.objectives import clip_loss

        return log_scale, lambda a, b: clip_loss(a, b, log_scale)
    oc = load_open_clip_loss()
    loss = oc.ClipLoss(local_loss=world > 1, gather_with_grad=world > 1, rank=rank, world_size=world)
    return log_scale, lambda a, b: loss(a, b, log_scale.exp().clamp(max=100))


def step(fn, za, zb, log_scale, world):
    """One forward+backward; returns (seconds, loss)."""
    za.grad = zb.grad = log_scale.grad = None
    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    loss = fn(za, zb)
    loss.backward()
    return time.perf_counter() - t0, loss


def worker(rank, world, init_file, impls, n_global, dim, reps, out_dir):
    """Time ``impls`` interleaved step by step (fair under a drifting machine load);
    with a single impl also report its peak memory (a fresh process per impl)."""
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        za, zb = features(n_global, dim, rank, world)
        losses = {impl: make_loss(impl, rank, world) for impl in impls}
        base = rss_bytes()
        times = {impl: [] for impl in impls}
        result = {}
        for i in range(reps + 1):
            for impl in impls:
                log_scale, fn = losses[impl]
                t, loss = step(fn, za, zb, log_scale, world)
                if i:  # the first round is warm-up
                    times[impl].append(t)
                if i == reps:
                    result.update({f"{impl}.loss": loss.detach(), f"{impl}.ga": za.grad.clone(),
                                   f"{impl}.gb": zb.grad.clone(), f"{impl}.gs": log_scale.grad.clone(),
                                   f"{impl}.time": torch.tensor(statistics.median(times[impl]))})
        result["peak"] = torch.tensor(float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base))
        torch.save(result, os.path.join(out_dir, f"{'+'.join(impls)}-{world}-{n_global}-r{rank}.pt"))
    finally:
        if world > 1:
            dist.destroy_process_group()


def run(impls, world, n_global, dim, reps, out_dir):
    init = tempfile.mktemp(prefix="medfm-bench-init-", dir=out_dir)
    mp.spawn(worker, args=(world, init, impls, n_global, dim, reps, out_dir), nprocs=world, join=True)
    return [torch.load(os.path.join(out_dir, f"{'+'.join(impls)}-{world}-{n_global}-r{r}.pt"), weights_only=True)
            for r in range(world)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--mem-runs", type=int, default=3, help="fresh process groups per memory figure (median, ≥ 3)")
    args = ap.parse_args(argv)
    if load_open_clip_loss() is None:
        print("open-clip-torch is not installed (pip install open-clip-torch): skipping the benchmark")
        return 0
    impls = ("open_clip", "medfm")
    rows = []
    with tempfile.TemporaryDirectory() as out_dir:
        for world in (2, 1):
            for n in args.sizes:
                timed = run(impls, world, n, args.dim, args.reps, out_dir)
                for r in timed:  # values must match, rank by rank
                    torch.testing.assert_close(r["medfm.loss"], r["open_clip.loss"], rtol=1e-5, atol=1e-5)
                    for g in ("ga", "gb", "gs"):
                        torch.testing.assert_close(r[f"medfm.{g}"], r[f"open_clip.{g}"], rtol=1e-4, atol=1e-6)
                # memory: the median over --mem-runs fresh process groups (max over ranks within one),
                # the sides interleaved run by run; one sample per cell once read an outlier 1.92x
                samples = {impl: [] for impl in impls}
                for _ in range(max(3, args.mem_runs)):
                    for impl in impls:
                        samples[impl].append(max(float(r["peak"]) for r in run((impl,), world, n, args.dim, 1,
                                                                                out_dir)))
                peak = {impl: statistics.median(v) for impl, v in samples.items()}
                base_t = float(timed[0]["open_clip.time"])
                for impl in impls:
                    t = float(timed[0][f"{impl}.time"])
                    rows.append((f"{world} rank{'s' if world > 1 else ''}", n, impl, t * 1e3, t / base_t,
                                 peak[impl] / 2**20, peak[impl] / peak["open_clip"],
                                 float(sum(r[f"{impl}.loss"] for r in timed) / world)))
    print(f"\ncontrastive loss fwd+bwd, D={args.dim}, CPU, 1 thread/rank, median of {args.reps}; peak memory: "
          f"median of {max(3, args.mem_runs)} fresh process groups; "
          f"baseline = open_clip ClipLoss(local_loss=True, gather_with_grad=True)")
    head = f"{'world':<8} {'global B':>8} {'impl':<10} {'ms/step':>9} {'x base':>7} {'peak MB':>8} {'x base':>7} {'loss':>8}"
    print(head)
    print("-" * len(head))
    for w, n, impl, ms, rt, mb, rm, loss in rows:
        print(f"{w:<8} {n:>8} {impl:<10} {ms:>9.1f} {rt:>7.2f} {mb:>8.1f} {rm:>7.2f} {loss:>8.4f}")
    print("values: medfm loss and gradients equal open_clip's on every rank (asserted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
