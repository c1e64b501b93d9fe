"""A shortened ``medfm demo --quick``: every block of results.json present, finite, main metrics above chance."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medfm.cli import main
from medfm.demo.cohort import CLASSES
from medfm.demo.chance import chance_row
from medfm.evaluation.retrieval import recall_chance

BLOCKS = ("cohort", "pretrain", "zeroshot", "retrieval", "index", "probe", "finetune", "real_files", "summary",
          "timing_s")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    rc = main(["demo", "--out", str(out), "--quick", "--seed", "0", "--no-progress"])
    assert rc == 0
    return out, json.loads((out / "results.json").read_text())


def _finite(x) -> bool:
    return x is not None and math.isfinite(float(x))


def test_every_block_present_and_files_written(demo):
    out, res = demo
    for block in BLOCKS:
        assert block in res, block
    assert (out / "report.md").is_file() and (out / "model" / "model.safetensors").is_file()
    assert (out / "index" / "index.faiss").is_file() and (out / "finetune" / "metrics.json").is_file()
    for png in ("loss_curve.png", "roc_zeroshot_fused.png", "roc_linear_probe.png", "retrieval_example.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert png in (out / "report.md").read_text()
    assert res["cohort"]["samples_missing_a_modality"] > 0
    assert res["cohort"]["n_patients"] < res["cohort"]["n_samples"]


def test_metrics_finite_and_pretraining_learned(demo):
    _, res = demo
    for row in res["summary"]:
        assert _finite(row["value"]) and _finite(row["chance"]), row
        if row["ci_low"] is not None:
            assert row["ci_low"] <= row["value"] + 1e-9 <= row["ci_high"] + 2e-9, row
    p = res["pretrain"]
    assert len(p["loss_curve"]) == p["steps"] == res["settings"]["steps"]
    first = np.mean([c["loss"] for c in p["loss_curve"][:5]])
    last = np.mean([c["loss"] for c in p["loss_curve"][-5:]])
    assert last < first


def test_main_metrics_beat_chance(demo):
    _, res = demo
    fused = res["zeroshot"]["per_modality"]["fused"]
    assert fused["accuracy_ci"][0] > fused["chance_accuracy"]
    assert fused["macro_auroc"] > 0.5
    best = max(res["retrieval"]["pairs"].values(), key=lambda r: r["R@1_ci"][0] - r["R@1_chance"])
    assert best["R@1_ci"][0] > best["R@1_chance"]
    assert res["probe"]["accuracy"] > res["probe"]["chance_accuracy"]
    assert res["finetune"]["macro_auroc"] > 0.5
    assert res["index"]["precision@5"] > res["index"]["precision@5_chance"]


def test_real_files_embedded_without_label(demo):
    _, res = demo
    files = {r["id"]: r for r in res["real_files"]}
    assert set(files) == {"REAL_CT_small", "REAL_anatomical", "REAL_waveform_ecg"}
    assert files["REAL_waveform_ecg"]["read"]["fs"] == 1000.0
    for r in files.values():
        assert abs(r["embedding_norm"] - 1.0) < 1e-4
        assert abs(sum(r["zero_shot"].values()) - 1.0) < 1e-4 and set(r["zero_shot"]) == set(CLASSES)


def test_recall_chance_matches_simulation():
    rng = np.random.default_rng(0)
    n_rel, g, k = np.array([3, 10, 1]), 20, 5
    sims = []
    for r in n_rel:
        rel = np.zeros(g, bool)
        rel[:r] = True
        sims.append(np.mean([rel[rng.permutation(g)[:k]].any() for _ in range(4000)]))
    assert recall_chance(n_rel, g, k) == pytest.approx(np.mean(sims), abs=0.02)
    assert recall_chance(np.array([4]), 12, 1) == pytest.approx(4 / 12)


def test_chance_row_uses_ci_lower_bound():
    assert chance_row("b", "m", 0.6, 0.5, (0.45, 0.7))["beats_chance"] is False
    assert chance_row("b", "m", 0.6, 0.5, (0.55, 0.7))["beats_chance"] is True
    assert chance_row("b", "m", 0.6, 0.5)["beats_chance"] is True
