"""Per-step communication volume of the contrastive feature gather and logits memory per rank.

Run by hand: ``python benchmarks/scaling_volumes.py``; prints the tables of docs/scaling.md.

Per rank and step, for each of the 2 modalities of a pair: the forward all-gather (with gradient)
of ``(B, D)`` features receives ``(W-1)·B·D`` values and the backward (a reduce-scatter of the
gathered gradient under NCCL) sends as many: ``2·(W-1)·B·D`` values per modality, fp32 = 4 bytes.
Logits memory per rank: each rank keeps its ``B`` rows × ``W·B`` columns for both directions plus
their log-softmax (4 matrices) in the distributed path.
"""


def mib(x: float) -> str:
    return f"{x / 2**20:,.1f}"


def main() -> None:
    dims = (256, 512, 1024)
    worlds = (8, 16, 32, 64, 128, 256)
    for label, batch in (("per-rank batch B = 256", lambda w: 256), ("global batch 32,768", lambda w: 32768 // w)):
        print(f"\nfeature gather, MiB sent+received per rank per step (2 modalities, fp32), {label}")
        print(f"{'ranks':>6} {'B/rank':>7} {'global':>8} " + " ".join(f"{'D=' + str(d):>10}" for d in dims)
              + f" {'logits MiB/rank':>16}")
        for w in worlds:
            b = batch(w)
            vol = [2 * 2 * (w - 1) * b * d * 4 for d in dims]
            print(f"{w:>6} {b:>7} {w * b:>8} " + " ".join(f"{mib(v):>10}" for v in vol)
                  + f" {mib(4 * b * w * b * 4):>16}")


if __name__ == "__main__":
    main()
