"""A run that learns from nothing fails (exit 1, a summary by reason, no model card, no "done" line);
GPU recipes refuse a CPU-only machine; ``train.max_minutes`` bounds the whole run; ``--baseline``
reads the ``--column`` the model reads. Every case goes through the CLI on a tiny manifest."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import medfm
from medfm.cli import main
from medfm.configs import config_path
from medfm.io import load_config_file
from medfm.train import Trainer
from medfm.train.pretrainer import resolve_run_config

from toy_cohort import _enc, write_toy_manifest

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"name": "medfm-tiny", "embed_dim": 16, "trunk": {"width": 32, "depth": 1, "heads": 2},
        "decoder": {"width": 16, "depth": 1, "heads": 2}}
TRAIN = {"max_steps": 2, "checkpoint_every": 0, "tensorboard": False, "progress": False}


def _garbage_ecgs(folder: Path, n: int) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"rec{i}.hea"
        p.write_text("this is not a WFDB header\n")
        paths.append(p.name)
    return paths


def _toy_run_config(tmp_path: Path, manifest: Path, *, modalities=("toy",), objectives=None, **data) -> Path:
    cfg = {"name": "toy_run", "model": {**TINY, "modalities": {m: {} for m in modalities}},
           "data": {"manifest": str(manifest), "split": None, "batch_size": 5, **data},
           "objectives": objectives or [{"name": "masked", "mask_ratio": 0.5}],
           "optim": {"warmup_steps": 1}, "train": TRAIN}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _looks_finished(out: Path) -> bool:
    return any((out / f).exists() for f in ("README.md", "model.safetensors", "config.json"))


def _toy_rows(n: int, broken: int) -> pd.DataFrame:
    t = np.arange(32)
    rows = []
    for i in range(n):
        sig = np.stack([np.sin(2 * np.pi * (i % 3 + 1) * t / 32), np.cos(2 * np.pi * (i % 3 + 1) * t / 32)])
        rows.append({"id": f"s{i:02d}", "patient_id": f"p{i:02d}", "toy": "oops" if i < broken else _enc(sig)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ pretrain
def test_pretrain_on_unreadable_ecgs_exits_1_with_a_summary_and_no_model(tmp_path, capsys):
    names = _garbage_ecgs(tmp_path / "ecg", 4)
    m = tmp_path / "m.csv"
    pd.DataFrame({"id": [f"e{i}" for i in range(4)], "patient_id": [f"p{i}" for i in range(4)],
                  "ecg": [f"ecg/{n}" for n in names]}).to_csv(m, index=False)
    out = tmp_path / "run"
    rc = main(["pretrain", "ecg_mae_cpu.yaml", "--out", str(out), "--manifest", str(m), "--max-steps", "40",
               "--no-progress", "--set", "data.batch_size=2"])
    o, err = capsys.readouterr()
    assert rc == 1
    assert o.strip() == ""  # no "done" JSON line
    assert "UnusableDataError" in err and "no usable sample" in err
    assert "unusable cells by reason" in err and "e.g. sample 'e0'" in err and "what to change" in err
    assert "data.max_skip_fraction" in err
    assert not _looks_finished(out)
    failed = json.loads((out / "failed.json").read_text())
    # a whole pass over the 4 rows (2 steps of 2) gave nothing: the run stopped instead of reading 40 x 2 files
    assert failed["steps"] <= 3 and failed["counts"]["n_used"] == 0 and failed["counts"]["n_unusable"] >= 4


def test_a_60_percent_broken_cohort_fails_at_the_default_and_passes_with_the_threshold_raised(tmp_path, capsys):
    m = tmp_path / "m.csv"
    _toy_rows(10, broken=6).to_csv(m, index=False)
    cfg = _toy_run_config(tmp_path, m)
    rc = main(["pretrain", str(cfg), "--out", str(tmp_path / "a"), "--no-progress"])
    _, err = capsys.readouterr()
    assert rc == 1 and "above the limit of 50%" in err and "60.0%" in err
    assert "toy: not a number list" in err  # the reason, counted, with an example
    assert not _looks_finished(tmp_path / "a")
    rc = main(["pretrain", str(cfg), "--out", str(tmp_path / "b"), "--no-progress",
               "--set", "data.max_skip_fraction=0.7"])
    o, _ = capsys.readouterr()
    assert rc == 0 and json.loads(o)["step"] == 2
    assert (tmp_path / "b" / "README.md").is_file() and not (tmp_path / "b" / "failed.json").exists()


def test_rows_without_the_runs_modalities_are_not_skips(tmp_path, capsys):
    # 70 % of the rows hold only a column the model does not read: not applicable, the run passes
    df = _toy_rows(10, broken=0)
    df.loc[:6, "toy"] = ""
    df["other"] = "x"
    m = tmp_path / "m.csv"
    df.to_csv(m, index=False)
    rc = main(["pretrain", str(_toy_run_config(tmp_path, m)), "--out", str(tmp_path / "run"), "--no-progress"])
    o, err = capsys.readouterr()
    assert rc == 0, err
    assert json.loads(o)["n_skipped"] > 0 and (tmp_path / "run" / "README.md").is_file()


def test_clip_with_no_pair_over_the_whole_run_fails(tmp_path, capsys):
    # toy in the first half of the rows, toyb in the second: no row holds both, clip/n_pairs is 0 on every step
    df = _toy_rows(10, broken=0)
    df["toyb"] = df["toy"]
    df.loc[:4, "toyb"] = ""
    df.loc[5:, "toy"] = ""
    m = tmp_path / "m.csv"
    df.to_csv(m, index=False)
    cfg = _toy_run_config(tmp_path, m, modalities=("toy", "toyb"), objectives=[{"name": "clip"}])
    rc = main(["pretrain", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"])
    _, err = capsys.readouterr()
    assert rc == 1 and "objective 'clip' had no pair" in err and "clip/n_pairs" in err
    assert not _looks_finished(tmp_path / "run")


def test_masked_objective_with_no_target_fails(tmp_path, capsys):
    df = _toy_rows(10, broken=0)
    df["toyb"] = ""  # the masked objective's only modality is absent everywhere
    m = tmp_path / "m.csv"
    df.to_csv(m, index=False)
    cfg = _toy_run_config(tmp_path, m, modalities=("toy", "toyb"),
                          objectives=[{"name": "masked", "modalities": ["toyb"], "mask_ratio": 0.5}])
    rc = main(["pretrain", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"])
    _, err = capsys.readouterr()
    assert rc == 1 and "objective 'masked' had no target" in err


def test_a_repeated_warning_is_logged_once_per_sample_and_counted_every_time(tmp_path, caplog):
    m = write_toy_manifest(tmp_path / "m.csv", n=8, corrupt=("s003",))
    trainer = Trainer({"model": {**TINY, "modalities": {"toy": {}}},
                       "data": {"manifest": str(m), "batch_size": 8, "split": None},
                       "objectives": [{"name": "masked", "mask_ratio": 0.5}],
                       "optim": {"warmup_steps": 1}, "train": {**TRAIN, "max_steps": 3}}, tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="medfm.data"):
        trainer.fit()
    said = [r.getMessage() for r in caplog.records if "sample s003" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("skipping toy of sample s003")  # 3 epochs, one line
    ledger = trainer.core.skips
    (reason,) = ledger.reasons.values()
    assert reason.n == 3 and reason.samples == 1 and reason.example == "s003"
    assert ledger.n_unusable == 3 and ledger.n_rows == 24


# --------------------------------------------------------------------- shard
def test_shard_writing_no_sample_exits_1_without_an_index(tmp_path, capsys):
    names = _garbage_ecgs(tmp_path / "ecg", 3)
    m = tmp_path / "m.csv"
    pd.DataFrame({"id": ["a", "b", "c"], "patient_id": ["1", "2", "3"],
                  "ecg": [f"ecg/{n}" for n in names]}).to_csv(m, index=False)
    model_cfg = tmp_path / "model.yaml"
    model_cfg.write_text(yaml.safe_dump({"name": "medfm-tiny", "modalities": {"ecg": {}}}))
    rc = main(["shard", str(m), "--out", str(tmp_path / "shards"), "--config", str(model_cfg), "--no-progress"])
    o, err = capsys.readouterr()
    assert rc == 1 and "wrote" not in o
    assert "no usable sample" in err and "e.g. sample 'a'" in err
    assert not (tmp_path / "shards" / "index.json").exists()  # not a finished shard set


# ------------------------------------------------------------- embed / index
def _toy_model(tmp_path: Path) -> Path:
    model = medfm.create_model({**TINY, "modalities": {"toy": {}}})
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_embed_and_index_build_fail_above_the_threshold(tmp_path, capsys):
    d = _toy_model(tmp_path)
    m = tmp_path / "m.csv"
    _toy_rows(10, broken=6).to_csv(m, index=False)
    rc = main(["embed", "--model", str(d), "--manifest", str(m), "--modality", "toy",
               "--out", str(tmp_path / "e.safetensors"), "--no-progress"])
    _, err = capsys.readouterr()
    assert rc == 1 and "60.0%" in err and "--max-skip-fraction" in err
    assert not (tmp_path / "e.safetensors").exists()
    rc = main(["embed", "--model", str(d), "--manifest", str(m), "--modality", "toy",
               "--out", str(tmp_path / "e.safetensors"), "--no-progress", "--max-skip-fraction", "0.7"])
    assert rc == 0 and (tmp_path / "e.safetensors").is_file()
    rc = main(["index", "build", "--model", str(d), "--manifest", str(m), "--modality", "toy",
               "--out", str(tmp_path / "ix"), "--no-progress"])
    _, err = capsys.readouterr()
    assert rc == 1 and "60.0%" in err and not (tmp_path / "ix").exists()


def test_evaluate_fails_above_the_threshold(tmp_path, capsys):
    model = medfm.create_model({**TINY, "modalities": {"toy": {}, "toyb": {}}})
    model.save_pretrained(tmp_path / "model")
    df = _toy_rows(10, broken=6)
    df["toyb"] = _toy_rows(10, broken=0)["toy"]
    m = tmp_path / "m.csv"
    df.to_csv(m, index=False)
    args = ["evaluate", "retrieval", "--model", str(tmp_path / "model"), "--manifest", str(m), "--query-modality",
            "toy", "--gallery-modality", "toyb", "--n-boot", "0", "--out", str(tmp_path / "ret"), "--no-progress"]
    rc = main(args)
    _, err = capsys.readouterr()
    assert rc == 1 and "60.0%" in err and not (tmp_path / "ret" / "results.json").exists()
    assert main(args + ["--max-skip-fraction", "0.7"]) == 0 and (tmp_path / "ret" / "results.json").is_file()


def test_finetune_on_a_mostly_unreadable_cohort_fails_without_a_card(tmp_path, capsys):
    base = _toy_model(tmp_path)
    m = write_toy_manifest(tmp_path / "m.csv", n=20, corrupt=tuple(f"s{i:03d}" for i in range(14)))
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(yaml.safe_dump({"base": str(base), "method": "linear", "task": {"label_column": "label"},
                                   "data": {"manifest": str(m), "split_column": None, "batch_size": 8},
                                   "optim": {"epochs": 1}, "eval": {"n_boot": 0}, "progress": False,
                                   "tensorboard": False}))
    rc = main(["finetune", str(cfg), "--out", str(tmp_path / "ft")])
    o, err = capsys.readouterr()
    assert rc == 1 and o.strip() == "" and "this fine-tuning run" in err and "toy: not a number list" in err
    assert not (tmp_path / "ft" / "README.md").exists() and not (tmp_path / "ft" / "metrics.json").exists()


# ------------------------------------------------------------ GPU recipes
def test_a_gpu_recipe_on_a_cpu_only_machine_refuses_and_names_its_cpu_variant(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    m = tmp_path / "m.csv"
    pd.DataFrame({"id": ["a"], "patient_id": ["1"], "nucleotides": ["ACGT" * 20]}).to_csv(m, index=False)
    t0 = time.monotonic()
    rc = main(["pretrain", "dna_mlm.yaml", "--out", str(tmp_path / "run"), "--manifest", str(m), "--no-progress"])
    _, err = capsys.readouterr()
    assert rc == 2 and "sized for a GPU" in err and "dna_mlm_cpu.yaml" in err and "--allow-slow" in err
    assert "12 GB" in err and time.monotonic() - t0 < 30 and not (tmp_path / "run").exists()
    # asked for: --allow-slow passes the check (and the run goes on to read its manifest: here a missing one)
    rc = main(["pretrain", "dna_mlm.yaml", "--out", str(tmp_path / "run"), "--manifest", str(tmp_path / "no.csv"),
               "--allow-slow", "--no-progress"])
    _, err = capsys.readouterr()
    assert rc != 0 and "sized for a GPU" not in err and "no.csv" in err


def test_shipped_gpu_recipes_declare_their_cpu_variant():
    folder = config_path("dna_mlm.yaml").parent
    checked = 0
    for cpu in sorted(folder.glob("*_cpu.yaml")):
        gpu = folder / cpu.name.replace("_cpu.yaml", ".yaml")
        run = resolve_run_config({**load_config_file(gpu), "data": {"manifest": "m.csv"}})
        assert run["requires"]["accelerator"] == "gpu" and run["requires"]["cpu_variant"] == cpu.name, gpu.name
        small = resolve_run_config({**load_config_file(cpu), "data": {"manifest": "m.csv"}})
        assert small["requires"]["accelerator"] == "any", cpu.name
        checked += 1
    assert checked >= 5


def test_the_time_budget_counts_from_the_start_of_the_command(tmp_path):
    m = write_toy_manifest(tmp_path / "m.csv", n=16)
    cfg = {"model": {**TINY, "modalities": {"toy": {}}},
           "data": {"manifest": str(m), "batch_size": 8, "split": None},
           "objectives": [{"name": "masked", "mask_ratio": 0.5}], "optim": {"warmup_steps": 1},
           "train": {**TRAIN, "max_steps": 50, "max_minutes": 0.5}}
    # the command started 30 s ago (start-up, reading data): the 30 s budget is spent, one step is all it takes
    trainer = Trainer(cfg, tmp_path / "run", started_at=time.monotonic() - 30.0)
    last = trainer.fit()
    assert last["step"] == 1
    assert (tmp_path / "run" / "model.safetensors").is_file()


# ------------------------------------------------------------ --baseline + --column
def _dna_cohort(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for sp in range(4):
        base = rng.choice(list("ACGT"), 120)
        for j in range(4):
            seq = base.copy()
            seq[rng.integers(0, 120, 3)] = rng.choice(list("ACGT"), 3)
            rows.append({"id": f"s{sp}{j}", "patient_id": f"p{sp}{j}", "split": "test" if j == 3 else "train",
                         "nucleotides": "".join(seq), "order_name": f"o{sp % 2}", "family_name": f"f{sp % 2}",
                         "genus_name": f"g{sp}", "species_name": f"sp{sp}"})
    m = tmp_path / "dna.csv"
    pd.DataFrame(rows).to_csv(m, index=False)
    return m


def test_baseline_reads_the_column_the_model_reads(tmp_path, capsys):
    m = _dna_cohort(tmp_path)
    model = medfm.create_model({**TINY, "modalities": {"dna": {"k": 4, "max_length": 128}}})
    model.save_pretrained(tmp_path / "model")
    rc = main(["evaluate", "bioscan", "--model", str(tmp_path / "model"), "--manifest", str(m),
               "--query-modality", "dna", "--column", "dna=nucleotides", "--baseline", "kmer", "--n-boot", "0",
               "--out", str(tmp_path / "bio"), "--no-progress"])
    _, err = capsys.readouterr()
    assert rc == 0, err
    rec = json.loads((tmp_path / "bio" / "results.json").read_text())
    # near-identical barcodes of 4 species (3 point mutations in 120 nt): the k-mer baseline, reading the
    # nucleotides column, finds every query's species
    assert rec["metrics"]["baseline/kmer6/seen/species_name/micro"] == 1.0
    rc = main(["evaluate", "probe", "--model", str(tmp_path / "model"), "--manifest", str(m), "--modality", "dna",
               "--column", "dna=nucleotides", "--baseline", "kmer", "--label-column", "order_name", "--n-boot", "0",
               "--shots", "1", "--few-shot-seeds", "1", "--knn-k", "3", "--out", str(tmp_path / "probe"),
               "--no-progress"])
    _, err = capsys.readouterr()
    assert rc == 0, err
    rec = json.loads((tmp_path / "probe" / "results.json").read_text())
    assert any(k.startswith("baseline/") for k in rec["metrics"])


# ------------------------------------------------------------------ the ledger
def test_ledger_groups_equal_causes_and_keeps_not_applicable_rows_apart():
    from medfm.data.skips import SkipLedger, reason_key

    assert reason_key("ecg", "e12: ecg: cannot read '/data/x/e12.hea': 12 bytes", "e12") == \
        reason_key("ecg", "e7: ecg: cannot read '/data/y/e7.hea': 9 bytes", "e7")
    ledger = SkipLedger(warn=False)
    ledger.add_item({"skipped": True, "id": "a", "errors": [], "flags": []})            # no modality: n/a
    ledger.add_item({"skipped": True, "id": "b", "errors": [("b", "ecg", "bad")]})      # unusable, dropped
    ledger.add_item({"id": "c", "inputs": {"x": 1}, "errors": [("c", "text", "bad")]})  # unusable, used
    ledger.add_item({"id": "d", "inputs": {"x": 1}, "errors": []})                      # used
    assert (ledger.n_rows, ledger.n_used, ledger.n_not_applicable, ledger.n_unusable) == (4, 2, 1, 2)
    assert ledger.skip_fraction == pytest.approx(2 / 3)
    assert ledger.problems(0.7) == [] and len(ledger.problems(0.5)) == 1


def test_ledger_logs_a_few_samples_per_reason_and_counts_them_all(caplog):
    """A cohort of NIfTI CTs gets one flag line, not one per sample; a broken column a handful of
    skip lines plus one notice. Every sample is still counted."""
    from medfm.data.skips import LOG_FIRST, SkipLedger

    ledger = SkipLedger()
    with caplog.at_level(logging.WARNING, logger="medfm.data"):
        for i in range(40):
            ledger.add_flag(f"S{i:03d}", "ct", "NIfTI records no modality: read as CT (Hounsfield units) unchecked")
            ledger.add_error(f"S{i:03d}", "ecg", f"S{i:03d}.hea: WFDB header not found")
    lines = [r.getMessage() for r in caplog.records]
    flagged = [m for m in lines if m.startswith("flagged ct")]
    skipped = [m for m in lines if m.startswith("skipping ecg")]
    notices = [m for m in lines if m.startswith("more warnings like this are counted")]
    tens = [m for m in lines if m.startswith("10 warnings like this so far")]
    assert len(flagged) == LOG_FIRST["flag"] == 1 and len(skipped) == LOG_FIRST["error"] == 5
    assert len(notices) == 1 and len(tens) == 1 and len(lines) == 8  # a flag's note: said once, then counted
    assert ledger.n_flagged == 40 and ledger.n_errors == 40
    assert sum(r.samples for r in ledger.flags.values()) == 40 and sum(r.samples for r in ledger.reasons.values()) == 40


def test_reason_key_blanks_the_sample_id_as_a_word_only():
    """A one-letter id must not blank that letter inside the message: equal notes group as one reason."""
    from medfm.data.skips import reason_key

    note = "NIfTI records no modality: read as CT (Hounsfield units) unchecked"
    assert reason_key("ct", note, "a") == reason_key("ct", note, "c") == f"ct: {note}"
    assert reason_key("ecg", "S1: S1.hea: WFDB header not found", "S1") == "ecg: ….hea: WFDB header not found"
