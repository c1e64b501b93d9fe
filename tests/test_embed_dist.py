"""``torchrun ... medfm embed``: rank parts merged in manifest order equal the single-process output exactly."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import medfm
from medfm.cli import main
from medfm.evaluation.embed import load_embeddings
from medfm.evaluation.embed_dist import part_path, rank_rows

HERE = Path(__file__).resolve().parent


def test_rank_rows_cover_the_manifest_in_whole_batches():
    for n, bs, world in [(37, 8, 2), (5, 8, 3), (64, 4, 4), (0, 8, 2)]:
        parts = [rank_rows(n, bs, r, world) for r in range(world)]
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert all(a % bs == 0 for a, _ in parts)


@pytest.mark.timeout(240)
def test_two_gloo_ranks_embed_equals_single_process(tmp_path, one_thread):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(37):
        x = rng.normal(size=(2, 32))
        rows.append({"id": f"s{i:02d}", "patient_id": f"p{i}",
                     "toy": "" if i % 7 == 3 else ";".join(" ".join(f"{v:.4f}" for v in ch) for ch in x)})
    rows[20]["toy"] = "unreadable"
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    medfm.create_model({"name": "medfm-tiny", "modalities": {"toy": {}}}).save_pretrained(model_dir)
    args = ["embed", "--model", str(model_dir), "--manifest", str(manifest), "--modality", "toy",
            "--batch-size", "8", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "single.safetensors")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(HERE / "toy_cli.py")] + args + ["--out", str(tmp_path / "dual.safetensors")],
                          capture_output=True, text=True, env=env, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, dual = load_embeddings(tmp_path / "single.safetensors"), load_embeddings(tmp_path / "dual.safetensors")
    assert dual.ids == single.ids == [r["id"] for r in rows if r["toy"] and r["id"] != "s20"]
    assert np.array_equal(dual.emb, single.emb)  # bit for bit
    assert dual.skipped == single.skipped and [s["id"] for s in dual.skipped] == ["s20"]
    assert dual.absent == single.absent and len(dual.absent) == 5
    assert dual.meta["model_fingerprint"] == single.meta["model_fingerprint"]
    # each rank wrote its own part: rank 0 rows 0-15 (2 of the 5 batches of 8), rank 1 rows 16-36
    p0, p1 = (load_embeddings(part_path(tmp_path / "dual.safetensors", r, 2)) for r in range(2))
    assert p0.ids[-1] < "s16" <= p1.ids[0] and p0.ids + p1.ids == dual.ids
