"""Hostile runs and outputs: corrupt shard members, two runs on one ``--out``, SIGTERM, resume with
another data order, tampered indexes. Each case asserts its outcome and finishes in seconds."""
from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import pytest
import torch

import medfm
from medfm.data import read_manifest
from medfm.data.shard_stream import ShardStream
from medfm.data.shards import iter_shard, open_index, write_shards
from medfm.errors import DataError
from test_shards import MODEL, adapters, make_cohort


# ------------------------------------------------------------------ shards degrade per sample
def _rewrite_member(tar_path: Path, replace: dict) -> None:
    """Rewrite a tar with ``{member name: new bytes}`` swapped in (order and other members kept)."""
    members = []
    with tarfile.open(tar_path) as tar:
        for m in tar.getmembers():
            members.append((m, replace.get(m.name, tar.extractfile(m).read())))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m, data in members:
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    tar_path.write_bytes(buf.getvalue())


@pytest.fixture()
def corrupt_shards(tmp_path):
    df = read_manifest(make_cohort(tmp_path, n=20))
    root = tmp_path / "shards"
    write_shards(df, adapters(), str(root), max_samples=5, progress=False)
    with tarfile.open(root / "shard-000000.tar") as tar:
        names = tar.getnames()
    tensor = next(n for n in names if n.endswith(".toyfile.safetensors"))
    record = next(n for n in names if n.endswith(".json") and not n.startswith(tensor.split(".")[0]))
    _rewrite_member(root / "shard-000000.tar", {tensor: b"PK\x03\x04 a zip, not safetensors",
                                                record: b"{not json at all"})
    return root, tensor, record


def test_corrupt_shard_members_are_counted_skips_naming_shard_member_and_sample(corrupt_shards, caplog):
    root, tensor, record = corrupt_shards
    index = open_index(str(root))
    stream = ShardStream(index, adapters(), batch_size=4, seed=0, shuffle_buffer=8, train=True)
    stream.set_epoch(0)
    n_skipped, errors, ids = 0, [], []
    with caplog.at_level(logging.WARNING, logger="medfm.data"):
        for batch in stream:  # the old code raised SafetensorError / JSONDecodeError here
            n_skipped += batch["n_skipped"]
            errors += batch["errors"]
            ids += batch["id"]
    bad_key = record.split(".")[0]
    json_errs = [e for e in errors if e[1] == "json"]
    assert n_skipped >= 1 and [e[0] for e in json_errs] == [bad_key]
    assert "shard-000000.tar" in json_errs[0][2] and record in json_errs[0][2]
    tensor_errs = [e for e in errors if "safetensors" in e[2]]
    assert len(tensor_errs) == 1 and tensor_errs[0][1] == "toyfile"
    assert "shard-000000.tar" in tensor_errs[0][2] and tensor in tensor_errs[0][2]
    assert f"sample {tensor_errs[0][0]}" in tensor_errs[0][2]  # the sample's id
    assert record in caplog.text and tensor in caplog.text
    assert len(ids) >= 8  # the rest of the shard set trained


def test_corrupt_shard_members_are_skipped_by_embed(corrupt_shards):
    from medfm.evaluation.embed_shards import embed_shards

    root, tensor, record = corrupt_shards
    torch.manual_seed(0)
    model = medfm.create_model(MODEL).eval()
    emb = embed_shards(model, open_index(str(root)), "toyfile", batch_size=4, progress=False)
    reasons = {e["id"]: e["reason"] for e in emb.skipped}
    assert record.split(".")[0] in reasons and record in reasons[record.split(".")[0]]
    assert any(tensor in r for r in reasons.values())
    assert len(emb.ids) >= 8


def test_truncated_shard_is_named(tmp_path):
    df = read_manifest(make_cohort(tmp_path, n=12))
    root = tmp_path / "shards"
    write_shards(df, adapters(), str(root), max_samples=5, progress=False)
    blob = (root / "shard-000001.tar").read_bytes()
    (root / "shard-000001.tar").write_bytes(blob[: len(blob) // 2 + 100])
    index = open_index(str(root))
    with pytest.raises(DataError, match="shard-000001.tar"):
        for _ in iter_shard(index, "shard-000001.tar"):
            pass
