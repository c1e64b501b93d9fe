"""The inference loading options: data-loader workers, encoder threads and the preprocessing cache
change how fast embeddings come, never what they are; skips are still counted."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import medfm
from medfm.cli import main
from medfm.data import read_manifest
from medfm.errors import ConfigError
from medfm.evaluation.embed import embed_manifest, encode_values, load_embeddings
from medfm.evaluation.embed_loader import default_workers, inference_threads
from test_shards import MODEL, make_cohort

SKIPPED = ["s007", "s011", "s013"]  # make_cohort: corrupt .npy files


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workers")
    manifest = make_cohort(tmp)
    torch.manual_seed(0)
    medfm.create_model(MODEL).save_pretrained(tmp / "model")
    return tmp, read_manifest(manifest), medfm.load_pretrained(tmp / "model").eval()


def test_workers_threads_and_cache_give_the_same_embeddings_and_skips(cohort, tmp_path):
    _, df, model = cohort
    ref = embed_manifest(model, df, "toyfile", batch_size=8, num_workers=0, progress=False)
    assert [s["id"] for s in ref.skipped] == SKIPPED and len(ref.ids) > 20
    cache = tmp_path / "cache"
    for kw in (dict(num_workers=2), dict(num_workers=1, threads=1), dict(num_workers=2, cache_dir=cache),
               dict(num_workers=0, cache_dir=cache)):  # the last one reads the cache the one before filled
        got = embed_manifest(model, df, "toyfile", batch_size=8, progress=False, **kw)
        assert got.ids == ref.ids and got.absent == ref.absent
        assert got.skipped == ref.skipped  # counted with reasons, in manifest order, from the workers too
        assert np.abs(got.emb - ref.emb).max() <= 1e-6
    assert len(list(cache.rglob("*.safetensors"))) == len(ref.ids)  # one cache entry per readable sample


def test_cli_workers_flag_matches_workers_0_and_rejects_negative(cohort, tmp_path):
    tmp, _, _ = cohort
    args = ["embed", "--model", str(tmp / "model"), "--manifest", str(tmp / "m.csv"), "--modality", "toyfile",
            "--batch-size", "8", "--no-progress"]
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert main(args + ["--out", str(a), "--workers", "0"]) == 0
    assert main(args + ["--out", str(b), "--workers", "2", "--threads", "1"]) == 0
    ea, eb = load_embeddings(a), load_embeddings(b)
    assert ea.ids == eb.ids and np.abs(ea.emb - eb.emb).max() <= 1e-6  # another thread count: float rounding
    assert [s["id"] for s in eb.skipped] == SKIPPED
    assert main(args + ["--out", str(b), "--workers", "-1"]) != 0
    assert not main(args + ["--out", str(b), "--threads", "0"]) == 0


def test_default_workers_from_the_cores():
    assert default_workers(8, 32, cores=16) == 0  # one batch: a worker costs more than it saves
    assert default_workers(100, 32, cores=2) == 2  # one per core: preprocessing is the work (bench_embed.py)
    assert default_workers(100, 32, cores=16) == 8  # capped: each worker holds up to two batches
    assert default_workers(100, 32, cores=1) == 1


def _workers_in_daemon(q):
    q.put(default_workers(100, 32, cores=4))


def test_no_default_workers_inside_a_daemonic_process():
    """A daemonic process (e.g. a data-loader worker that embeds) may not start children: 0 workers."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_workers_in_daemon, args=(q,), daemon=True)
    p.start()
    assert q.get(timeout=60) == 0
    p.join()


def test_inference_threads_sets_and_restores():
    before = torch.get_num_threads()
    with inference_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1 and torch.is_inference_mode_enabled()
    assert torch.get_num_threads() == before and not torch.is_inference_mode_enabled()
    with pytest.raises(ConfigError, match="--threads"):
        with inference_threads(0):
            pass


def test_encode_values_with_a_worker_equals_in_process(cohort):
    _, df, model = cohort
    vals = [str(v) for v in df["toy"].dropna()][:6]
    a = encode_values(model, "toy", vals, batch_size=4)
    b = encode_values(model, "toy", vals, batch_size=4, num_workers=1, threads=1)
    assert a.shape == (6, model.embed_dim) and np.abs(a - b).max() <= 1e-6
