"""One 3D MAE pretraining step: medfm's vit tower vs MONAI's ``MaskedAutoEncoderViT`` (baseline).

Same input, patch size, encoder width/depth/heads, MLP ratio, decoder width/depth/heads
and mask ratio; both encode visible tokens only. One step = forward + MSE on masked
patches + backward + AdamW step. Each (shape, mask, implementation) runs in a fresh
process so that its peak memory (CPU: peak RSS growth over the process after model
and input are built; CUDA: ``max_memory_allocated``) is its own.

    python benchmarks/bench_mae3d.py [--device cpu|cuda] [--width 192 --depth 4 --steps 3]

Prints a table with time and memory ratios medfm / MONAI (< 1 = medfm better).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

SHAPES = {"oct (1,1,60,256,256) p3x16x16": ((60, 256, 256), (3, 16, 16)),
          "ct (1,1,160,224,224) p4x16x16": ((160, 224, 224), (4, 16, 16))}
MASKS = (0.9, 0.75)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _build(impl: str, size, patch, mask: float, a):
    import torch

    if impl == "medfm":
        import medfm
        import medfm.modalities  # noqa: F401

        mods = {"oct": {"frames": size[0], "size": list(size[1:]), "patch_size": list(patch)}}
        model = medfm.create_model({"name": "medfm-tiny", "embed_dim": 64,
                                    "trunk": {"width": a.width, "depth": a.depth, "heads": a.heads},
                                    "decoder": {"width": a.dec_width, "depth": a.dec_depth, "heads": a.dec_heads},
                                    "modalities": mods})

        def step(x):
            return model.masked_loss("oct", x, mask_ratio=mask)["loss"]
        return model, step
    from monai.networks.nets import MaskedAutoEncoderViT

    model = MaskedAutoEncoderViT(in_channels=1, img_size=size, patch_size=patch, hidden_size=a.width,
                                 mlp_dim=4 * a.width, num_layers=a.depth, num_heads=a.heads, masking_ratio=mask,
                                 decoder_hidden_size=a.dec_width, decoder_mlp_dim=4 * a.dec_width,
                                 decoder_num_layers=a.dec_depth, decoder_num_heads=a.dec_heads, qkv_bias=True)
    grid = [s // p for s, p in zip(size, patch)]

    def step(x):
        pred, m = model(x)  # pred (B, N, prod(patch)), m (B, N) 1 = masked
        b = x.shape[0]
        t = x.reshape(b, 1, grid[0], patch[0], grid[1], patch[1], grid[2], patch[2])
        t = t.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, -1, pred.shape[-1])
        per = ((pred - t) ** 2).mean(-1)
        return (per * m).sum() / m.sum()
    return model, step


def _run(impl, size, patch, mask, a, q):
    try:
        q.put(_step_stats(impl, size, patch, mask, a))
    except BaseException as e:  # report the child's failure instead of hanging the parent
        q.put(e if isinstance(e, Exception) else RuntimeError(repr(e)))


def _step_stats(impl, size, patch, mask, a):
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(a.threads) if a.threads else None
    dev = torch.device(a.device)
    model, step = _build(impl, size, patch, mask, a)
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(1, 1, *size, device=dev)
    base = _rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    times = []
    for i in range(a.steps + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = step(x)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:  # first step is warm-up (allocations, optimizer state)
            times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        mem = (torch.cuda.max_memory_allocated() - base_cuda) / 2 ** 20
    else:
        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return statistics.median(times), mem, float(loss)


def measure(impl, size, patch, mask, a):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run, args=(impl, size, patch, mask, a, q))
    p.start()
    out = q.get()
    p.join()
    if isinstance(out, Exception):
        raise out
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--dec-width", type=int, default=96)  # MONAI 3D sin-cos needs multiples of 6
    ap.add_argument("--dec-depth", type=int, default=1)
    ap.add_argument("--dec-heads", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    print(f"device={a.device} encoder {a.width}w x {a.depth}d x {a.heads}h, decoder {a.dec_width}w x {a.dec_depth}d; "
          f"median of {a.steps} steps after 1 warm-up; baseline = MONAI MaskedAutoEncoderViT")
    hdr = f"{'volume':32s} {'mask':>5s} {'MONAI s':>8s} {'medfm s':>8s} {'time x':>7s} {'MONAI MiB':>10s} {'medfm MiB':>10s} {'mem x':>6s}"
    print(hdr)
    print("-" * len(hdr))
    for label, (size, patch) in SHAPES.items():
        for mask in MASKS:
            tb, mb, _ = measure("monai", size, patch, mask, a)
            tm, mm, _ = measure("medfm", size, patch, mask, a)
            print(f"{label:32s} {mask:5.2f} {tb:8.3f} {tm:8.3f} {tm / tb:7.2f} {mb:10.0f} {mm:10.0f} {mm / max(mb, 1e-9):6.2f}")


if __name__ == "__main__":
    main()
