"""Weight import and export at ViT-B size, by hand (not in CI).

1. Import: a ViT-B/16 (86 M parameters, 224²) written in RETFound's layout (``{"model": state_dict}``
   ``.pth``) and as ``.safetensors`` is imported into a medfm ``fundus`` tower through
   ``model.modalities.fundus.init``. Baselines, each in a fresh process: building the same medfm
   model at random (no import), and timm's own path (``VisionTransformer`` + ``torch.load`` +
   ``load_state_dict``). Reported: wall time and peak RSS growth of the process.
2. Export: the imported tower to ONNX (``medfm export``) and embedding throughput of onnxruntime
   vs PyTorch on this CPU, same process, same thread count, same batches.

    python benchmarks/bench_weights_export.py [--threads 1] [--batch 4] [--reps 3] [--work /tmp/medfm_bench]

Prints the machine line first (one-thread fp32 GEMM rate, load): the machine is shared, so compare ratios
within a run, not seconds. Import: median time and peak memory of 3 fresh processes per path, the paths
interleaved. Export: PyTorch eager and onnxruntime (as exported, and with --onnxruntime-fusions) interleaved
round by round; FLOPs counted (2 per multiply-add, attention included), not multiply-adds.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.measure import count_flops, interleaved, machine_line, ratio_range  # noqa: E402


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
    ap.add_argument("--import-reps", type=int, default=3,
                    help="fresh processes per import path, interleaved (median time and memory; at least 3)")
    ap.add_argument("--work", default="/tmp/medfm_bench_weights")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch
    import timm
    from safetensors.torch import save_file

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    print(machine_line(a.threads)[0])
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
    runs = {kind: [] for kind, _ in kinds}
    for _ in range(max(3, a.import_reps)):  # interleaved: the machine's load changes over minutes
        for kind, path in kinds:
            runs[kind].append(run_job(kind, str(path), a.threads))
    rows = []
    for kind, _ in kinds:
        r = dict(runs[kind][0])
        r["seconds"] = statistics.median(x["seconds"] for x in runs[kind])
        r["peak_rss_growth_mb"] = statistics.median(x["peak_rss_growth_mb"] for x in runs[kind])
        rows.append(r)
    ref = rows[1]
    print(f"\nmedian of {max(3, a.import_reps)} fresh processes each (interleaved); peak RSS growth = ru_maxrss "
          f"minus RSS after imports")
    print("| path | time (s) | ×timm | peak RSS growth (MiB) | ×timm | parameters |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['kind']} | {r['seconds']:.2f} | {r['seconds'] / ref['seconds']:.2f} | "
              f"{r['peak_rss_growth_mb']:.0f} | {r['peak_rss_growth_mb'] / ref['peak_rss_growth_mb']:.2f} | "
              f"{r['n_params'] / 1e6:.1f} M |")

    # ---- export + throughput
    import medfm
    import numpy as np
    from medfm.export import export_model
    from medfm.export_ort import ort_session

    torch.set_num_threads(a.threads)
    model = medfm.create_model({"name": "medfm-base",
                                "modalities": {"fundus": {"size": 224, "init": {"path": str(st), "format": "timm"}}}})
    ckpt = work / "ckpt"
    model.save_pretrained(ckpt)
    t = time.perf_counter()
    export_model(ckpt, "onnx", work / "onnx")
    print(f"\nONNX export of the ViT-B tower: {time.perf_counter() - t:.1f} s, "
          f"{(work / 'onnx' / 'fundus.onnx').stat().st_size / 2**20:.0f} MiB")
    fused = work / "onnx_fused"
    export_model(ckpt, "onnx", fused, fuse=True)
    sessions = {"onnxruntime (CPU EP, as exported)": ort_session(work / "onnx" / "fundus.onnx", a.threads),
                "onnxruntime (CPU EP, --onnxruntime-fusions)": ort_session(fused / "fundus.onnx", a.threads)}
    model.eval()
    x = torch.randn(a.batch, 3, 224, 224)
    with torch.inference_mode():
        want = model.encode("fundus", x)
        flops = count_flops(lambda: model.encode("fundus", x))  # FLOPs (2 per multiply-add), attention included
    diffs = {k: float(np.abs(s.run(None, {"x": x.numpy()})[0] - want.numpy()).max()) for k, s in sessions.items()}

    def eager():
        with torch.inference_mode():
            model.encode("fundus", x)
    sides = {"pytorch (eager, fp32)": eager}
    sides.update({k: (lambda s=s: s.run(None, {"x": x.numpy()})) for k, s in sessions.items()})
    for fn in sides.values():
        fn()  # warm-up
    times = interleaved(sides, a.reps)
    base = times["pytorch (eager, fp32)"]
    print(f"\nembedding throughput, batch {a.batch} × 3×224², {a.threads} thread(s), {a.reps} interleaved rounds, "
          f"{flops / a.batch / 1e9:.1f} GFLOP/image (FLOPs, attention included)")
    print("| runtime | s / batch (wall) | CPU s / batch | images / s | GFLOP/s | ×pytorch (per round) | max abs diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    timings = {}
    for name, t in times.items():
        w, c = statistics.median(x[0] for x in t), statistics.median(x[1] for x in t)
        timings[name] = w
        print(f"| {name} | {w:.3f} | {c:.3f} | {a.batch / w:.2f} | {flops / w / 1e9:.1f} | {ratio_range(t, base)} | "
              f"{diffs.get(name, 0.0):.1e} |")
    print(machine_line(a.threads)[0] + " (after)")
    diff = max(diffs.values())
    print(json.dumps({"import": rows, "throughput_s_per_batch": timings, "onnx_max_abs_diff": diff}))


if __name__ == "__main__":
    main()
