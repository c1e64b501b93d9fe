"""Vector index: exact top-k for flat, recall ≥ 0.95 for approximate kinds, persistence, model identity."""
import json

import numpy as np
import pandas as pd
import pytest

from medfm.errors import CheckpointError, DataError
from medfm.evaluation.index import VectorIndex, choose_index, model_fingerprint


def _clustered(n, d, rng, n_clusters=20):
    """Clusters with a low intrinsic dimension (8-d latent), like learned embeddings."""
    centers = rng.normal(size=(n_clusters, d))
    basis = np.random.default_rng(123).normal(size=(8, d))
    x = centers[rng.integers(0, n_clusters, n)] + 0.4 * rng.normal(size=(n, 8)) @ basis / 2 + 0.05 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _exact_topk(x, q, k):
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


def test_flat_index_equals_exact_search():
    rng = np.random.default_rng(0)
    x, q = _clustered(2000, 24, rng), _clustered(50, 24, rng)
    idx = VectorIndex.build(x, [f"id{i}" for i in range(len(x))])
    assert idx.info["kind"] == "flat"
    scores, pos = idx.search(q, 10)
    ref = _exact_topk(x, q, 10)
    assert (np.sort(pos, 1) == np.sort(ref, 1)).all()
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, ref, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_recall(kind):
    rng = np.random.default_rng(1)
    x, q = _clustered(6000, 32, rng), _clustered(200, 32, rng)
    spec = choose_index(len(x), 32, kind=kind)
    # search effort for ≥ 0.95 on these 20 overlapping clusters (the benchmark measures the trade-off)
    spec["params"].update({"nprobe": 32} if kind == "ivf" else {"efSearch": 256})
    idx = VectorIndex.build(x, list(range(len(x))), spec=spec)
    _, pos = idx.search(q, 10)
    ref = _exact_topk(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos, ref)])
    assert recall >= 0.95


def test_choose_index_by_size():
    assert choose_index(1000, 64)["kind"] == "flat"
    assert choose_index(60_000, 64)["kind"] == "ivf"
    assert choose_index(60_000, 64, flat_max=100_000)["kind"] == "flat"


def test_save_load_roundtrip_with_metadata(tmp_path):
    rng = np.random.default_rng(2)
    x = _clustered(3000, 16, rng)
    meta = pd.DataFrame({"label": [f"c{i % 3}" for i in range(3000)]})
    idx = VectorIndex.build(x, [f"s{i}" for i in range(3000)], metadata=meta, kind="hnsw",
                            model_fingerprint="f" * 64, modality="vec")
    idx.save(tmp_path / "ix")
    info = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert info["kind"] == "hnsw" and info["params"]["efSearch"] == 128 and info["model_fingerprint"] == "f" * 64
    back = VectorIndex.load(tmp_path / "ix")
    assert back.index.hnsw.efSearch == 128  # search parameters survive faiss.write_index
    q = x[:5]
    assert (back.search(q, 5)[1] == idx.search(q, 5)[1]).all()
    hits = back.search_records(q, 3)
    assert hits[0][0]["id"] == "s0" and hits[0][0]["label"] == "c0" and hits[0][0]["rank"] == 1
    assert hits[0][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_model_fingerprint_and_refusal(tmp_path):
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text('{"x": 1}')
        (d / "model.safetensors").write_bytes(b"weights-" + name.encode())
    fa, fb = model_fingerprint(tmp_path / "a"), model_fingerprint(tmp_path / "b")
    assert fa != fb and len(fa) == 64
    assert model_fingerprint(tmp_path / "a") == fa
    idx = VectorIndex.build(np.eye(3, 4, dtype=np.float32), ["1", "2", "3"], model_fingerprint=fa)
    idx.check_model(fa)
    with pytest.raises(CheckpointError) as e:
        idx.check_model(fb, tmp_path / "b")
    assert fa[:16] in str(e.value) and fb[:16] in str(e.value)
    with pytest.raises(CheckpointError, match="missing"):
        model_fingerprint(tmp_path)


def test_empty_gallery_and_bad_query():
    with pytest.raises(DataError, match="empty gallery"):
        VectorIndex.build(np.zeros((0, 8), np.float32), [])
    idx = VectorIndex.build(np.eye(3, 4, dtype=np.float32), ["1", "2", "3"])
    with pytest.raises(DataError, match="dimension"):
        idx.search(np.ones((1, 5)), 2)
    assert idx.search(np.ones((1, 4)), 10)[1].shape == (1, 3)  # k capped at the gallery size
