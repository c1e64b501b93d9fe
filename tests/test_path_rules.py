"""The path rules, run as a user types them (medfm.paths, medfm.data.confine).

A user's layout: a working folder ``work/`` (the cwd), the data in a sibling folder
``shared/data/ecg`` (real WFDB records written with wfdb), manifests in sub-folders, shipped
recipes named by name. Every command runs in-process through ``medfm.cli.main`` with relative
paths, exactly as typed.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from medfm.cli import main
from medfm.cli.common import load_run_config
from medfm.data.columns import recorded_columns

LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
#: a tiny ECG model: 2 s at 100 Hz in 0.25 s patches
TINY_ECG = {"name": "medfm-tiny", "modalities": {"ecg": {"fs": 100, "duration": 2.0, "patch_size": 25}}}
#: the overrides that keep a shipped recipe's run to seconds
SMALL = ["--max-steps", "2", "--no-progress", "--set", "data.batch_size=2", "--set", "train.checkpoint_every=0",
         "--set", "train.tensorboard=false", "--set", "train.max_minutes=null"]


def _records(folder: Path, n: int, seconds: float = 5.0) -> list:
    """``n`` 12-lead WFDB records at 500 Hz (sinusoids + noise), written by wfdb itself."""
    import wfdb

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(500 * seconds)) / 500.0
    names = []
    for i in range(n):
        sig = np.stack([np.sin(2 * np.pi * (1.0 + 0.1 * i + 0.05 * j) * t) for j in range(12)], 1)
        sig = (sig + 0.05 * rng.standard_normal(sig.shape)).astype(np.float64)
        wfdb.wrsamp(f"r{i}", fs=500, units=["mV"] * 12, sig_name=LEADS, p_signal=sig, fmt=["16"] * 12,
                    write_dir=str(folder), comments=[f"Age: {40 + i}", "Sex: Male", "Dx: 426783006"])
        names.append(f"r{i}.hea")
    return names


@pytest.fixture
def user(tmp_path, monkeypatch):
    """``tmp/work`` (the cwd) and ``tmp/shared/data/ecg`` with 8 records."""
    names = _records(tmp_path / "shared" / "data" / "ecg", 8)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return {"tmp": tmp_path, "work": work, "records": names}


def _cli(capsys, *argv) -> tuple:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _manifest(path: Path, cells: list, column: str = "ecg", **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": [f"s{i}" for i in range(len(cells))], "patient_id": [f"p{i}" for i in range(len(cells))],
                  column: cells, **extra}).to_csv(path, index=False)
    return path


def _last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


# ------------------------------------------------------------------ command line
def test_set_paths_resolve_against_the_working_directory(user, capsys):
    """README: ``medfm pretrain ecg_mae_cpu.yaml --out runs/ecg --set data.manifest=my_ecgs.csv`` — the
    manifest is ``./my_ecgs.csv``, not ``<package>/configs/my_ecgs.csv``; ``--set data.root=`` likewise."""
    _manifest(Path("my_ecgs.csv"), [f"../shared/data/ecg/{r}" for r in user["records"]])
    code, out, err = _cli(capsys, "pretrain", "ecg_mae_cpu.yaml", "--out", "runs/ecg", "--set",
                          "data.manifest=my_ecgs.csv", "--set", "data.root=../shared/data", *SMALL)
    assert code == 0, err
    assert _last_json(out)["n_skipped"] == 0
    assert (user["work"] / "runs" / "ecg" / "model.safetensors").is_file()
    # a missing manifest is named where the user stands, once
    code, out, err = _cli(capsys, "pretrain", "ecg_mae_cpu.yaml", "--out", "runs/x", "--set",
                          "data.manifest=missing.csv", *SMALL)
    assert code != 0
    assert str(user["work"] / "missing.csv") in err and "configs" not in err, err
    assert err.count("missing.csv") == 1, err


def test_a_shipped_recipe_has_no_folder_and_set_values_are_marked(user):
    """``load_run_config``: a recipe found by name resolves against the cwd (config_dir None); ``--set``
    path values are absolute against the cwd before the config rule runs; a preset name stays a name."""
    Path("small_vit.yaml").write_text("name: medfm-tiny\nmodalities: {xray: {size: 32}}\n")
    args = argparse.Namespace(config="finetune_lora_retfound.yaml",
                              overrides=["base=small_vit.yaml", "data.manifest=cohort/m.csv", "optim.lr=0.1"])
    cfg, config_dir = load_run_config(args)
    assert config_dir is None
    assert cfg["base"] == str(user["work"] / "small_vit.yaml")
    assert cfg["data"]["manifest"] == str(user["work"] / "cohort" / "m.csv")
    assert cfg["optim"]["lr"] == 0.1
    args = argparse.Namespace(config="finetune_lora_retfound.yaml", overrides=["base=medfm-tiny"])
    assert load_run_config(args)[0]["base"] == "medfm-tiny"
    # the user's own config file: its folder
    Path("cfg").mkdir()
    Path("cfg/run.yaml").write_text("data: {manifest: m.csv}\n")
    cfg, config_dir = load_run_config(argparse.Namespace(config="cfg/run.yaml", overrides=[]))
    assert config_dir == user["work"] / "cfg" and cfg["data"]["manifest"] == "m.csv"


# ------------------------------------------------------------------ medfm manifest output
def test_manifest_output_is_read_by_pretrain_shard_and_embed(user, capsys):
    """``medfm manifest ../shared/data/ecg --out cohort/cohort.csv`` writes ``../../shared/data/...``
    cells and records the root it walked; pretrain, shard (no --config) and embed read every cell."""
    code, out, err = _cli(capsys, "manifest", "../shared/data/ecg", "--out", "cohort/cohort.csv")
    assert code == 0, err
    df = pd.read_csv("cohort/cohort.csv")
    assert all(c.startswith("../../shared/data/ecg/") for c in df["ecg"])
    side = json.loads(Path("cohort/cohort.csv.summary.json").read_text())
    assert side["data_roots"] == ["../../shared/data/ecg"]

    code, out, err = _cli(capsys, "pretrain", "ecg_mae_cpu.yaml", "--manifest", "cohort/cohort.csv",
                          "--out", "runs/ecg", *SMALL)
    assert code == 0, err
    assert _last_json(out)["n_skipped"] == 0

    code, out, err = _cli(capsys, "shard", "cohort/cohort.csv", "--out", "shards", "--no-progress")
    assert code == 0, err
    index = json.loads(Path("shards/index.json").read_text())
    assert index["n_samples"] == 8 and index["n_unreadable"] == 0 and set(index["modalities"]) == {"ecg"}

    code, out, err = _cli(capsys, "embed", "--model", "runs/ecg", "--manifest", "cohort/cohort.csv",
                          "--modality", "ecg", "--out", "emb.safetensors", "--no-progress")
    assert code == 0, err
    assert "wrote 8 ecg embeddings" in out and "0 skipped" in out


def test_a_hand_written_manifest_stays_confined_to_its_folder(user, capsys, caplog):
    """Without a sidecar or data.root, ``../`` cells are refused (confinement stays on by default),
    and a sidecar root that is the filesystem root is not used."""
    _manifest(Path("m.csv"), [f"../shared/data/ecg/{r}" for r in user["records"][:3]])
    with caplog.at_level(logging.WARNING, logger="medfm.data"):
        _cli(capsys, "shard", "m.csv", "--out", "s0", "--no-progress")
    assert "leads outside the data root" in caplog.text
    from medfm.data import read_manifest

    Path("m.csv.summary.json").write_text(json.dumps({"data_roots": ["../../../../../../../../.."]}))
    with caplog.at_level(logging.WARNING, logger="medfm.data"):
        assert read_manifest("m.csv").attrs["data_roots"] == []
    assert "not used for confinement" in caplog.text


def test_commands_without_a_config_take_the_data_options_as_flags(user, capsys, caplog):
    """``medfm embed`` (as index build, evaluate and zeroshot): ``--data-root`` (relative to the cwd),
    ``--no-confine-paths`` and ``--limit KEY=VALUE`` are the data.* options of a run config."""
    import medfm

    medfm.create_model(TINY_ECG).save_pretrained("model")
    _manifest(Path("m.csv"), [f"../shared/data/ecg/{r}" for r in user["records"][:3]])
    base = ["embed", "--model", "model", "--manifest", "m.csv", "--modality", "ecg", "--no-progress"]
    with caplog.at_level(logging.WARNING, logger="medfm.data"):
        code, out, err = _cli(capsys, *base, "--out", "a.safetensors")
    assert code != 0 and "outside the data root" in caplog.text  # confined by default: nothing embedded
    for name, flags in (("root", ["--data-root", "../shared/data"]), ("open", ["--no-confine-paths"])):
        code, out, err = _cli(capsys, *base, "--out", f"{name}.safetensors", *flags)
        assert code == 0, err
        assert "wrote 3 ecg embeddings" in out and "0 skipped" in out
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medfm.data"):
        code, out, err = _cli(capsys, *base, "--out", "l.safetensors", "--no-confine-paths",
                              "--limit", "max_file_mb=1e-4")
    assert code != 0 and "max_file_mb" in caplog.text + err  # the manifest itself is over 100 bytes


# ------------------------------------------------------------------ shard honours data.*
def test_shard_honours_the_data_options_of_its_config(user, capsys, caplog):
    """``medfm shard --config`` applies data.root (relative to the config's folder), data.confine_paths
    and data.limits."""
    _manifest(Path("m.csv"), [f"../shared/data/ecg/{r}" for r in user["records"][:3]])
    Path("cfg").mkdir()

    def shard(name, data):
        Path(f"cfg/{name}.yaml").write_text(yaml.safe_dump({"model": TINY_ECG, "data": data}))
        code, out, err = _cli(capsys, "shard", "m.csv", "--out", f"s_{name}", "--config", f"cfg/{name}.yaml",
                              "--no-progress")
        return code, err

    for name, data in (("root", {"root": "../../shared/data"}), ("open", {"confine_paths": False})):
        code, err = shard(name, data)
        assert code == 0, err
        index = json.loads(Path(f"s_{name}/index.json").read_text())
        assert index["n_samples"] == 3 and index["n_unreadable"] == 0, (name, index["unreadable"])
    with caplog.at_level(logging.WARNING, logger="medfm.data"):
        shard("limits", {"confine_paths": False, "limits": {"max_file_mb": 1e-4}})
    assert "max_file_mb" in caplog.text


# ------------------------------------------------------------------ fine-tuning
def _base_with_columns(user, capsys) -> Path:
    """A tiny pretrained ECG checkpoint in ``proj/runs/base`` trained with ``data.columns: {ecg: signal}``."""
    proj = user["tmp"] / "proj"
    cells = [f"ecg/{r}" for r in _records(proj / "ecg", 8)]
    split = ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    _manifest(proj / "cohort.csv", cells, column="signal", split=split, label=["a", "b"] * 4)
    (proj / "pre.yaml").write_text(yaml.safe_dump({
        "model": TINY_ECG, "data": {"manifest": "cohort.csv", "columns": {"ecg": "signal"}, "batch_size": 4,
                                    "split": None},
        "objectives": [{"name": "masked"}],
        "train": {"max_steps": 1, "checkpoint_every": 0, "tensorboard": False, "progress": False}}))
    code, out, err = _cli(capsys, "pretrain", "../proj/pre.yaml", "--out", "../proj/runs/base")
    assert code == 0, err
    assert recorded_columns(proj / "runs" / "base") == {"ecg": "signal"}
    return proj


def _finetune_yaml(proj: Path, name: str, **data) -> Path:
    path = proj / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "base": "runs/base", "method": "linear", "task": {"kind": "multiclass", "label_column": "label"},
        "data": {"manifest": "cohort.csv", "batch_size": 4, **data},
        "optim": {"epochs": 1, "patience": 0}, "eval": {"n_boot": 0}, "progress": False}))
    return path


def test_finetune_relative_base_from_another_folder_keeps_the_recorded_columns(user, capsys):
    """``base: runs/base`` in ``proj/ft.yaml`` resolves against proj/ for the column mapping too,
    run from ``work/`` (the base maps ecg to the column ``signal``)."""
    proj = _base_with_columns(user, capsys)
    _finetune_yaml(proj, "ft")
    code, out, err = _cli(capsys, "finetune", "../proj/ft.yaml", "--out", "ft_out", "--no-progress")
    assert code == 0, err
    assert recorded_columns(user["work"] / "ft_out") == {"ecg": "signal"}
    assert json.loads((user["work"] / "ft_out" / "metrics.json").read_text())["n_skipped"] == 0


def test_finetune_enforces_data_root_and_limits(user, capsys, caplog):
    """Fine-tuning confines to data.root (relative to its config) and applies data.limits; a cell
    outside the root is a counted skip."""
    proj = _base_with_columns(user, capsys)
    df = pd.read_csv(proj / "cohort.csv")
    df.loc[0, "signal"] = "../shared/data/ecg/r0.hea"  # a train row whose file exists outside data.root
    df.to_csv(proj / "cohort.csv", index=False)
    _finetune_yaml(proj, "ft_root", root="ecg")
    with caplog.at_level(logging.WARNING, logger="medfm.data"):
        code, out, err = _cli(capsys, "finetune", "../proj/ft_root.yaml", "--out", "ft_root", "--no-progress")
    assert code == 0, err
    assert "leads outside the data root" in caplog.text and "shared/data/ecg/r0.hea" in caplog.text
    assert json.loads(Path("ft_root/metrics.json").read_text())["n_skipped"] == 1
    caplog.clear()
    _finetune_yaml(proj, "ft_limits", confine_paths=False, limits={"max_file_mb": 1e-4})
    with caplog.at_level(logging.WARNING, logger="medfm.data"):
        _cli(capsys, "finetune", "../proj/ft_limits.yaml", "--out", "ft_limits", "--no-progress")
    assert "max_file_mb" in caplog.text


def test_recorded_columns_of_a_folder_without_config_is_an_error(tmp_path):
    """A checkpoint folder named wrongly is an error, not a silent fall back to the modality names."""
    from medfm.errors import CheckpointError

    with pytest.raises(CheckpointError, match="config.json"):
        recorded_columns(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        recorded_columns(tmp_path)
    assert recorded_columns(tmp_path / "model.yaml") == {}  # a model config file records none
