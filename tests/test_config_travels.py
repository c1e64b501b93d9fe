"""The typed config travels: one vocabulary for pretraining and fine-tuning (shared ``data``, ``optim`` and
``train`` sections), keys of the previous release moved with a warning naming the new key, fine-tuning
with the shared loop options (betas, accumulation, precision), objectives that own parameters (a plug-in
through the ``medfm.objectives`` entry point: trained, saved, resumed), and ``medfm info --config-schema``
showing each shared section once."""
from __future__ import annotations

import json
import sys
import textwrap
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from toy_cohort import write_toy_manifest

import medfm
from medfm import plugins, registry, schema
from medfm.cli import main
from medfm.errors import CheckpointError, ConfigError
from medfm.finetune import FineTuner, finetune
from medfm.finetune.config_schema import FinetuneConfig, parse_finetune_config
from medfm.train import Trainer
from medfm.train.resume_checkpoint import load_trainer_state
from medfm.train.run_config import RunConfig, parse_run_config
from medfm.train.sections import DataConfig, LoopConfig, OptimConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Deprecation warnings are shown once per process: start from none shown."""
    monkeypatch.setattr(schema, "_WARNED", set())


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """48 rows, 2 per patient: 32 train, 8 val, 8 test (by patient), and a base checkpoint."""
    d = tmp_path_factory.mktemp("travels")
    path = write_toy_manifest(d / "m.csv", n=48)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df["split"] = ["train" if i < 32 else "val" if i < 40 else "test" for i in range(len(df))]
    df.to_csv(path, index=False)
    torch.manual_seed(0)
    medfm.create_model({"name": "medfm-tiny", "modalities": {"toy": {}, "toyb": {"channels": 3}}}).save_pretrained(
        d / "base")
    return {"dir": d, "manifest": path, "base": d / "base"}


def _ft(cohort, **sections):
    cfg = {"base": str(cohort["base"]), "modalities": ["toy"], "method": "linear",
           "data": {"manifest": str(cohort["manifest"]), "batch_size": 16},
           "optim": {"lr": 1e-2}, "train": {"epochs": 1, "progress": False, "device": "cpu"}, "eval": {"n_boot": 0}}
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


# ------------------------------------------------------------------ one vocabulary
def test_both_configs_use_the_shared_sections():
    run = parse_run_config({"data": {"manifest": "m.csv"}})
    ft = parse_finetune_config({"base": "b", "data": {"manifest": "m.csv"}})
    for cfg in (run, ft):
        assert isinstance(cfg.data, DataConfig) and isinstance(cfg.optim, OptimConfig)
        assert isinstance(cfg.train, LoopConfig)
    # one runner's own fields stay its own
    assert hasattr(run.train, "max_steps") and not hasattr(ft.train, "max_steps")
    assert hasattr(ft.train, "epochs") and not hasattr(run.train, "epochs")
    # fine-tuning keeps its defaults: fp32, torch's AdamW betas, no warm-up, no TensorBoard
    assert (ft.train.precision, tuple(ft.optim.betas), ft.optim.warmup_steps, ft.train.tensorboard) == \
        ("fp32", (0.9, 0.999), 0, False)
    assert (run.train.precision, tuple(run.optim.betas)) == ("auto", (0.9, 0.95))
    # the shared checks apply to both
    for bad in ({"optim": {"betas": [0.9, 1.0]}}, {"train": {"accumulation": 0}}, {"data": {"limits": {"max_file_mb": 0}}}):
        with pytest.raises(ConfigError):
            parse_finetune_config({"base": "b", "data": {"manifest": "m.csv", **bad.get("data", {})},
                                   **{k: v for k, v in bad.items() if k != "data"}})


def test_a_config_with_old_keys_warns_naming_the_new_key_and_still_runs(cohort, tmp_path, fresh_warnings):
    old = {"base": str(cohort["base"]), "modalities": ["toy"], "method": "linear", "columns": {"toy": "toy"},
           "data": {"manifest": str(cohort["manifest"]), "batch_size": 16},
           "optim": {"lr": 1e-2, "epochs": 2, "patience": 0, "monitor": "accuracy"},
           "eval": {"n_boot": 0}, "progress": False, "device": "cpu", "seed": 3, "tensorboard": False}
    with pytest.warns(FutureWarning) as caught:
        result = finetune(old, tmp_path / "old")
    said = " | ".join(str(w.message) for w in caught)
    for old_key, new_key in (("optim.epochs", "train.epochs"), ("optim.patience", "train.patience"),
                             ("optim.monitor", "train.monitor"), ("columns", "data.columns"),
                             ("progress", "train.progress"), ("device", "train.device"), ("seed", "train.seed"),
                             ("tensorboard", "train.tensorboard")):
        assert f"{old_key} is deprecated; write {new_key} instead" in said
    assert result["epochs_run"] == 2 and result["monitor"] == "accuracy"
    recorded = json.loads((tmp_path / "old" / "finetune_config.json").read_text())
    assert recorded["train"]["epochs"] == 2 and recorded["train"]["seed"] == 3 and "epochs" not in recorded["optim"]
    assert recorded["data"]["columns"] == {"toy": "toy"} and "columns" not in recorded
    # the same run written with the new keys warns nothing and gives the same result
    new = _ft(cohort, train={"epochs": 2, "patience": 0, "monitor": "accuracy", "seed": 3, "tensorboard": False},
              data={"columns": {"toy": "toy"}})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        again = finetune(new, tmp_path / "new")
    assert again["val"] == result["val"] and again["history"] == result["history"]
    with pytest.raises(ConfigError, match="optim.epochs and train.epochs are both set"):
        parse_finetune_config({**new, "optim": {"epochs": 3}})


def test_cli_set_of_an_old_key_warns_and_overrides_the_new_key_of_the_file(cohort, tmp_path, capsys, fresh_warnings):
    """``--set optim.epochs=1`` on a recipe that writes ``train.epochs`` (a shipped recipe, an old habit)."""
    (tmp_path / "ft.yaml").write_text(json.dumps(_ft(cohort, train={"epochs": 3})))
    with pytest.warns(FutureWarning, match="optim.epochs is deprecated; write train.epochs instead"):
        rc = main(["finetune", str(tmp_path / "ft.yaml"), "--out", str(tmp_path / "o"), "--set", "optim.epochs=1",
                   "--set", "columns.toy=toy"])
    assert rc == 0
    recorded = json.loads((tmp_path / "o" / "finetune_config.json").read_text())
    assert recorded["train"]["epochs"] == 1 and recorded["data"]["columns"] == {"toy": "toy"}
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epochs_run"] == 1


# ------------------------------------------------------------- fine-tuning has the loop options
def test_finetune_takes_betas_precision_and_accumulation_from_the_shared_sections(cohort, tmp_path):
    ft = FineTuner(_ft(cohort, optim={"betas": [0.5, 0.75]}, train={"accumulation": 2, "precision": "bf16"}),
                   tmp_path / "opts")
    try:
        core = ft._core(4)
        assert all(tuple(g["betas"]) == (0.5, 0.75) for g in core.optimizer.param_groups)
        assert core.accumulation == 2 and core.precision == "bf16" and core.scheduler.total_steps == 2
    finally:
        ft.close()


def test_accumulating_two_half_batches_is_one_full_batch(cohort, tmp_path):
    """32 training rows: batches of 16, or of 8 accumulated in pairs, take the same steps on the same rows."""
    def trained(name, batch_size, **train):
        cfg = _ft(cohort, method="full", optim={"lr": 1e-3, "grad_clip": None}, train={"epochs": 1, **train},
                  data={"batch_size": batch_size})
        torch.manual_seed(0)
        result = finetune(cfg, tmp_path / name)
        state = load_file(str(tmp_path / name / "finetuned.safetensors"))
        return result, state

    whole, a = trained("whole", 16)
    halves, b = trained("halves", 8, accumulation=2)
    assert whole["history"][0]["train_loss"] == pytest.approx(halves["history"][0]["train_loss"], rel=1e-5)
    assert a.keys() == b.keys()
    # two AdamW steps of lr 1e-3 each: the same steps agree to float rounding (AdamW's normalisation
    # magnifies it where a gradient is near 0), other steps differ by the size of a step
    same = max(float((a[k] - b[k]).abs().max()) for k in a)
    _, c = trained("eights", 8)  # 4 steps of 8 rows: what accumulation must not do
    other = max(float((a[k] - c[k]).abs().max()) for k in a)
    assert same < 5e-5 and other > 5e-4, (same, other)


# ------------------------------------------------------------- objectives own parameters
PLUGIN = '''
"""A throw-away objective that owns parameters: a predictor of one modality's embedding from another's."""
import torch
from torch import nn

from medfm.objectives import cached_embeddings
from medfm.registry import register_objective


@register_objective("predictor")
class PredictorObjective(nn.Module):
    def __init__(self, source: str = "toy", target: str = "toyb", dim: int = 256):
        super().__init__()
        self.source, self.target = source, target
        self.head = nn.Linear(dim, dim)

    def forward(self, model, batch, cache=None):
        emb = cached_embeddings(model, batch, cache)
        both = (batch["present"][self.source] & batch["present"][self.target]).to(emb[self.source].device)
        pred = self.head(emb[self.source][both])
        loss = ((pred - emb[self.target][both]) ** 2).sum(-1).mean() if bool(both.any()) else pred.sum() * 0
        return {"loss": loss}
'''


@pytest.fixture
def predictor_plugin(tmp_path, monkeypatch):
    """The objective installed as a distribution with a ``medfm.objectives`` entry point; unregistered after."""
    registry.OBJECTIVES.names()  # the built-ins are loaded first, as in any process
    site = tmp_path / "site"
    info = site / "medfm_predictor_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "medfm_predictor_plugin.py").write_text(textwrap.dedent(PLUGIN))
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: medfm-predictor-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[medfm.objectives]\npredictor = medfm_predictor_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    assert "predictor" not in registry.OBJECTIVES
    plugins.load_objectives()  # what the registry runs on first use: built-ins + entry points
    try:
        yield
    finally:
        registry.OBJECTIVES._items.pop("predictor", None)
        sys.modules.pop("medfm_predictor_plugin", None)


def _run_cfg(manifest: Path, steps: int, **train) -> RunConfig:
    return parse_run_config({
        "model": {"name": "medfm-tiny", "modalities": {"toy": {}, "toyb": {"channels": 3}}},
        "data": {"manifest": str(manifest), "batch_size": 8, "split": None},
        "objectives": [{"name": "clip"}, {"name": "predictor", "weight": 0.5, "dim": 64}],
        "optim": {"lr": 1e-2, "warmup_steps": 0},
        "train": {"max_steps": steps, "checkpoint_every": 2, "keep_checkpoints": 5, "tensorboard": False,
                  "progress": False, "device": "cpu", **train}})


def test_an_objective_with_parameters_trains_saves_and_resumes(predictor_plugin, cohort, tmp_path):
    manifest = cohort["manifest"]
    # 4 steps in one go
    straight = Trainer(_run_cfg(manifest, 4), tmp_path / "straight")
    start = {k: v.clone() for k, v in straight.task.objective.state_dict().items()}
    assert any(n.startswith("objective.") for n in straight.task.state_parameters())
    opt_params = {id(p) for g in straight.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in opt_params for p in straight.task.objective.parameters())  # the optimizer sees them
    straight.fit()
    final = load_file(str(tmp_path / "straight" / "objectives.safetensors"))
    assert final.keys() == start.keys() and any(not torch.equal(final[k], start[k]) for k in final)  # trained
    ckpt = tmp_path / "straight" / "checkpoints" / "step_00000002"
    assert (ckpt / "objectives.safetensors").is_file()
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    assert "objective.objectives.1.head.weight" in state["optimizer"]["state"]  # its moments are saved by name

    # the run interrupted after step 2 (its later checkpoint gone), resumed to 4: the objective's parameters
    # and moments come back exactly, so it ends where the uninterrupted run ended
    import shutil
    shutil.rmtree(tmp_path / "straight" / "checkpoints" / "step_00000004")
    at_two = load_file(str(ckpt / "objectives.safetensors"))
    again = Trainer(_run_cfg(manifest, 4), tmp_path / "straight")
    assert again.resume_from == ckpt
    with torch.no_grad():
        for p in again.task.objective.parameters():
            p.add_(1.0)  # whatever the objective holds before the restore
    again._restore()
    for k, v in again.task.objective.state_dict().items():
        assert torch.equal(v, at_two[k]), k
    again._resume_state = load_trainer_state(ckpt)  # fit restores once more, from the same state
    again.fit()
    resumed = load_file(str(tmp_path / "straight" / "objectives.safetensors"))
    for k in final:
        torch.testing.assert_close(resumed[k], final[k], rtol=1e-5, atol=1e-6)

    # a checkpoint without the objectives' tensors is refused, naming the file
    (tmp_path / "straight" / "checkpoints" / "step_00000004" / "objectives.safetensors").unlink()
    with pytest.raises(CheckpointError, match="objectives.safetensors"):
        Trainer(_run_cfg(manifest, 6), tmp_path / "straight").fit()


# ------------------------------------------------------------------------- info
def test_info_config_schema_shows_each_shared_section_once(capsys):
    assert main(["info", "--config-schema"]) == 0
    out = capsys.readouterr().out
    fields = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    for shared in ("optim.lr", "data.root", "data.confine_paths", "data.limits.max_file_mb", "data.columns",
                   "train.device", "train.precision", "train.accumulation", "optim.betas"):
        assert shared in fields, shared
    for once in ("optim.lr", "data.root", "data.limits.max_file_mb", "data.columns", "train.device",
                 "train.accumulation", "data.batch_size"):
        assert fields.count(once) == 1, once
    run = out[out.index("\nrun config ("):out.index("\nfinetune config (")]
    ft = out[out.index("\nfinetune config ("):out.index("\nmodel config (")]
    for section in ("DataConfig", "OptimConfig", "LoopConfig"):
        assert f"the shared {section}" in run and f"the shared {section}" in ft
    assert "train.max_steps" in run and "train.epochs" in ft and "train.epochs" not in run
    # a shared field with another default in one config says both
    assert "optim.betas" in ft and "default here [0.9, 0.999] (shared [0.9, 0.95])" in ft
    assert main(["info", "--config-schema", "finetune", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data) == ["shared", "finetune"]
    assert {r["field"] for r in data["shared"]} >= {"data.root", "optim.lr", "train.seed"}
    assert "data.root" not in {r["field"] for r in data["finetune"]}


def test_a_base_modality_without_a_column_is_named_not_dropped_silently(cohort, tmp_path, caplog):
    """``modalities:`` unset: every base modality with a column is fine-tuned; one without is named in a
    warning that says how to map it, and ``data.columns`` maps it."""
    df = pd.read_csv(cohort["manifest"], dtype=str, keep_default_na=False).rename(columns={"toyb": "signal_b"})
    df.to_csv(tmp_path / "renamed.csv", index=False)
    cfg = _ft(cohort, modalities=None, data={"manifest": str(tmp_path / "renamed.csv")})
    with caplog.at_level("WARNING", logger="medfm.finetune"):
        ft = FineTuner(cfg, tmp_path / "one")
    ft.close()
    assert ft.modalities == ["toy"]
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "'toyb'" in said and "'signal_b'" not in said and "data.columns: {toyb: COLUMN}" in said
    both = FineTuner(_ft(cohort, modalities=None, data={"manifest": str(tmp_path / "renamed.csv"),
                                                        "columns": {"toyb": "signal_b"}}), tmp_path / "two")
    both.close()
    assert both.modalities == ["toy", "toyb"] and both.columns == {"toy": "toy", "toyb": "signal_b"}


def test_a_step_cut_short_by_the_end_of_the_data_is_the_mean_of_what_it_had():
    """With accumulation 3 and two batches left, the step's gradient is their mean (not 2/3 of it): the same
    update as accumulation 2 over those batches; the reported loss is their mean too."""
    from medfm.train.loop import TrainCore

    torch.manual_seed(0)
    xs = [torch.randn(4, 3) for _ in range(2)]

    def run(accumulation):
        torch.manual_seed(1)
        model = torch.nn.Linear(3, 1)
        core = TrainCore.from_config(model, LoopConfig(precision="fp32", accumulation=accumulation),
                                     OptimConfig(lr=0.1, weight_decay=0.0, warmup_steps=0, grad_clip=1e9),
                                     device=torch.device("cpu"), total_steps=1)
        batches = iter([{"id": ["a"] * 4, "x": x} for x in xs])
        res = core.step(lambda: next(batches, None), lambda m, b: {"loss": (m(b["x"]) ** 2).mean()})
        return res.logs["loss"], res.grad_norm, [p.detach().clone() for p in model.parameters()]

    loss3, norm3, short = run(3)
    loss2, norm2, full = run(2)
    assert loss3 == pytest.approx(loss2, rel=1e-6) and norm3 == pytest.approx(norm2, rel=1e-6)  # not 2/3 of it
    for a, b in zip(short, full):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="no batch"):
        run_empty = TrainCore.from_config(torch.nn.Linear(3, 1), LoopConfig(), OptimConfig(),
                                          device=torch.device("cpu"), total_steps=1)
        run_empty.step(lambda: None, lambda m, b: {"loss": m(b["x"]).sum()})
