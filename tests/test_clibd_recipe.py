"""The CPU CLIBD recipe (DNA <-> taxonomy text) learns distinct prompts instead of collapsing.

With CLS pooling of the from-scratch text tower at lr 5e-4 the real-data suite's CLIBD stage
kept every taxonomy prompt at mean pairwise cosine ≈ 0.99 and zero-shot at chance
(benchmarks/real/README.md, "CLIBD stability"); the shipped recipe (mean pooling, lr 1e-3)
must separate the prompts and classify its own training barcodes far above chance.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import medfm
from medfm.cli import main

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TSV = DATA / "dna" / "coi_barcodes_100_species.tsv"
RANKS = ["order_name", "family_name", "genus_name", "species_name"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.skipif(not TSV.is_file(), reason="../shared/data not found")
def test_cpu_clibd_recipe_separates_taxonomy_prompts(tmp_path):
    from medfm.evaluation.embed import encode_values
    from medfm.modalities.text import taxonomy_text

    df = pd.read_csv(TSV, sep="\t")
    species = sorted(df["species_name"].unique())[::12][:8]          # 8 species from different genera
    df = df[df["species_name"].isin(species)].groupby("species_name").head(12).reset_index(drop=True)
    df["id"] = df["processid"]
    df["patient_id"] = df["processid"]
    df[["id", "patient_id", "nucleotides", *RANKS]].to_csv(tmp_path / "m.csv", index=False)
    rc = main(["pretrain", "dna_taxonomy_clip_cpu.yaml", "--out", str(tmp_path / "run"), "--manifest",
               str(tmp_path / "m.csv"), "--max-steps", "20", "--no-progress", "--set", "data.batch_size=32",
               "--set", "optim.warmup_steps=2",  # the views term is left out for time (CLIP is what collapsed)
               "--set", "objectives=[{name: clip, weight: 1.0, mode: pairs, label_column: species_name}]"])
    assert rc == 0
    model = medfm.load_pretrained(tmp_path / "run").eval()
    rows = df.drop_duplicates("species_name").sort_values("species_name")
    W = encode_values(model, "text", [taxonomy_text(r, RANKS) for r in rows.to_dict("records")])
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    off_diag = (W @ W.T)[~np.eye(len(W), dtype=bool)]
    assert off_diag.mean() < 0.9, off_diag.mean()                     # collapsed CLS tower: ≈ 0.99
    X = encode_values(model, "dna", df["nucleotides"].tolist())
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    pred = rows["species_name"].to_numpy()[(X @ W.T).argmax(1)]
    assert (pred == df["species_name"].to_numpy()).mean() >= 0.5       # chance 1/8
