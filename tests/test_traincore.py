"""The training core shared by pretraining and fine-tuning, the FineTunedModel type, the layer
rule between models and finetune, and the one rule for relative paths in a config."""
from __future__ import annotations

import json
import shutil
import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from toy_cohort import write_toy_manifest

import medfm
from medfm.data import ManifestDataset, MultiModalCollate, read_manifest
from medfm.errors import ConfigError
from medfm.finetune import FineTunedModel, TaskHead, TaskSpec, apply_lora, finetune
from medfm.finetune.layout import finetune_meta
from medfm.train import Trainer
from medfm.train.loop import TrainCore, build_optimizer
from medfm.paths import config_path
from medfm.train.schedule import cosine_with_warmup, no_decay_names

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the core
def _batch(x, y, skipped=0):
    return {"id": [str(i) for i in range(len(x))], "x": x, "y": y, "n_skipped": skipped, "errors": [1] * skipped}


def _mse(model, batch):
    return {"loss": ((model(batch["x"]) - batch["y"]) ** 2).mean(), "n": float(len(batch["id"]))}


def test_accumulated_step_equals_one_step_on_the_whole_batch():
    """Two micro-batches of 8 with accumulation 2 = one AdamW step (with clipping) on the 16:
    compared with torch's own AdamW + clip_grad_norm_ on a copy of the model."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 1))
    ref, start = copy.deepcopy(model), copy.deepcopy(model)
    x, y = torch.randn(16, 5), torch.randn(16, 1)
    opt = build_optimizer(model, 1e-2, 0.1)
    core = TrainCore(model, opt, cosine_with_warmup(opt, 0, 10), device=torch.device("cpu"), accumulation=2,
                     grad_clip=0.05)
    halves = iter([_batch(x[:8], y[:8], skipped=1), _batch(x[8:], y[8:], skipped=2)])
    res = core.step(lambda: next(halves), _mse)

    ref_opt = torch.optim.AdamW([p for p in ref.parameters()], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    # the reference policy by hand: decay on the two Linear weights only
    ref_opt.param_groups[0]["params"] = [ref[0].weight, ref[2].weight]
    ref_opt.param_groups[0]["weight_decay"] = 0.1
    ref_opt.add_param_group({"params": [ref[0].bias, ref[1].weight, ref[1].bias, ref[2].bias], "weight_decay": 0.0})
    loss = ((ref(x) - y) ** 2).mean()
    loss.backward()
    loss = float(loss.detach())
    norm = torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 0.05)
    ref_opt.step()
    assert res.grad_norm == pytest.approx(float(norm), rel=1e-5)
    assert res.logs["loss"] == pytest.approx(loss, rel=1e-5) and res.logs["n"] == 8.0  # means of micro-batches
    assert res.n_samples == 16 and core.skips.n_skipped == 3 and core.skips.n_errors == 3
    for a, b, a0 in zip(model.parameters(), ref.parameters(), start.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert a.grad is None and not torch.equal(a, a0)  # moved, and gradients zeroed after the step


def test_one_core_drives_pretraining_and_finetuning(tmp_path, monkeypatch):
    calls = []
    real = TrainCore.step

    def counting(self, next_batch, compute):
        calls.append(type(self.model).__name__)
        return real(self, next_batch, compute)

    monkeypatch.setattr(TrainCore, "step", counting)
    manifest = write_toy_manifest(tmp_path / "m.csv", n=48)
    torch.manual_seed(0)
    # one modality: a masked objective (CLIP with nothing to pair would fail the run: medfm.data.skips)
    trainer = Trainer({"model": {"name": "medfm-tiny", "modalities": {"toy": {}}},
                       "data": {"manifest": str(manifest), "batch_size": 16, "split": None},
                       "objectives": [{"name": "masked"}], "optim": {"warmup_steps": 1},
                       "train": {"max_steps": 3, "checkpoint_every": 0, "tensorboard": False, "progress": False}},
                      tmp_path / "pre")
    trainer.fit()
    # pretraining steps the task module: the model and its objectives (objectives may own parameters)
    assert calls == ["PretrainTask"] * 3 and trainer.core.model.model is trainer.model
    r = finetune({"base": str(tmp_path / "pre"), "data": {"manifest": str(manifest), "split_column": None,
                                                          "batch_size": 16},
                  "optim": {"epochs": 1}, "eval": {"n_boot": 0}, "progress": False, "tensorboard": True},
                 tmp_path / "ft")
    n_train_batches = -(-r["n_samples"]["train"] // 16)
    assert calls[3:] == ["FineTunedModel"] * n_train_batches
    # one logging policy: JSON lines + TensorBoard scalars from the same MetricsLog
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "ft" / "tb"))
    acc.Reload()
    (point,) = acc.Scalars("finetune/train_loss")
    assert point.step == 1 and point.value == pytest.approx(r["history"][0]["train_loss"], rel=1e-6)
    # pretraining's groups: nothing of the no-decay policy decays
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    skip = set(no_decay_names(trainer.model))
    assert skip and all(names[id(p)] not in skip for g in trainer.optimizer.param_groups if g["weight_decay"] > 0
                        for p in g["params"])


def _base(tmp_path):
    torch.manual_seed(0)
    base = medfm.create_model({"name": "medfm-tiny", "modalities": {"toy": {}}})
    base.save_pretrained(tmp_path / "base")
    return medfm.load_pretrained(tmp_path / "base")


def test_finetuning_optimizer_groups_follow_the_pretraining_policy(tmp_path):
    """Method ``full``: position embeddings, norms, biases and the logit scale take no decay
    (earlier fine-tuning decayed every tensor of 2+ dims, position embeddings included);
    the head takes ``head_lr``."""
    encoder = _base(tmp_path)
    head = TaskHead(["toy"], encoder.embed_dim, 3)
    task = TaskSpec.from_config({"kind": "multiclass", "label_column": "label"})
    model = FineTunedModel(encoder, head, {**task.to_dict(), "classes": ["a", "b", "c"]}, {"method": "full"})
    opt = build_optimizer(model, 1e-3, 0.05, key=lambda n, p: n.startswith("task_head."), lr_of={True: 1e-2})
    by_id = {id(p): n for n, p in model.named_parameters()}
    decayed = {by_id[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {by_id[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert any("pos_embed" in n for n in plain) and not any("pos_embed" in n for n in decayed)
    assert "encoder.logit_scale" in plain and all(model.get_parameter(n).ndim >= 2 for n in decayed)
    assert not any(".norm" in n or "norm1" in n for n in decayed)
    head_groups = [g for g in opt.param_groups if g["tag"]]
    assert head_groups and all(g["lr"] == 1e-2 for g in head_groups)
    assert {by_id[id(p)] for g in head_groups for p in g["params"]} == {n for n, _ in head.named_parameters(prefix="task_head")}


# ---------------------------------------------------------- FineTunedModel
def test_finetuned_model_is_its_own_type_and_round_trips(tmp_path):
    encoder = _base(tmp_path)
    torch.manual_seed(1)
    apply_lora(encoder, ["toy"], r=2, alpha=4)
    for n, p in encoder.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.2)  # peft starts B at zero: make the adapter do something
    head = TaskHead(["toy"], encoder.embed_dim, 3)
    task = TaskSpec(kind="multiclass", label_column="label", classes=["a", "b", "c"])
    meta = finetune_meta(tmp_path / "base", tmp_path / "ft", "lora", ["toy"], task, head)
    model = FineTunedModel(encoder, head, task, meta).eval()
    df = read_manifest(write_toy_manifest(tmp_path / "m.csv", n=8))
    ds = ManifestDataset(df, model.adapters)
    batch = MultiModalCollate(model.adapters)([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        logits, scores = model.predict(batch)
    model.save_pretrained(tmp_path / "ft")
    assert not (tmp_path / "ft" / "model.safetensors").exists()  # adapters + head only, base by reference
    back = medfm.load_pretrained(tmp_path / "ft")  # the registered checkpoint kind
    assert isinstance(back, FineTunedModel) and isinstance(back.encoder, medfm.MultiModalModel)
    assert back.task["classes"] == ["a", "b", "c"] and back.modalities == ["toy"]
    with torch.no_grad():
        torch.testing.assert_close(back.predict(batch)[0], logits)
        base_logits = head(medfm.load_pretrained(tmp_path / "base").encode_batch(batch, ["toy"]), batch["present"])
    assert not torch.allclose(base_logits, logits, atol=1e-4)  # the adapters are applied
    np.testing.assert_allclose(scores.sum(1).numpy(), 1.0, rtol=1e-5)
    back.save_merged(tmp_path / "merged")
    merged = FineTunedModel.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged.predict(batch)[0], logits, rtol=1e-4, atol=1e-5)


def test_the_base_model_knows_no_heads():
    # the import rules (models never import finetune or evaluation) are in tests/test_layering.py
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {"toy": {}}})
    assert not hasattr(model, "task_head") and not hasattr(model, "finetune_config")
    assert "task_head" not in (ROOT / "medfm" / "models" / "multimodal.py").read_text()


# ---------------------------------------------------------- relative paths
def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "m.csv").write_text("id\n")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert config_path("m.csv", tmp_path / "cfg", "data.manifest") == tmp_path / "cfg" / "m.csv"
    assert config_path("m.csv", None, "data.manifest") == Path("m.csv")  # no config file: the working directory
    assert config_path(tmp_path / "x.csv", tmp_path / "cfg", "k") == tmp_path / "x.csv"
    (tmp_path / "cwd" / "only_here.csv").write_text("id\n")
    with pytest.raises(ConfigError, match=r"data.manifest: .*only_here.csv does not exist.*working directory"):
        config_path("only_here.csv", tmp_path / "cfg", "data.manifest")


def test_finetuner_and_trainer_share_the_path_rule(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    manifest = write_toy_manifest(tmp_path / "cfg" / "m.csv", n=40)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    torch.manual_seed(0)
    trainer = Trainer({"model": {"name": "medfm-tiny", "modalities": {"toy": {}}},
                       "data": {"manifest": "m.csv", "batch_size": 8, "split": None},
                       "objectives": [{"name": "masked"}],
                       "train": {"max_steps": 1, "tensorboard": False, "progress": False}},
                      tmp_path / "pre", config_dir=tmp_path / "cfg")
    assert len(trainer.df) == len(pd.read_csv(manifest))
    trainer.fit()
    base_dir = tmp_path / "cfg" / "base"
    medfm.load_pretrained(tmp_path / "pre").save_pretrained(base_dir)
    from medfm.finetune import FineTuner

    ft = FineTuner({"base": "base", "data": {"manifest": "m.csv", "split_column": None}, "progress": False},
                   tmp_path / "ft", config_dir=tmp_path / "cfg")
    assert ft.base == base_dir and len(ft.df) == 40
    (tmp_path / "cwd" / "elsewhere.csv").write_text(manifest.read_text())
    with pytest.raises(ConfigError, match="data.manifest"):
        FineTuner({"base": "base", "data": {"manifest": "elsewhere.csv"}}, tmp_path / "ft2",
                  config_dir=tmp_path / "cfg")


@pytest.mark.parametrize("method", ["lora", "full", "linear"])
def test_directories_written_before_finetunedmodel_still_load(method, tmp_path):
    """``tests/data/finetuned_v1``: written by the earlier ``save_finetuned``; same logits now."""
    src = ROOT / "tests" / "data" / "finetuned_v1"
    shutil.copytree(src, tmp_path / "v1")
    cfg = tmp_path / "v1" / method / "config.json"  # the base is found by its relative path alone
    cfg.write_text(cfg.read_text().replace(json.loads(cfg.read_text())["finetune"]["base"], "/nowhere/base"))
    model = medfm.load_pretrained(tmp_path / "v1" / method)
    assert isinstance(model, FineTunedModel) and model.method == method
    df = read_manifest(tmp_path / "v1" / "m.csv")
    ds = ManifestDataset(df, model.adapters)
    batch = MultiModalCollate(model.adapters)([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        logits, _ = model.predict(batch)
    np.testing.assert_allclose(logits.numpy(), np.load(src / method / "expected_logits.npy"), rtol=1e-5, atol=1e-6)
    # saved again as its own type, it writes the same kind of directory, which loads to the same logits
    model.save_pretrained(tmp_path / "again")
    with torch.no_grad():
        np.testing.assert_allclose(FineTunedModel.from_pretrained(tmp_path / "again").predict(batch)[0].numpy(),
                                   logits.numpy(), rtol=1e-6, atol=1e-7)
