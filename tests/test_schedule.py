"""The training loop at small scale: time-fitted schedules, weight-decay groups, logit-scale clamp."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import medfm
from medfm.cli import main
from medfm.train.schedule import WarmupCosine, build_optimizer, no_decay_names, param_groups
from test_train import metrics, write_config
from toy_cohort import write_toy_manifest


def _opt(lr=1.0):
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2, 2))], lr=lr)


def _legacy(step, warmup, total, min_ratio=0.0):
    """The step schedule medfm always had (LambdaLR factor)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    p = min(max((step - warmup) / max(1, total - warmup), 0.0), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))


@pytest.mark.parametrize("warmup,total,min_ratio", [(10, 100, 0.0), (0, 30, 0.1), (5, 5, 0.0)])
def test_step_schedule_is_unchanged_without_a_budget(warmup, total, min_ratio):
    opt = _opt()
    sched = WarmupCosine(opt, warmup, total, min_ratio)
    for step in range(total + 3):
        assert opt.param_groups[0]["lr"] == pytest.approx(_legacy(step, warmup, total, min_ratio)), step
        opt.step()
        sched.step()


def test_time_budget_fits_warmup_and_decay_to_the_budget():
    """A recipe with 2,000 warm-up steps of 100,000, run for 10 min at 1 s/step (600 steps):
    warm-up ends by 10 % of the budget, the LR peaks at the base LR and is at its minimum
    when the budget is spent — the old step schedule would still be at 30 % of warm-up."""
    clock = {"t": 0.0}
    opt = _opt(lr=1e-3)
    sched = WarmupCosine(opt, 2000, 100_000, 0.05, budget_s=600.0, elapsed=lambda: clock["t"])
    lrs = []
    for step in range(600):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        clock["t"] += 1.0
        sched.step()
    lrs.append(opt.param_groups[0]["lr"])
    peak = int(torch.tensor(lrs).argmax())
    assert peak <= 61, peak
    assert max(lrs) == pytest.approx(1e-3, rel=1e-3)
    assert lrs[-1] == pytest.approx(0.05 * 1e-3, rel=1e-6)          # the minimum at the end of the budget
    assert all(a >= b - 1e-12 for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # monotone decay after the peak
    assert _legacy(600, 2000, 100_000) < 0.31                       # what the step schedule would give
    # a slower machine (2 s/step) follows the same time curve: minimum after 300 steps
    clock["t"] = 0.0
    opt = _opt(lr=1e-3)
    sched = WarmupCosine(opt, 2000, 100_000, 0.0, budget_s=600.0, elapsed=lambda: clock["t"])
    for _ in range(300):
        opt.step()
        clock["t"] += 2.0
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    # the state dict holds plain numbers only (checkpoints load with weights_only=True)
    state = sched.state_dict()
    assert "_elapsed" not in state and state["budget_s"] == 600.0


def test_trainer_ends_a_time_budget_at_the_minimum_lr(tmp_path):
    manifest = write_toy_manifest(tmp_path / "m.csv", n=48)
    cfg = write_config(tmp_path, manifest, objectives=[{"name": "clip", "weight": 1.0}], max_steps=100_000,
                       checkpoint_every=0)
    # train.max_minutes bounds the whole command, start-up included (medfm.clock): load the modality
    # readers (scipy & co., seconds when cold) first, so the 2.4 s below are the run's, not the imports'
    medfm.get_modality("toy")
    assert main(["pretrain", str(cfg), "--out", str(tmp_path / "out"), "--set", "train.max_minutes=0.04",
                 "--set", "optim.warmup_steps=2000", "--set", "optim.lr=1e-3"]) == 0
    m = metrics(tmp_path / "out")
    lrs = [r["lr"] for r in m]
    assert len(m) >= 5, len(m)
    assert max(lrs) > 0.9e-3          # warm-up finished inside the budget (the step schedule: ≤ len/2000)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9)   # and the cosine reached its minimum at the end
    meta = json.loads((tmp_path / "out" / "config.json").read_text())
    assert meta["training"]["steps"] == len(m)


def test_weight_decay_groups():
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {"dna": {"k": 4, "max_length": 60},
                                                                    "text": {}}})
    skip = set(no_decay_names(model))
    names = dict(model.named_parameters())
    must_skip = ["logit_scale", "logit_bias", "towers.dna.embedder.embed.weight", "towers.dna.embedder.pos_embed",
                 "towers.dna.trunk.norm.weight", "towers.dna.trunk.norm.bias", "towers.dna.trunk.blocks.0.norm1.weight",
                 "towers.dna.trunk.blocks.0.attn.qkv.bias"]
    must_skip += [n for n in names if n.startswith("towers.text") and ("embeddings" in n or "LayerNorm" in n
                                                                       or n.endswith(".bias"))]
    must_decay = ["towers.dna.trunk.blocks.0.attn.qkv.weight", "towers.dna.trunk.blocks.0.mlp.fc1.weight",
                  "projections.dna.weight", "towers.dna.mlm_head.0.weight"]
    must_decay += [n for n in names if n.startswith("towers.text") and n.endswith("dense.weight")]
    for n in must_skip:
        assert n in names and n in skip, n
    for n in must_decay:
        assert n in names and n not in skip, n
    assert any(n.startswith("towers.text") and "word_embeddings" in n for n in skip)
    groups = param_groups(model, 0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(names)
    # decay really is zero on the skipped group: AdamW leaves an embedding untouched when its gradient is 0
    opt = build_optimizer(model, lr=1.0, weight_decay=0.5)
    emb = model.towers["dna"].embedder.embed.weight
    fc1 = model.towers["dna"].trunk.blocks[0].mlp.fc1.weight
    before_emb, before_fc = emb.detach().clone(), fc1.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(emb, before_emb)
    assert not torch.equal(fc1, before_fc)


def test_logit_scale_is_clamped_at_100(tmp_path):
    manifest = write_toy_manifest(tmp_path / "m.csv", n=32)
    cfg = write_config(tmp_path, manifest, objectives=[{"name": "clip", "weight": 1.0}], max_steps=2,
                       checkpoint_every=0)
    assert main(["pretrain", str(cfg), "--out", str(tmp_path / "o"), "--set", "model.init_logit_scale=6.0"]) == 0
    model = medfm.load_pretrained(tmp_path / "o")
    assert float(model.logit_scale.detach()) <= math.log(100) + 1e-6
    assert float(model.logit_scale.detach()) > math.log(100) - 0.1   # clamped from above, not reset
