"""Weight import and export at ViT-B size, by hand (not in CI).

1. Import: a ViT-B/16 (86 M parameters, 224²) written in RETFound's layout (``{"model": state_dict}``
   ``.pth``) and as ``.safetensors`` is imported into a medfm ``fundus`` tower through
   ``model.modalities.fundus.init``. Baselines, each in a fresh process: building the same medfm
   model at random (no import), and timm's own path (``VisionTransformer`` + ``torch.load`` +
   ``load_state_dict``). Reported: wall time and peak RSS growth of the process.
2. Export: the imported tower to ONNX (``medfm export``) and embedding throughput of onnxruntime
   vs PyTorch on this CPU, same process, same thread count, same batches.

    python benchmarks/bench_weights_export.py [--threads 1] [--batch 4] [--reps 3] [--work /tmp/medfm_bench]

Prints the measured fp32 GEMM rate first: the machine is shared, so compare ratios, not seconds.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import time
from pathlib import Path

from medfm.demo.machine import gemm_gflops


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _job(kind: str, path: str, threads: int, q) -> None:
    import torch

    torch.set_num_threads(threads)
    import medfm  # noqa: F401  (imports outside the timed region)
    import timm  # noqa: F401
    from medfm.registry import MODALITIES

    MODALITIES.items()  # imports every adapter (declared, lazy) outside the timed region
    base_rss = _rss_mb()
    t = time.perf_counter()
    if kind == "timm (reference library)":
        m = timm.models.vision_transformer.VisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=12,
                                                             num_heads=12, num_classes=0)
        sd = torch.load(path, map_location="cpu", weights_only=True)["model"]
        m.load_state_dict(sd)
    else:
        mod = {"size": 224}
        if kind != "medfm random init (no import)":
            mod["init"] = {"path": path, "format": "retfound" if path.endswith(".pth") else "timm", "strict": True}
        m = medfm.create_model({"name": "medfm-base", "modalities": {"fundus": mod}})
    dt = time.perf_counter() - t
    q.put({"kind": kind, "seconds": dt, "peak_rss_growth_mb": _peak_mb() - base_rss,
           "n_params": sum(p.numel() for p in m.parameters())})


def run_job(kind: str, path: str, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_job, args=(kind, path, threads, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--import-reps", type=int, default=2, help="fresh processes per import path (best time kept)")
    ap.add_argument("--work", default="/tmp/medfm_bench_weights")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch
    import timm
    from safetensors.torch import save_file

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"fp32 GEMM (1024², {a.threads} thread(s)): {gemm_gflops(1024, threads=a.threads):.1f} GFLOP/s (shared, loaded machine)")
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=12,
                                                           num_heads=12, num_classes=0)
    pth, st = work / "RETFound_vitb.pth", work / "vit_b16.safetensors"
    torch.save({"model": vit.state_dict()}, pth)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(st))
    print(f"checkpoint: ViT-B/16 {sum(p.numel() for p in vit.parameters()) / 1e6:.1f} M params, "
          f".pth {pth.stat().st_size / 2**20:.0f} MiB, .safetensors {st.stat().st_size / 2**20:.0f} MiB")
    del vit
    kinds = [("medfm random init (no import)", pth), ("timm (reference library)", pth),
             ("medfm import .pth (RETFound layout)", pth), ("medfm import .safetensors (timm)", st)]
    rows = []
    for kind, path in kinds:  # interleaved repeats: the machine's load changes over minutes
        runs = [run_job(kind, str(path), a.threads) for _ in range(a.import_reps)]
        best = min(runs, key=lambda r: r["seconds"])
        best["peak_rss_growth_mb"] = max(r["peak_rss_growth_mb"] for r in runs)
        rows.append(best)
    ref = rows[1]
    print(f"\nbest of {a.import_reps} fresh processes each; peak RSS growth = ru_maxrss minus RSS after imports")
    print("| path | time (s) | ×timm | peak RSS growth (MiB) | ×timm | parameters |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['kind']} | {r['seconds']:.2f} | {r['seconds'] / ref['seconds']:.2f} | "
              f"{r['peak_rss_growth_mb']:.0f} | {r['peak_rss_growth_mb'] / ref['peak_rss_growth_mb']:.2f} | "
              f"{r['n_params'] / 1e6:.1f} M |")

    # ---- export + throughput
    import medfm
    import numpy as np
    import onnxruntime as ort
    from medfm.export import export_model

    torch.set_num_threads(a.threads)
    model = medfm.create_model({"name": "medfm-base",
                                "modalities": {"fundus": {"size": 224, "init": {"path": str(st), "format": "timm"}}}})
    ckpt = work / "ckpt"
    model.save_pretrained(ckpt)
    t = time.perf_counter()
    export_model(ckpt, "onnx", work / "onnx")
    print(f"\nONNX export of the ViT-B tower: {time.perf_counter() - t:.1f} s, "
          f"{(work / 'onnx' / 'fundus.onnx').stat().st_size / 2**20:.0f} MiB")
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = a.threads, 1
    sess = ort.InferenceSession(str(work / "onnx" / "fundus.onnx"), so, providers=["CPUExecutionProvider"])
    model.eval()
    x = torch.randn(a.batch, 3, 224, 224)
    with torch.no_grad():
        want = model.encode("fundus", x)
    got = sess.run(None, {"x": x.numpy()})[0]
    diff = float(np.abs(got - want.numpy()).max())
    timings = {}
    for name, fn in (("pytorch (eager, fp32)", lambda: model.encode("fundus", x)),
                     ("onnxruntime (CPU EP)", lambda: sess.run(None, {"x": x.numpy()}))):
        with torch.no_grad():
            fn()  # warm-up
            ts = []
            for _ in range(a.reps):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
        timings[name] = min(ts)
    base = timings["pytorch (eager, fp32)"]
    print(f"\nembedding throughput, batch {a.batch} × 3×224², {a.threads} thread(s), best of {a.reps} "
          f"(ONNX vs PyTorch max abs diff {diff:.2e}):")
    print("| runtime | s / batch | images / s | ×pytorch |\n| --- | --- | --- | --- |")
    for name, s in timings.items():
        print(f"| {name} | {s:.3f} | {a.batch / s:.2f} | {base / s:.2f} |")
    gflop = 17.56 * a.batch  # ViT-B/16 at 224²: ~17.6 GFLOPs per image forward
    print(f"(pytorch at {gflop / base:.1f} GFLOP/s effective; GEMM again now: {gemm_gflops(1024, threads=a.threads):.1f} GFLOP/s)")
    print(json.dumps({"import": rows, "throughput_s_per_batch": timings, "onnx_max_abs_diff": diff}))


if __name__ == "__main__":
    main()
