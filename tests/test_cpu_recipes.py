"""The CPU-sized recipes: small, with the settings the real-data suite chose, and they train."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import medfm
from medfm.cli import main
from medfm.configs import config_path
from medfm.io import load_config_file

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CPU_RECIPES = ("ecg_mae_cpu.yaml", "ecg_report_clip_cpu.yaml", "xray_report_clip_cpu.yaml")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", CPU_RECIPES)
def test_cpu_recipe_is_small_and_carries_the_tuned_settings(name):
    cfg = load_config_file(config_path(name))
    model = medfm.create_model(cfg["model"])
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 5_000_000, n_params  # the GPU recipes are 20-100x larger
    assert cfg["train"]["max_minutes"] == 10 and cfg["train"]["num_threads"] == 1
    text = cfg["model"]["modalities"].get("text")
    if text is not None:  # from-scratch text tower: mean pooling, no dropout, small vocabulary
        assert text["pool"] == "mean" and text["vocab_size"] == 2048
        assert text["hf_config"]["hidden_dropout_prob"] == 0.0
        assert any(o["name"] == "clip" and o.get("duplicate_positives") for o in cfg["objectives"])


@pytest.mark.skipif(not (DATA / "ecg" / "cinc2021_12lead").is_dir(), reason="../shared/data not found")
def test_ecg_cpu_recipe_trains_on_real_records(tmp_path):
    heads = sorted((DATA / "ecg" / "cinc2021_12lead").glob("*.hea"))[:8]
    pd.DataFrame({"id": [h.stem for h in heads], "patient_id": [h.stem for h in heads],
                  "ecg": [str(h) for h in heads]}).to_csv(tmp_path / "m.csv", index=False)
    rc = main(["pretrain", "ecg_mae_cpu.yaml", "--out", str(tmp_path / "run"), "--manifest", str(tmp_path / "m.csv"),
               "--max-steps", "3", "--no-progress", "--set", "data.batch_size=4"])
    assert rc == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and rows[-1]["n_skipped"] == 0
    assert all(0.0 < r["loss"] < 10.0 for r in rows)  # CLIP over 4 records starts near ln 4
    model = medfm.load_pretrained(tmp_path / "run")
    assert set(model.modalities) == {"ecg", "ecg_view"}
