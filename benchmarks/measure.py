"""What every benchmark here measures the same way: the machine line, FLOPs with attention, wall + CPU
time of interleaved runs, and peak memory as the median of fresh processes.

- :func:`machine_line`: the one-thread fp32 GEMM rate (1024³) and the load average, printed beside
  every table (the machine is shared: compare ratios within one run, not seconds across runs).
- :func:`count_flops`: ``torch.utils.flop_counter`` with the CPU SDPA kernels added analytically
  (torch's counter maps only the CUDA ones; on CPU attention counts 0): forward ``4·B·H·L·S·E``,
  backward 2.5× that, torch's own formulas (``sdpa_flop_count``/``sdpa_backward_flop_count``).
  FLOPs, not multiply-adds: a ``(m, k) @ (k, n)`` counts ``2·m·k·n``.
- :func:`interleaved`: run the sides A, B, A, B, ... and keep every round's (wall, CPU) seconds, so a
  load change hits both sides alike; report medians and per-round ratios.
- :func:`median_peak_mb`: a callable's peak RSS growth, median of ≥ 3 fresh processes.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import resource
import statistics
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
from torch.utils import flop_counter as fc

from medfm.demo.machine import gemm_gflops


def load_average() -> float:
    """1-minute load average (0 where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def machine_line(threads: int = 1) -> Tuple[str, float]:
    """``(line, GFLOP/s)``: the fp32 GEMM rate at ``threads`` threads (1024³; 1 thread always printed) + load."""
    one = gemm_gflops(1024, threads=1)
    line = f"fp32 GEMM 1024³: {one:.1f} GFLOP/s (1 thread)"
    rate = one
    if threads != 1:
        rate = gemm_gflops(1024, threads=threads)
        line += f", {rate:.1f} GFLOP/s ({threads} threads)"
    line += f"; load average {load_average():.2f} on {os.cpu_count()} cores; torch {torch.__version__}"
    return line, rate


def _sdpa_fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return fc.sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _cpu_sdpa_mapping() -> Dict[Any, Callable]:
    aten = torch.ops.aten
    out = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        out[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_fwd
        out[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_bwd
    return out


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` (forward and, when ``fn`` calls it, backward), attention included."""
    mapping = _cpu_sdpa_mapping()
    with fc.FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


class Clock:
    """``with Clock() as c:`` → ``c.wall``, ``c.cpu`` seconds (this process + reaped children, e.g. workers)."""

    def __enter__(self):
        self._r0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._t0
        r1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = sum(b.ru_utime - a.ru_utime + b.ru_stime - a.ru_stime for a, b in zip(self._r0, r1))
        return False


def interleaved(sides: Dict[str, Callable[[], Any]], rounds: int) -> Dict[str, List[Tuple[float, float]]]:
    """``{name: [(wall, cpu) per round]}``, the sides run in turn each round (A, B, A, B, ...)."""
    out: Dict[str, List[Tuple[float, float]]] = {k: [] for k in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            with Clock() as c:
                fn()
            out[name].append((c.wall, c.cpu))
    return out


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def ratio_range(a: Sequence[Tuple[float, float]], b: Sequence[Tuple[float, float]]) -> str:
    """Per-round wall ratios ``b / a`` (a's speed-up over b) as ``median (min–max)``."""
    r = [y[0] / x[0] for x, y in zip(a, b)]
    return f"{med(r):.2f} ({min(r):.2f}–{max(r):.2f})"


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_child(build: Callable[..., Callable[[], Any]], args: tuple, q) -> None:
    try:
        fn = build(*args)
        with open("/proc/self/clear_refs", "w") as f:  # resets the peak (VmHWM) to the current RSS
            f.write("5")
        base = _status_mb("VmRSS")
        fn()
        q.put(max(0.0, _status_mb("VmHWM") - base))
    except BaseException as e:  # the parent reports the child's failure instead of hanging
        q.put(RuntimeError(repr(e)))


def median_peak_mb(build: Callable[..., Callable[[], Any]], args: tuple = (), runs: int = 3) -> Tuple[float, List[float]]:
    """Peak RSS growth (MiB) of ``build(*args)()`` over the process after ``build``: the median of ``runs``
    (≥ 3) fresh processes (``spawn``: nothing inherited), and the values. ``build`` (a module-level
    function) makes the model and input; the callable it returns is what is measured."""
    vals = []
    ctx = mp.get_context("spawn")
    for _ in range(max(3, runs)):
        q = ctx.Queue()
        p = ctx.Process(target=_peak_child, args=(build, args, q))
        p.start()
        v = q.get()
        p.join()
        if isinstance(v, Exception):
            raise v
        vals.append(v)
    return med(vals), vals
