"""One 3D MAE pretraining step: medfm's vit tower vs MONAI's ``MaskedAutoEncoderViT``, as built and with SDPA.

Same input, patch size, encoder width/depth/heads, MLP ratio, decoder width/depth/heads
and mask ratio; both encode visible tokens only. One step = forward + MSE on masked
patches + backward + AdamW step. Peers: MONAI as its constructor builds it (explicit softmax
attention: it does not pass ``use_flash_attention`` through) and MONAI with
``use_flash_attention = True`` set on every ``SABlock`` (SDPA, what its best users do).

Time: the three sides run one step each in turn (medfm, MONAI, MONAI+SDPA, medfm, ...) in one
process, so load changes hit all alike; wall and CPU seconds are medians, the speed-up is the
per-round ratio (median, min–max). FLOPs are counted with attention (analytic for CPU SDPA,
:mod:`benchmarks.measure`). Memory: peak RSS growth of one step over the process after model,
optimizer state and input are built, median of ``--mem-runs`` fresh processes per side (CPU only).

    python benchmarks/bench_mae3d.py [--device cpu|cuda] [--width 192 --depth 4 --steps 3]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.measure import count_flops, interleaved, machine_line, med, median_peak_mb, ratio_range  # noqa: E402

SHAPES = {"oct (1,1,60,256,256) p3x16x16": ((60, 256, 256), (3, 16, 16)),
          "ct (1,1,160,224,224) p4x16x16": ((160, 224, 224), (4, 16, 16)),
          "small (1,1,32,128,128) p4x16x16": ((32, 128, 128), (4, 16, 16))}  # a quick check: --shapes small
MASKS = (0.9, 0.75)


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


def _monai_sdpa(model) -> int:
    """Turn on SDPA in every MONAI attention block (MONAI's constructor does not pass the flag through):
    what a user who wants MONAI fast does. Returns the number of blocks switched."""
    from monai.networks.blocks.selfattention import SABlock

    blocks = [m for m in model.modules() if isinstance(m, SABlock)]
    for m in blocks:
        m.use_flash_attention = True
    return len(blocks)


def _setup(impl: str, size, patch, mask: float, a):
    """``(model, one_step)`` on CPU/CUDA with its optimizer; ``impl`` in IMPLS."""
    import torch

    torch.manual_seed(0)
    model, step = _build("monai" if impl.startswith("monai") else impl, size, patch, mask, a)
    if impl == "monai+sdpa":
        assert _monai_sdpa(model) > 0
    dev = torch.device(a.device)
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(1, 1, *size, device=dev)

    def one():
        opt.zero_grad(set_to_none=True)
        loss = step(x)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return loss
    one()  # warm-up: allocations, optimizer state
    return model, one


def _peak_build(impl, size, patch, mask, a):
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    return _setup(impl, size, patch, mask, a)[1]


IMPLS = ("monai", "monai+sdpa", "medfm")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--dec-width", type=int, default=96)  # MONAI 3D sin-cos needs multiples of 6
    ap.add_argument("--dec-depth", type=int, default=1)
    ap.add_argument("--dec-heads", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3, help="interleaved rounds (one step of each side per round)")
    ap.add_argument("--mem-runs", type=int, default=3, help="fresh processes per memory figure (median; 0 = skip)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--shapes", default="oct,ct", help="comma-separated: oct, ct, small")
    ap.add_argument("--masks", default=",".join(str(m) for m in MASKS))
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    line, _ = machine_line(torch.get_num_threads())
    print(line)
    print(f"device={a.device} encoder {a.width}w x {a.depth}d x {a.heads}h, decoder {a.dec_width}w x {a.dec_depth}d; "
          f"{a.steps} interleaved rounds after 1 warm-up step each; memory: median of {a.mem_runs} fresh processes; "
          f"peers: MONAI MaskedAutoEncoderViT as built (explicit softmax) and with SDPA on its blocks")
    hdr = (f"{'volume':32s} {'mask':>5s} {'side':>11s} {'GFLOP':>7s} {'wall s':>7s} {'CPU s':>7s} {'GFLOP/s':>8s} "
           f"{'MiB':>7s} {'medfm speed-up':>19s} {'medfm mem x':>11s}")
    print(hdr)
    print("-" * len(hdr))
    for label, (size, patch) in SHAPES.items():
        if label.split()[0] not in a.shapes.split(","):
            continue
        for mask in (float(m) for m in a.masks.split(",")):
            sides = {impl: _setup(impl, size, patch, mask, a)[1] for impl in IMPLS}
            flops = {impl: count_flops(fn) for impl, fn in sides.items()}
            times = interleaved(sides, a.steps)
            del sides
            mem = {impl: (median_peak_mb(_peak_build, (impl, size, patch, mask, a), runs=a.mem_runs)[0]
                          if a.mem_runs else float("nan")) for impl in IMPLS}
            for impl in IMPLS:
                t = times[impl]
                w, c = med([x[0] for x in t]), med([x[1] for x in t])
                vs = "" if impl == "medfm" else ratio_range(times["medfm"], t)
                mx = "" if impl == "medfm" else f"{mem['medfm'] / max(mem[impl], 1e-9):.2f}"
                print(f"{label:32s} {mask:5.2f} {impl:>11s} {flops[impl] / 1e9:7.1f} {w:7.3f} {c:7.3f} "
                      f"{flops[impl] / w / 1e9:8.1f} {mem[impl]:7.0f} {vs:>19s} {mx:>11s}", flush=True)
    print(machine_line(torch.get_num_threads())[0] + " (after)")


if __name__ == "__main__":
    main()
