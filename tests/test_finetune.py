"""Cohort fine-tuning: splits, heads, the training loop, checkpoints and the CLI (toy modalities)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.utils.class_weight import compute_class_weight
from toy_cohort import write_toy_manifest

import medfm
from medfm.configs import CONFIG_DIR
from medfm.data import ManifestDataset, MultiModalCollate, read_manifest
from medfm.errors import CheckpointError, ConfigError, DataError
from medfm.finetune import (TaskSpec, assign_patients, finetune, fuse, load_finetuned, make_splits,
                            predict_loader, regression_metrics, task_loss)
from medfm.finetune.finetuner import resolve_config

FAST = {"batch_size": 16, "split_column": None, "val_fraction": 0.2, "test_fraction": 0.25, "seed": 0}


pytestmark = pytest.mark.usefixtures("one_thread")


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def cohort(path: Path, n: int = 64, seed: int = 0) -> Path:
    """The toy cohort plus a multi-label column ``dx`` and a regression column ``ef`` from the hidden class."""
    write_toy_manifest(path, n=n, seed=seed)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    cls = df["label"].str[-1].astype(int)
    df["dx"] = cls.map({0: "A", 1: "A;B", 2: "", 3: "B"})
    rng = np.random.default_rng(seed)
    df["ef"] = [f"{10.0 * (c + 1) + rng.normal(0, 1.0):.3f}" for c in cls]
    df.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ft")
    torch.manual_seed(0)
    base = medfm.create_model({"name": "medfm-tiny", "modalities": {"toy": {}, "toyb": {"channels": 3}}})
    base.save_pretrained(d / "base")
    return {"dir": d, "base": d / "base", "manifest": cohort(d / "cohort.csv"),
            "base_sha": sha256(d / "base" / "model.safetensors")}


def run(setup, name, **cfg):
    torch.manual_seed(0)
    config = {"base": str(setup["base"]), "data": {"manifest": str(setup["manifest"]), **FAST},
              "optim": {"lr": 5e-3, "epochs": 10, "patience": 4}, "eval": {"n_boot": 0}, "progress": False}
    for k, v in cfg.items():
        config[k] = {**config[k], **v} if isinstance(v, dict) and k in config else v
    return finetune(config, setup["dir"] / name)


@pytest.fixture(scope="module")
def lora_run(setup):
    return run(setup, "lora", modalities=["toy", "toyb"], method="lora", lora={"r": 4, "alpha": 8}, merge=True,
               task={"kind": "multiclass", "label_column": "label"}, eval={"n_boot": 50})


# ----------------------------------------------------------------- splits
def test_deterministic_patient_split_is_grouped_stable_and_order_free(setup):
    df = read_manifest(setup["manifest"])
    a = make_splits(df, None, 0.2, 0.2, seed=3)
    shuffled = df.sample(frac=1.0, random_state=1).reset_index(drop=True)
    b = make_splits(shuffled, None, 0.2, 0.2, seed=3)
    pats = {s: set(a[s]["patient_id"]) for s in a}
    assert pats["train"].isdisjoint(pats["val"]) and pats["train"].isdisjoint(pats["test"])
    assert pats["val"].isdisjoint(pats["test"])
    assert sum(len(v) for v in a.values()) == len(df)
    assert {s: set(b[s]["id"]) for s in b} == {s: set(a[s]["id"]) for s in a}
    n_pat = df["patient_id"].nunique()
    assert len(pats["test"]) == round(0.2 * n_pat) and len(pats["val"]) == round(0.2 * n_pat)
    c = make_splits(df, None, 0.2, 0.2, seed=4)
    assert set(c["test"]["id"]) != set(a["test"]["id"])


def test_patient_leakage_in_split_column_is_refused(setup):
    df = read_manifest(setup["manifest"])  # toy cohort: split by sample index, patients span train/test
    with pytest.raises(DataError, match="leakage"):
        make_splits(df, "split")


def test_split_column_aliases_carve_validation_by_patient(setup):
    df = read_manifest(setup["manifest"])
    df["split"] = ["holdout" if int(p[1:]) % 4 == 0 else "training" for p in df["patient_id"]]
    s = make_splits(df, "split", val_fraction=0.25)
    assert set(s["test"]["patient_id"]) == {p for p in df["patient_id"] if int(p[1:]) % 4 == 0}
    assert len(s["val"]) > 0 and set(s["val"]["patient_id"]).isdisjoint(s["train"]["patient_id"])
    df.loc[0, "split"] = "later"
    with pytest.raises(DataError, match="unknown split"):
        make_splits(df, "split")


def test_assign_patients_fractions():
    pats = [f"p{i}" for i in range(100)]
    a = assign_patients(pats, {"test": 0.1, "val": 0.3}, seed=0)
    assert sorted(pd.Series(a).value_counts().to_dict().items()) == [("test", 10), ("train", 60), ("val", 30)]
    with pytest.raises(ConfigError):
        assign_patients(pats, {"test": 0.6, "val": 0.5})


# ------------------------------------------------------------------ heads
def test_fusion_concat_and_mean_tolerate_a_missing_modality():
    za, zb = torch.randn(3, 4), torch.randn(3, 4)
    present = {"a": torch.tensor([True, True, False]), "b": torch.tensor([True, False, True])}
    cat = fuse({"a": za, "b": zb}, present, ["a", "b"], "concat")
    assert torch.equal(cat[1, 4:], torch.zeros(4)) and torch.equal(cat[2, :4], torch.zeros(4))
    assert torch.equal(cat[0], torch.cat([za[0], zb[0]]))
    mean = fuse({"a": za, "b": zb}, present, ["a", "b"], "mean")
    torch.testing.assert_close(mean, torch.stack([(za[0] + zb[0]) / 2, za[1], zb[2]]))


def test_task_spec_labels_and_class_balanced_weights():
    df = pd.DataFrame({"id": list("abcdef"), "y": ["x", "x", "x", "y", None, "z"],
                       "m": ["A;B", "B", None, "C ; A", "B", "A;Q"]})
    mc = TaskSpec("multiclass", "y", class_balanced=True).fit(df)
    assert mc.classes == ["x", "y", "z"] and mc.encode(df).tolist() == [0, 0, 0, 1, -1, 2]
    y = mc.encode(df)
    ref = compute_class_weight("balanced", classes=np.arange(3), y=y[y >= 0])
    np.testing.assert_allclose(mc.loss_weights(y).numpy(), ref, rtol=1e-6)
    ml = TaskSpec("multilabel", "m", class_balanced=True).fit(df.iloc[:4])
    enc = ml.encode(df)
    assert ml.classes == ["A", "B", "C"]
    assert enc.tolist() == [[1, 1, 0], [0, 1, 0], [-1, -1, -1], [1, 0, 1], [0, 1, 0], [1, 0, 0]]
    pos, neg = (enc == 1).sum(0), (enc == 0).sum(0)
    np.testing.assert_allclose(ml.loss_weights(enc).numpy(), neg / pos, rtol=1e-6)
    with pytest.raises(DataError, match="not a number"):
        TaskSpec("regression", "y").fit(df)


def test_task_losses_ignore_missing_labels():
    logits = torch.randn(4, 3)
    mc = TaskSpec("multiclass", "y", classes=["a", "b", "c"])
    t = torch.tensor([0, -1, 2, 1])
    keep = t >= 0
    torch.testing.assert_close(task_loss(mc, logits, t), torch.nn.functional.cross_entropy(logits[keep], t[keep]))
    ml = TaskSpec("multilabel", "m", classes=["a", "b", "c"])
    tm = torch.tensor([[1, 0, -1], [0, 0, 1], [-1, -1, -1], [1, 1, 0]])
    known = tm >= 0
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits[known], tm[known].float())
    torch.testing.assert_close(task_loss(ml, logits, tm), ref)
    rg = TaskSpec("regression", "e", target_mean=2.0, target_std=4.0)
    tr = torch.tensor([6.0, float("nan"), -2.0, 2.0])
    ok = ~torch.isnan(tr)
    torch.testing.assert_close(task_loss(rg, logits[:, :1], tr), ((logits[ok, 0] - (tr[ok] - 2) / 4) ** 2).mean())


def test_regression_metrics_match_formulas():
    y, p = np.array([1.0, 2.0, 4.0, 8.0]), np.array([1.5, 1.0, 4.0, 10.0])
    m = regression_metrics(y, p)
    assert m["mae"] == pytest.approx(np.abs(y - p).mean())
    assert m["rmse"] == pytest.approx(np.sqrt(((y - p) ** 2).mean()))
    assert m["r2"] == pytest.approx(1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    assert m["pearson_r"] == pytest.approx(np.corrcoef(y, p)[0, 1])


def test_config_validation_and_shipped_configs(setup):
    ok = {"base": "b", "data": {"manifest": "m.csv"}}
    with pytest.raises(ConfigError, match="unknown"):
        resolve_config({**ok, "optimizer": {}})
    with pytest.raises(ConfigError, match="does not fit"):
        resolve_config({**ok, "task": {"kind": "multiclass", "label_column": "y"}, "optim": {"monitor": "mae"}})
    with pytest.raises(ConfigError, match="method"):
        resolve_config({**ok, "method": "adapters"})
    shipped = sorted(CONFIG_DIR.glob("finetune_*.yaml"))
    assert shipped
    for p in shipped:
        cfg = yaml.safe_load(p.read_text())
        cfg["base"], cfg["data"]["manifest"] = "b", "m.csv"
        assert resolve_config(cfg)["method"] in ("lora", "full", "linear")


# ------------------------------------------------------------- training
def _predict(model, manifest, ids, modalities):
    df = read_manifest(manifest)
    df = df[df["id"].isin(ids)].reset_index(drop=True)
    adapters = {m: model.adapters[m] for m in modalities}
    loader = torch.utils.data.DataLoader(ManifestDataset(df, adapters), batch_size=8,
                                         collate_fn=MultiModalCollate(adapters))
    pred = predict_loader(model, loader, torch.device("cpu"))
    return pd.DataFrame(pred["scores"], index=pred["id"]).loc[list(ids)].to_numpy()


def test_lora_head_learns_a_separable_task_well_above_chance(setup, lora_run):
    r = lora_run
    assert r["test"]["accuracy"] >= 0.6  # 4 balanced classes: chance is 0.25
    assert r["test"]["macro_auroc"] >= 0.85
    assert r["test_ci"]["macro_auroc"][0] > 0.5
    assert r["n_trainable"] < 0.2 * r["n_total"]
    preds = pd.read_csv(Path(r["out"]) / "test_predictions.csv")
    scores = preds[[f"score/{c}" for c in r["classes"]]].to_numpy()
    y = preds["target"].map({c: i for i, c in enumerate(r["classes"])}).to_numpy()
    assert r["test"]["accuracy"] == pytest.approx(accuracy_score(y, scores.argmax(1)))
    assert len(preds) == r["n_samples"]["test"]  # samples without toyb are predicted too
    # patient-grouped: patients of the three splits add up to all patients
    assert sum(r["n_patients"].values()) == read_manifest(setup["manifest"])["patient_id"].nunique()


def test_checkpoint_holds_only_what_was_trained_and_base_is_untouched(setup, lora_run):
    out = Path(lora_run["out"])
    for f in ("adapter_config.json", "adapter_model.safetensors", "head.safetensors", "config.json",
              "metrics.json", "history.jsonl"):
        assert (out / f).is_file(), f
    assert not (out / "model.safetensors").exists()
    meta = json.loads((out / "config.json").read_text())["finetune"]
    # the base by relative path, folder name and hash; no absolute path of this machine
    assert (out / meta["base_relative"]).resolve() == setup["base"].resolve() and "base" not in meta
    assert meta["base_name"] == "base" and meta["method"] == "lora"
    assert meta["base_sha256"] == setup["base_sha"] == sha256(setup["base"] / "model.safetensors")
    from safetensors.torch import load_file

    n_targets = len(json.loads((out / "adapter_config.json").read_text())["target_modules"])
    assert len(load_file(str(out / "adapter_model.safetensors"))) == 2 * n_targets


def test_saved_adapter_reloads_with_identical_outputs_and_merge_matches(setup, lora_run):
    out = Path(lora_run["out"])
    preds = pd.read_csv(out / "test_predictions.csv")
    cols = [f"score/{c}" for c in lora_run["classes"]]
    model = medfm.load_pretrained(out)  # from_pretrained delegates to load_finetuned
    assert hasattr(model, "task_head") and model.task["classes"] == lora_run["classes"]
    ids = list(preds["id"])
    reloaded = _predict(model, setup["manifest"], ids, ["toy", "toyb"])
    np.testing.assert_allclose(reloaded, preds[cols].to_numpy(), atol=1e-5)
    merged = load_finetuned(out / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    np.testing.assert_allclose(_predict(merged, setup["manifest"], ids, ["toy", "toyb"]), reloaded, atol=1e-5)
    # the encoder changed: fine-tuned embeddings differ from the base's
    base = medfm.load_pretrained(setup["base"]).eval()
    x = torch.randn(2, 2, 32)
    assert not torch.allclose(base.encode("toy", x), model.encode("toy", x), atol=1e-4)


def test_moved_checkpoint_finds_base_and_changed_base_is_refused(setup, lora_run, tmp_path):
    shutil.copytree(setup["base"], tmp_path / "base")
    shutil.copytree(lora_run["out"], tmp_path / "lora")
    shutil.rmtree(tmp_path / "lora" / "merged")
    assert hasattr(load_finetuned(tmp_path / "lora"), "task_head")  # the relative path still resolves
    (tmp_path / "lora" / "config.json").write_text(
        (tmp_path / "lora" / "config.json").read_text().replace(str(setup["base"].resolve()), "/nowhere"))
    other = medfm.create_model({"name": "medfm-tiny", "modalities": {"toy": {}, "toyb": {"channels": 3}}})
    other.save_pretrained(tmp_path / "base")
    with pytest.raises(CheckpointError, match="changed"):
        load_finetuned(tmp_path / "lora")


def test_multilabel_head_learns(setup):
    r = run(setup, "ml", modalities=["toy"], method="lora", lora={"r": 4, "alpha": 8},
            task={"kind": "multilabel", "label_column": "dx", "class_balanced": True, "empty_is_negative": True})
    assert r["classes"] == ["A", "B"]
    preds = pd.read_csv(Path(r["out"]) / "test_predictions.csv")
    for c in ("A", "B"):
        auc = roc_auc_score(preds[f"target/{c}"], preds[f"score/{c}"])
        assert auc == pytest.approx(r["test"][f"auroc/{c}"])
        assert auc >= 0.8  # chance is 0.5


def test_regression_head_learns(setup):
    r = run(setup, "reg", modalities=["toy"], method="lora", lora={"r": 4, "alpha": 8},
            task={"kind": "regression", "label_column": "ef"}, optim={"epochs": 15, "patience": 6},
            eval={"n_boot": 50})
    preds = pd.read_csv(Path(r["out"]) / "test_predictions.csv")
    train_mean = 25.0  # targets are 10, 20, 30, 40 (+ noise) in equal shares
    baseline = np.abs(preds["target"] - train_mean).mean()  # 10 for a constant predictor
    assert r["test"]["mae"] == pytest.approx(np.abs(preds["target"] - preds["prediction"]).mean(), rel=1e-5)
    assert r["test"]["mae"] < 0.5 * baseline
    lo, hi = r["test_ci"]["mae"]
    assert lo <= r["test"]["mae"] <= hi


def test_early_stopping_stops_after_patience_without_improvement(setup):
    r = run(setup, "stop", modalities=["toy"], method="linear", optim={"lr": 0.0, "epochs": 10, "patience": 2},
            eval={"n_boot": 0})
    assert r["stopped_early"] and r["best_epoch"] == 1 and r["epochs_run"] == 3
    assert len((Path(r["out"]) / "history.jsonl").read_text().splitlines()) == 3


def test_full_finetune_saves_trained_tensors_and_reloads(setup):
    r = run(setup, "full", modalities=["toy"], method="full", optim={"lr": 1e-3, "epochs": 2}, eval={"n_boot": 0})
    out = Path(r["out"])
    assert (out / "finetuned.safetensors").is_file() and not (out / "adapter_model.safetensors").exists()
    preds = pd.read_csv(out / "test_predictions.csv")
    cols = [f"score/{c}" for c in r["classes"]]
    got = _predict(load_finetuned(out), setup["manifest"], list(preds["id"]), ["toy"])
    np.testing.assert_allclose(got, preds[cols].to_numpy(), atol=1e-5)


def test_cli_finetune_with_overrides_and_merge(setup, tmp_path, capsys):
    from medfm.cli import main

    cfg = {"base": str(setup["base"]), "modalities": ["toy"], "method": "lora",
           "task": {"kind": "multiclass", "label_column": "label"},
           "data": {"manifest": str(setup["manifest"]), **FAST}, "optim": {"epochs": 5}, "progress": False}
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(cfg))
    rc = main(["finetune", str(tmp_path / "ft.yaml"), "--out", str(tmp_path / "out"), "--merge",
               "--set", "optim.epochs=1", "--set", "eval.n_boot=0", "--set", "lora.dora=true"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs_run"] == 1 and summary["method"] == "lora"
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["use_dora"] is True
    assert hasattr(medfm.load_pretrained(tmp_path / "out" / "merged"), "task_head")
    assert main(["finetune", str(tmp_path / "ft.yaml"), "--out", str(tmp_path / "o2"), "--set", "method=bad"]) == 2


def test_unmerged_finetuned_directory_works_with_embed(setup, lora_run, tmp_path, capsys):
    """`medfm embed` on a LoRA directory (no model.safetensors) gives the fine-tuned encoder's embeddings."""
    from medfm.cli import main
    from medfm.evaluation.embed import load_embeddings
    from medfm.evaluation.index import model_fingerprint

    out = Path(lora_run["out"])
    assert not (out / "model.safetensors").exists()
    assert model_fingerprint(out) != model_fingerprint(setup["base"])
    path = tmp_path / "emb.safetensors"
    rc = main(["embed", "--model", str(out), "--manifest", str(setup["manifest"]), "--modality", "toy",
               "--out", str(path), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    e = load_embeddings(path)
    model = load_finetuned(out)
    df = read_manifest(setup["manifest"])
    ds = ManifestDataset(df[df["id"].isin(e.ids[:4])], model.adapters)
    batch = MultiModalCollate(model.adapters)([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        z = model.encode("toy", batch["inputs"]["toy"]["x"]).numpy()
    order = [e.ids.index(i) for i in batch["id"]]
    np.testing.assert_allclose(e.emb[order], z, atol=1e-5)
    # a fine-tuned model saves as its own type (adapters + head, base by reference), never as a
    # head-less base: the copy has no model.safetensors and gives the same embeddings
    model.save_pretrained(tmp_path / "copy")
    assert not (tmp_path / "copy" / "model.safetensors").exists()
    with torch.no_grad():
        np.testing.assert_allclose(load_finetuned(tmp_path / "copy").encode("toy", batch["inputs"]["toy"]["x"]).numpy(),
                                   z, atol=1e-6)
