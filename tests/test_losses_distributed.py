"""2 CPU ranks on gloo equal one process on the concatenated batch (losses and gradients).

Each rank holds half of a fixed batch, projects it with a tiny linear layer wrapped in
DDP, and computes its share of the loss (local rows × gathered columns). The mean of
the rank losses must equal the single-process loss; the DDP-averaged parameter
gradients must equal the single-process ones; and a rank's gradient w.r.t. its own
features, divided by the world size (DDP averages), must equal the single-process
gradient of those rows. Presence masks leave different numbers of valid rows per rank.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from medfm.objectives import gram_loss, multimodal_contrastive_loss


pytestmark = pytest.mark.usefixtures("one_thread")

WORLD = 2
B_LOCAL = 6
CASES = {
    "clip": dict(kind="clip"),
    "siglip": dict(kind="siglip"),
    "label_clip": dict(kind="clip", labels=True),
    "label_siglip": dict(kind="siglip", labels=True),
    "label_hardneg_clip": dict(kind="clip", labels=True, hard_negative_beta=1.5),
    "anchored_clip": dict(kind="clip", mode="anchored", anchor="b"),
    "gram": dict(kind="gram"),
}


class Tower(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(5, 4)
        self.b = nn.Linear(3, 4)
        self.c = nn.Linear(3, 4)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-1.0))

    def forward(self, xa, xb, xc):
        """Embeddings, plus scale and bias passed through forward as open_clip does (DDP sees them used)."""
        emb = {"a": F.normalize(self.a(xa), dim=-1), "b": F.normalize(self.b(xb), dim=-1),
               "c": F.normalize(self.c(xc), dim=-1)}
        return emb, self.logit_scale * 1.0, self.logit_bias * 1.0


def fixed_batch():
    g = torch.Generator().manual_seed(1)
    n = WORLD * B_LOCAL
    x = (torch.randn(n, 5, generator=g), torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g))
    present = {k: torch.ones(n, dtype=torch.bool) for k in "abc"}
    present["b"][[1, 8, 9]] = False          # rank 0 keeps 5 rows of a-b, rank 1 keeps 4
    present["c"][[0, 2, 3, 7]] = False       # rows with all three: rank 0 has 2, rank 1 has 3
    labels = torch.tensor([0, 1, 0, 2, -1, 1, 2, 0, 1, -1, 2, 0])
    return x, present, labels


def run_case(model, x, present, labels, case, rows=slice(None)):
    """Loss, embeddings (retain_grad) on the given rows."""
    kw = dict(CASES[case])
    use_labels = kw.pop("labels", False)
    emb, scale, bias = model(*(t[rows] for t in x))
    for z in emb.values():
        z.retain_grad()
    pres = {k: v[rows] for k, v in present.items()}
    if kw["kind"] == "gram":
        loss, _ = gram_loss(emb, pres, scale, anchor="a")
    else:
        loss, _ = multimodal_contrastive_loss(
            emb, pres, scale, bias if kw["kind"] == "siglip" else None,
            labels=labels[rows] if use_labels else None, **kw,
        )
    return loss, emb


def grads(model, emb, loss):
    core = getattr(model, "module", model)
    out = {f"param.{n}": p.grad.clone() for n, p in core.named_parameters() if p.grad is not None}
    out.update({f"feat.{k}": z.grad.clone() for k, z in emb.items()})
    out["loss"] = loss.detach().clone()
    return out


def worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        x, present, labels = fixed_batch()
        model = nn.parallel.DistributedDataParallel(Tower(), find_unused_parameters=True)  # no bias in CLIP
        rows = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        results = {}
        for case in CASES:
            model.zero_grad(set_to_none=True)
            loss, emb = run_case(model, x, present, labels, case, rows)
            loss.backward()
            results.update({f"{case}/{k}": v for k, v in grads(model, emb, loss).items()})
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_single_process(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    x, present, labels = fixed_batch()
    for case in CASES:
        model = Tower()
        loss, emb = run_case(model, x, present, labels, case)
        loss.backward()
        ref = grads(model, emb, loss)
        mean_loss = sum(r[f"{case}/loss"] for r in ranks) / WORLD
        torch.testing.assert_close(mean_loss, ref["loss"], msg=f"{case}: loss")
        for key, value in ref.items():
            if key.startswith("param."):
                for r in ranks:  # DDP has averaged the gradients: identical on both ranks
                    torch.testing.assert_close(r[f"{case}/{key}"], value, msg=f"{case}: {key}")
            elif key.startswith("feat."):
                joined = torch.cat([r[f"{case}/{key}"] for r in ranks]) / WORLD
                torch.testing.assert_close(joined, value, msg=f"{case}: {key}")
        assert ref["param.a.weight"].abs().sum() > 0 and ref["param.logit_scale"].abs() > 0
