"""WebDataset shards: `medfm shard`, resumable writing, streaming with rank/worker split and exact resume."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import ToySignal
from medfm.cli import main
from medfm.data import ManifestDataset, read_manifest
from medfm.data.shard_stream import ShardStream, round_robin_consumed, shard_loader
from medfm.data.shards import decode_sample, iter_shard, open_index, write_shards
from medfm.registry import MODALITIES, get_modality, register_modality


class ToyFile(ToySignal):
    """A file modality (``.npy`` of shape (C, T)) whose train-time randomness lives in ``augment``."""

    name = "toyfile"
    input_kind = "path"
    suffixes = (".npy",)

    def preprocess(self, record, *, train=False, rng=None):
        item = super().preprocess(record, train=False)
        item["scale"] = float(np.abs(record.data).max())
        return self.augment(item, rng) if train else item

    def augment(self, item, rng):
        noise = torch.from_numpy(rng.normal(0, self.options["noise"], size=tuple(item["x"].shape)).astype(np.float32))
        return {**item, "x": item["x"] + noise}


if "toyfile" not in MODALITIES._items:
    register_modality("toyfile")(ToyFile)

MODEL = {"name": "medfm-tiny", "modalities": {"toyfile": {"channels": 2}, "toy": {"channels": 2}}}


def make_cohort(tmp_path: Path, n: int = 40) -> Path:
    """``toyfile`` (.npy) and ``toy`` (inline) per sample; some absent, s007's file corrupt, s011 unreadable in
    both, s013 a corrupt file and no inline value (nothing readable); rows 0 and 30 hold nothing."""
    rng = np.random.default_rng(0)
    (tmp_path / "sig").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        sid = f"s{i:03d}"
        a = rng.normal(size=(2, 32)).astype(np.float32)
        f = tmp_path / "sig" / f"{sid}.npy"
        np.save(f, a)
        if sid in ("s007", "s011", "s013"):
            f.write_bytes(b"not a numpy file")
        inline = "" if i % 6 == 0 else ";".join(" ".join(f"{v:.3f}" for v in ch) for ch in a + 1)
        if sid == "s011":
            inline = "oops"
        if sid == "s013":
            inline = ""
        rows.append({"id": sid, "patient_id": f"p{i // 2}", "toyfile": "" if i % 5 == 0 else f"sig/{sid}.npy",
                     "toy": inline, "label": f"c{i % 3}"})
    path = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def adapters():
    return {m: get_modality(m, **o) for m, o in MODEL["modalities"].items()}


def test_shard_cli_layout_counts_and_unreadable(tmp_path, capsys):
    manifest = make_cohort(tmp_path)
    cfg = tmp_path / "model.yaml"
    cfg.write_text(yaml.safe_dump({"model": MODEL}))
    out = tmp_path / "shards"
    assert main(["shard", str(manifest), "--out", str(out), "--config", str(cfg), "--max-samples", "8",
                 "--label-columns", "label", "--no-progress"]) == 0
    info = json.loads((out / "index.json").read_text())
    df = read_manifest(manifest)
    # s011: file corrupt and inline value unreadable → its file cell errors at shard time; the
    # inline value is kept raw (tokenised at load), so s011 is still stored with `toy`
    assert info["n_samples"] == 40 - 3 and info["n_empty"] == 2
    assert info["modalities"]["toyfile"]["count"] == sum(1 for i in range(40) if i % 5) - 3
    assert info["modalities"]["toy"]["count"] == sum(1 for i in range(40) if i % 6) - 1
    assert info["unreadable"] == ["s013"] and info["n_unreadable"] == 1
    assert sorted(e["id"] for e in info["errors"]) == ["s007", "s011", "s013"]
    assert all(e["modality"] == "toyfile" and "pickled" in e["reason"] for e in info["errors"])
    assert [s["n_samples"] for s in info["shards"]] == [8, 8, 8, 8, 5]
    assert sum(s["counts"].get("toyfile", 0) for s in info["shards"]) == info["modalities"]["toyfile"]["count"]
    assert info["label_vocab"] == {"label": ["c0", "c1", "c2"]}
    # WebDataset layout: KEY.json + KEY.toyfile.safetensors, the tensor equals eval preprocessing
    with tarfile.open(out / "shard-000000.tar") as tar:
        names = tar.getnames()
        assert names[:3] == ["0000000001.json", "0000000001.toyfile.safetensors", "0000000002.json"]
        rec = json.loads(tar.extractfile("0000000001.json").read())
        from safetensors.torch import load

        x = load(tar.extractfile("0000000001.toyfile.safetensors").read())["x"]
    ds = ManifestDataset(df, {"toyfile": adapters()["toyfile"]})
    assert torch.equal(x, ds[1]["inputs"]["toyfile"]["x"])
    assert rec["id"] == "s001" and rec["meta"]["toyfile"]["scale"] == pytest.approx(ds[1]["inputs"]["toyfile"]["scale"])
    assert rec["values"]["toy"] == df.loc[1, "toy"]
    # a second run on the finished folder with other options is refused, naming the folder
    assert main(["shard", str(manifest), "--out", str(out), "--config", str(cfg), "--max-samples", "9",
                 "--no-progress"]) == 1
    assert "another manifest or other preprocessing options" in capsys.readouterr().err


def test_killed_sharding_resumes_to_the_same_shards(tmp_path):
    manifest = make_cohort(tmp_path)
    df = read_manifest(manifest)
    write_shards(df, adapters(), str(tmp_path / "once"), max_samples=7, progress=False)

    class Killed(Exception):
        pass

    def kill_after_two(side):
        if side["number"] == 1:
            raise Killed

    with pytest.raises(Killed):
        write_shards(df, adapters(), str(tmp_path / "twice"), max_samples=7, progress=False, on_commit=kill_after_two)
    assert not (tmp_path / "twice" / "index.json").exists()
    assert sorted(p.name for p in (tmp_path / "twice").glob("shard-*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    (tmp_path / "twice" / "shard-000002.tar.tmp").write_bytes(b"torn")  # what a kill mid-shard leaves
    seen = []
    write_shards(df, adapters(), str(tmp_path / "twice"), max_samples=7, progress=False, on_commit=seen.append)
    assert [s["number"] for s in seen] == [2, 3, 4, 5]  # only the missing shards were written
    once = sorted(p.name for p in (tmp_path / "once").iterdir())
    assert once == sorted(p.name for p in (tmp_path / "twice").iterdir())
    for name in once:
        if name.endswith(".tar") or name == "index.json":
            assert (tmp_path / "once" / name).read_bytes() == (tmp_path / "twice" / name).read_bytes(), name


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sh")
    df = read_manifest(make_cohort(tmp, n=60))
    write_shards(df, adapters(), str(tmp / "shards"), max_samples=5, label_columns=["label"], progress=False)
    return tmp


def ids_of(batches):
    return [i for b in batches for i in b["id"]]


def test_stream_items_equal_manifest_training_with_cache(shard_dir):
    """Augmented items from shards equal those of manifest training with a preprocessing cache."""
    ad = adapters()
    index = open_index(str(shard_dir / "shards"))
    df = read_manifest(shard_dir / "m.csv")
    ds = ManifestDataset(df, ad, train=True, cache_dir=shard_dir / "cache", seed=3, label_columns=["label"])
    ds.set_epoch(2)
    n = 0
    lab = {c: {v: i for i, v in enumerate(vals)} for c, vals in index.info["label_vocab"].items()}
    for s in index.shards[:3]:
        for raw in iter_shard(index, s["name"]):
            got = decode_sample(raw, ad, index.modalities, train=True, seed=3, epoch=2, label_index=lab)
            ref = ds[int(df.index[df["id"] == got["id"]][0])]
            if got.get("skipped"):  # s011: both cells unreadable, in both paths
                assert ref.get("skipped") and got["id"] == "s011"
                continue
            assert got["id"] == ref["id"] and got["labels"] == ref["labels"]
            assert sorted(got["inputs"]) == sorted(ref["inputs"])
            for m in got["inputs"]:
                assert torch.equal(got["inputs"][m]["x"], ref["inputs"][m]["x"]), (got["id"], m)
            n += 1
    assert n == 15 - 1  # s011: nothing readable


def test_stream_splits_ranks_workers_and_shuffles(shard_dir):
    index = open_index(str(shard_dir / "shards"))  # 12 shards of 5
    ad = adapters()
    per_rank = []
    for rank in range(2):
        st = ShardStream(index, ad, batch_size=4, seed=0, shuffle_buffer=8, rank=rank, world_size=2, num_workers=2)
        batches = list(shard_loader(st))
        assert all(len(b["id"]) + b["n_skipped"] == 4 for b in batches)  # s011 counted as skipped
        per_rank.append(batches)
    assert len(per_rank[0]) == len(per_rank[1]) == len(ShardStream(  # ranks stay in step
        index, ad, batch_size=4, rank=0, world_size=2, num_workers=2)) >= 5
    per_rank = [ids_of(b) for b in per_rank]
    assert not set(per_rank[0]) & set(per_rank[1])  # disjoint shards per rank
    stored = {json.loads(r["json"])["id"] for s in index.shards for r in iter_shard(index, s["name"])}
    assert set(per_rank[0]) | set(per_rank[1]) <= stored
    seen = per_rank[0] + per_rank[1]
    assert len(set(seen)) == len(seen) >= 0.8 * len(stored)  # no repeats; partial batches of streams left out
    one = ShardStream(index, ad, batch_size=4, seed=0, shuffle_buffer=8)
    e0 = ids_of(shard_loader(one))
    one.set_epoch(1)
    e1 = ids_of(shard_loader(one))
    assert len(set(e0) & set(e1)) >= len(e0) - 4  # same samples up to the dropped tail
    assert e0 != e1 and e0 != sorted(e0)  # shuffled, differently per epoch


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_resumes_mid_epoch_at_the_same_sample(shard_dir, workers):
    index = open_index(str(shard_dir / "shards"))
    st = ShardStream(index, adapters(), batch_size=3, seed=1, shuffle_buffer=6, num_workers=workers, rank=1,
                     world_size=2)
    full = list(shard_loader(st))
    for k in (1, 4, len(full) - 1):
        st.set_epoch(0, start=k)
        rest = list(shard_loader(st))
        assert ids_of(rest) == ids_of(full[k:]), k
        a, b = rest[0]["inputs"]["toyfile"]["x"], full[k]["inputs"]["toyfile"]["x"]
        assert torch.equal(a, b)


def test_round_robin_consumed():
    # A1 B1 A2 B2 B3: A is finished, so "A due next" serves B4
    assert round_robin_consumed([2, 4], 5) == ([2, 3], 0)
    assert round_robin_consumed([3, 3, 1], 4) == ([2, 1, 1], 1)
    assert round_robin_consumed([3, 3, 1], 5) == ([2, 2, 1], 2)
    assert round_robin_consumed([0, 2], 2) == ([0, 2], 0)


def test_shards_through_an_fsspec_memory_filesystem(shard_dir):
    fs = fsspec.filesystem("memory")
    for p in (shard_dir / "shards").iterdir():
        fs.pipe_file(f"/cohort/{p.name}", p.read_bytes())
    local = ShardStream(open_index(str(shard_dir / "shards")), adapters(), batch_size=4, seed=2)
    mem = ShardStream(open_index("memory://cohort"), adapters(), batch_size=4, seed=2)
    assert ids_of(shard_loader(mem)) == ids_of(shard_loader(local))
    # a brace pattern selects a subset of the shards
    sub = open_index("memory://cohort/shard-{000000..000002}.tar")
    assert [s["name"] for s in sub.shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    # writing through fsspec too
    df = read_manifest(shard_dir / "m.csv")
    idx = write_shards(df.head(12), adapters(), "memory://written", max_samples=5, progress=False)
    assert fs.exists("/written/index.json") and idx.info["n_samples"] == 11  # row 0 is empty
    fs.rm("/cohort", recursive=True)
    fs.rm("/written", recursive=True)


def test_pretrain_from_shards_resumes_exactly(tmp_path, shard_dir):
    cfg = {"model": MODEL,
           "data": {"shards": str(shard_dir / "shards"), "batch_size": 8, "split": None, "shuffle_buffer": 16},
           "objectives": [{"name": "clip", "weight": 1.0}],
           "optim": {"lr": 3e-3, "warmup_steps": 2},
           "train": {"max_steps": 10, "checkpoint_every": 4, "keep_checkpoints": 3, "tensorboard": False, "progress": False}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["pretrain", str(path), "--out", str(out)]) == 0
    full = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert full[-1]["epoch"] >= 1  # crossed an epoch boundary (7 batches of 8 per epoch)
    shutil.rmtree(out / "checkpoints" / "step_00000010")
    shutil.rmtree(out / "checkpoints" / "step_00000008")
    (out / "metrics.jsonl").unlink()
    assert main(["pretrain", str(path), "--out", str(out)]) == 0
    resumed = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [5, 6, 7, 8, 9, 10]
    for a, b in zip(full[4:], resumed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), (a, b)
    # shards preprocessed with other options are refused
    cfg["model"] = {**MODEL, "modalities": {**MODEL["modalities"], "toyfile": {"channels": 2, "noise": 0.5}}}
    path.write_text(yaml.safe_dump(cfg))
    assert main(["pretrain", str(path), "--out", str(tmp_path / "o2")]) == 2
