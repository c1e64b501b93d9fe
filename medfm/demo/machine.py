"""The machine a timing was measured on: fp32 GEMM rate, cores, threads (printed beside every timing)."""
from __future__ import annotations

import os
import platform
import time
from typing import Any, Dict, Optional

import torch


def gemm_gflops(n: int = 512, *, threads: Optional[int] = None, min_seconds: float = 0.3) -> float:
    """Measured fp32 matrix-multiply rate in GFLOP/s (``2 n³`` per ``(n, n) @ (n, n)``), best of 3 rounds.

    ``threads``: torch intra-op threads for the measurement (restored afterwards); ``None`` = current.
    """
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        a = torch.randn(n, n, dtype=torch.float32)
        b = torch.randn(n, n, dtype=torch.float32)
        torch.mm(a, b)  # warm-up
        best = 0.0
        for _ in range(3):
            reps, t0 = 0, time.perf_counter()
            while True:
                torch.mm(a, b)
                reps += 1
                dt = time.perf_counter() - t0
                if dt >= min_seconds / 3:
                    break
            best = max(best, 2.0 * n ** 3 * reps / dt / 1e9)
        return best
    finally:
        torch.set_num_threads(old)


def machine_info() -> Dict[str, Any]:
    """``{"cpu_count", "torch_threads", "gemm_gflops_all", "gemm_gflops_1", "processor"}``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(torch.get_num_threads(), cores)  # all cores, whatever the caller set
    return {"cpu_count": cores, "torch_threads": threads, "gemm_gflops_all": round(gemm_gflops(threads=threads), 1),
            "gemm_gflops_1": round(gemm_gflops(threads=1), 1), "processor": platform.processor() or platform.machine()}


def machine_line(info: Dict[str, Any]) -> str:
    return (f"machine: {info['cpu_count']} core(s), fp32 GEMM {info['gemm_gflops_all']:.0f} GFLOP/s "
            f"({info['torch_threads']} threads), {info['gemm_gflops_1']:.0f} GFLOP/s (1 thread)")
