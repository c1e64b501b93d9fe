"""Training-step efficiency of a small trunk: achieved FLOP/s as a fraction of a plain matmul's.

Run by hand:  python benchmarks/bench_train_step.py [--width 384 --depth 6 --tokens 196 --batch 32]

FLOPs of one step (forward + backward) are counted by ``torch.utils.flop_counter.FlopCounterMode`` with
CPU SDPA added analytically (torch's counter gives 0 for it; :mod:`benchmarks.measure`), so the SDPA
and explicit-softmax rows count the same work; the baseline is a square float32 matmul measured in
the same run on the same device. A second row runs the same trunk with timm's non-fused (explicit
softmax) attention instead of SDPA. The machine line (one-thread GEMM rate, load) is printed first.
"""
from __future__ import annotations

import argparse
import time

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.measure import count_flops, machine_line  # noqa: E402
from medfm.layers import Trunk  # noqa: E402


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat


def matmul_flops_per_s(n: int, device, repeat: int) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n ** 3 / timed(lambda: a @ b, repeat)


def step_flops_per_s(args, device, fused: bool):
    trunk = Trunk(args.width, args.depth, args.heads).to(device)
    for blk in trunk.blocks:
        blk.attn.fused_attn = fused
    opt = torch.optim.AdamW(trunk.parameters(), lr=1e-4)
    x = torch.randn(args.batch, args.tokens, args.width, device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        trunk(x).float().pow(2).mean().backward()
        opt.step()

    flops = count_flops(lambda: trunk(x).float().pow(2).mean().backward())
    sec = timed(step, args.repeat)
    return flops, sec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--tokens", type=int, default=196)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--matmul", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(machine_line(torch.get_num_threads())[0])
    base = matmul_flops_per_s(args.matmul, device, args.repeat)
    rows = [("matmul %dx%d (baseline)" % (args.matmul, args.matmul), None, None, base)]
    for fused in (True, False):
        flops, sec = step_flops_per_s(args, device, fused)
        rows.append((f"train step, {'SDPA' if fused else 'explicit softmax'} attention", flops, sec, flops / sec))
    print(f"device={device} threads={torch.get_num_threads()} trunk width={args.width} depth={args.depth} "
          f"heads={args.heads} batch={args.batch} tokens={args.tokens}")
    print(f"{'what':<42} {'GFLOP/step':>11} {'s/step':>8} {'GFLOP/s':>9} {'vs matmul':>10}")
    for name, flops, sec, rate in rows:
        print(f"{name:<42} {'' if flops is None else f'{flops / 1e9:11.1f}':>11} "
              f"{'' if sec is None else f'{sec:8.3f}':>8} {rate / 1e9:9.1f} {rate / base:10.2f}")


if __name__ == "__main__":
    main()
