"""``medfm embed --shards``: from shards = from the manifest, bit for bit; 2 gloo ranks = 1 process; fsspec URLs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

import medfm
from medfm.cli import main
from medfm.data import read_manifest
from medfm.data.shards import open_index, write_shards
from medfm.evaluation.embed import load_embeddings, load_model
from medfm.evaluation.embed_dist import merge_embeddings, part_path
from medfm.evaluation.embed_shards import covered_batches, embed_shards, rank_batches
from test_shards import MODEL, adapters, make_cohort

HERE = Path(__file__).resolve().parent
EMPTY_ROWS = ["s000", "s030"]  # make_cohort: rows with no modality at all are not sharded


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """40-row cohort sharded 7 samples per shard (shard and batch boundaries do not line up) + a model."""
    tmp = tmp_path_factory.mktemp("emb")
    manifest = make_cohort(tmp)
    write_shards(read_manifest(manifest), adapters(), str(tmp / "shards"), max_samples=7, progress=False)
    torch.manual_seed(0)
    medfm.create_model(MODEL).save_pretrained(tmp / "model")
    return tmp


def embed_args(cohort, modality, source, out, batch_size=8):
    return ["embed", "--model", str(cohort / "model"), source[0], str(source[1]), "--modality", modality,
            "--batch-size", str(batch_size), "--no-progress", "--out", str(out)]


@pytest.mark.parametrize("modality,skipped,batch_size", [("toyfile", ["s007", "s011", "s013"], 8),
                                                         ("toy", ["s011"], 8), ("toyfile", ["s007", "s011", "s013"], 5)])
def test_shards_embed_equals_manifest_embed(cohort, tmp_path, modality, skipped, batch_size):
    a, b = tmp_path / "manifest.safetensors", tmp_path / "shards.safetensors"
    assert main(embed_args(cohort, modality, ("--manifest", cohort / "m.csv"), a, batch_size)) == 0
    assert main(embed_args(cohort, modality, ("--shards", cohort / "shards"), b, batch_size)) == 0
    man, sh = load_embeddings(a), load_embeddings(b)
    assert len(man.ids) > 20 and sh.ids == man.ids  # manifest order
    assert np.array_equal(sh.emb, man.emb)  # bit for bit: same preprocessed inputs, same batches
    assert sh.skipped == man.skipped and [s["id"] for s in sh.skipped] == skipped  # shard-time + decode-time
    assert set(sh.absent) <= set(man.absent) and sorted(set(man.absent) - set(sh.absent)) == EMPTY_ROWS


def test_rank_split_covers_the_batches_once(cohort):
    index = open_index(str(cohort / "shards"))
    batches = covered_batches(index, 8)
    assert batches == [0, 1, 2, 3, 4]
    for world in (1, 2, 3, 7):
        parts = [rank_batches(batches, r, world) for r in range(world)]
        assert [k for p in parts for k in p] == batches
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_more_ranks_than_shards_split_by_sample(cohort, tmp_path):
    """One shard, three ranks: each reads it and keeps its own batches; concatenated = single process."""
    df = read_manifest(cohort / "m.csv")
    write_shards(df, adapters(), str(tmp_path / "one"), progress=False)
    index = open_index(str(tmp_path / "one"))
    assert len(index.shards) == 1
    model, _ = load_model(cohort / "model")
    whole = embed_shards(model, index, "toyfile", batch_size=8, progress=False)
    parts = [embed_shards(model, index, "toyfile", batch_size=8, rank=r, world_size=3, progress=False)
             for r in range(3)]
    assert all(len(p.ids) for p in parts)
    merged = merge_embeddings(parts)
    assert merged.ids == whole.ids and np.array_equal(merged.emb, whole.emb)
    assert merged.skipped == whole.skipped and merged.absent == whole.absent


def test_shards_from_an_fsspec_memory_url(cohort):
    fs = fsspec.filesystem("memory")
    for p in (cohort / "shards").iterdir():
        fs.pipe_file(f"/embcohort/{p.name}", p.read_bytes())
    try:
        model, _ = load_model(cohort / "model")
        local = embed_shards(model, open_index(str(cohort / "shards")), "toyfile", batch_size=8, progress=False)
        mem = embed_shards(model, open_index("memory://embcohort"), "toyfile", batch_size=8, progress=False)
        assert mem.ids == local.ids and np.array_equal(mem.emb, local.emb) and mem.skipped == local.skipped
        # a brace pattern embeds only its shards (rows 0-13 are in the first two of 7 samples each)
        sub = embed_shards(model, open_index("memory://embcohort/shard-{000000..000001}.tar"), "toyfile",
                           batch_size=8, progress=False)
        assert sub.ids == [i for i in local.ids if int(i[1:]) <= 15] and len(sub.ids) < len(local.ids)
        assert np.array_equal(sub.emb, local.emb[:len(sub.ids)])
    finally:
        fs.rm("/embcohort", recursive=True)


def test_bad_shard_source_is_a_one_line_error(cohort, tmp_path, capsys):
    assert main(embed_args(cohort, "toyfile", ("--shards", tmp_path / "nowhere"), tmp_path / "x.safetensors")) == 1
    assert "no index.json" in capsys.readouterr().err
    assert main(embed_args(cohort, "toyfile", ("--shards", cohort / "shards"), tmp_path / "x.safetensors")
                + ["--split", "train"]) == 2


@pytest.mark.timeout(240)
def test_two_gloo_ranks_embed_shards_equals_single_process(cohort, tmp_path, one_thread):
    args = embed_args(cohort, "toyfile", ("--shards", cohort / "shards"), tmp_path / "dual.safetensors")
    script = tmp_path / "cli.py"  # the CLI with the test modalities (toy, toyfile) registered
    script.write_text(f"import sys\nsys.path.insert(0, {str(HERE)!r})\nimport conftest, test_shards\n"
                      "from medfm.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)] + args, capture_output=True, text=True, env=env, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(embed_args(cohort, "toyfile", ("--shards", cohort / "shards"), tmp_path / "single.safetensors")) == 0
    single, dual = load_embeddings(tmp_path / "single.safetensors"), load_embeddings(tmp_path / "dual.safetensors")
    assert dual.ids == single.ids and len(single.ids) > 20
    assert np.array_equal(dual.emb, single.emb)
    assert dual.skipped == single.skipped and dual.absent == single.absent
    # each rank wrote its own part: batches 0-1 (rows 0-15) and 2-4 (rows 16-39)
    p0, p1 = (load_embeddings(part_path(tmp_path / "dual.safetensors", r, 2)) for r in range(2))
    assert p0.ids and p1.ids and p0.ids + p1.ids == dual.ids
    assert max(int(i[1:]) for i in p0.ids) < 16 <= min(int(i[1:]) for i in p1.ids)
    assert [s["id"] for s in p0.skipped] == ["s007", "s011", "s013"] and p1.skipped == []
