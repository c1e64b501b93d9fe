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


# ------------------------------------------------------------------ runs own their output folder
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import yaml  # noqa: E402

from medfm.cli import main  # noqa: E402
from medfm.train.run_guard import LOCK_NAME  # noqa: E402
from test_resume import _DRIVER, _config, _manifest, _metrics  # noqa: E402

HERE = Path(__file__).resolve().parent


def _set(cfg_path: Path, section: str, key: str, value) -> Path:
    cfg = yaml.safe_load(cfg_path.read_text())
    if key:
        cfg[section][key] = value
    else:
        cfg[section] = value
    out = cfg_path.with_name(f"{cfg_path.stem}_{section}_{key or 'all'}.yaml")
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


@pytest.mark.timeout(180)
def test_sigterm_checkpoints_and_exits_1_and_a_second_run_is_refused_by_pid(tmp_path, capsys):
    cfg = _config(tmp_path, _manifest(tmp_path, n=24), ["toy", "toyb"], max_steps=500, checkpoint_every=0)
    out = tmp_path / "out"
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER.format(tests=str(HERE)))
    proc = subprocess.Popen([sys.executable, str(driver), "pretrain", str(cfg), "--out", str(out)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            m = out / "metrics.jsonl"
            if m.is_file() and m.read_text().strip():
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        # a second run into the same --out while the first runs: refused, naming the owner's pid
        lock = json.loads((out / LOCK_NAME).read_text())
        assert lock == {**lock, "pid": proc.pid, "host": socket.gethostname()}
        capsys.readouterr()
        assert main(["pretrain", str(cfg), "--out", str(out)]) == 1
        assert f"pid {proc.pid}" in capsys.readouterr().err
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-2000:]
    stopped = re.search(r"stopped at step (\d+), resume with the same command", err)
    assert stopped, err[-2000:]
    n = int(stopped.group(1))
    assert [r["step"] for r in _metrics(out)] == list(range(1, n + 1))
    assert (out / "checkpoints" / f"step_{n:08d}").is_dir() and not (out / LOCK_NAME).exists()
    # the same command resumes from that step (here with a nearer horizon, so the test is short)
    assert main(["pretrain", str(cfg), "--out", str(out), "--max-steps", str(n + 2)]) == 0
    assert [r["step"] for r in _metrics(out)] == list(range(1, n + 3))


def test_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    cfg = _config(tmp_path, _manifest(tmp_path, n=16), ["toy", "toyb"], max_steps=1)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with caplog.at_level(logging.WARNING):
        assert main(["pretrain", str(cfg), "--out", str(out)]) == 0
    assert "stale lock" in caplog.text and str(dead.pid) in caplog.text
    assert not (out / LOCK_NAME).exists()  # released at the end


def test_finetune_into_a_used_out_is_refused(tmp_path, capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "ft"
        out.mkdir()
        (out / LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        cfg = tmp_path / "ft.yaml"
        cfg.write_text(yaml.safe_dump({"base": str(tmp_path / "nowhere"), "data": {"manifest": "m.csv"}}))
        from medfm.finetune import FineTuner
        from medfm.train.run_guard import OutputInUse

        with pytest.raises(OutputInUse, match=f"pid {sleeper.pid}"):
            FineTuner({"base": str(tmp_path / "nowhere"), "data": {"manifest": str(_manifest(tmp_path, n=8))}}, out)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_resume_with_another_data_order_or_objective_is_refused_unless_forced(tmp_path, capsys, caplog):
    manifest = _manifest(tmp_path, n=24)
    cfg = _config(tmp_path, manifest, ["toy", "toyb"], max_steps=2, checkpoint_every=2)
    out = tmp_path / "out"
    assert main(["pretrain", str(cfg), "--out", str(out)]) == 0
    data = yaml.safe_load(cfg.read_text())["data"]
    cases = [(_set(cfg, "data", "batch_size", 4), "data.batch_size: 8 → 4"),
             (_set(cfg, "train", "seed", 1), "train.seed: 0 → 1"),
             (_set(cfg, "train", "accumulation", 2), "train.accumulation: 1 → 2"),
             (_set(cfg, "objectives", None, [{"name": "clip", "weight": 1.0}]), "objectives: ")]
    for other, first in cases:
        capsys.readouterr()
        assert main(["pretrain", str(other), "--out", str(out), "--max-steps", "3"]) == 1, first
        err = capsys.readouterr().err
        assert "resuming would change the data order or the objective" in err and first in err, err
    # another manifest content at the same path
    import pandas as pd

    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    pd.concat([df, df.iloc[:1].assign(id="extra")]).to_csv(manifest, index=False)
    assert main(["pretrain", str(cfg), "--out", str(out), "--max-steps", "3"]) == 1
    assert "data_sha256" in capsys.readouterr().err
    assert data["batch_size"] == 8
    # forced: resumes, with a warning naming the change
    with caplog.at_level(logging.WARNING):
        assert main(["pretrain", str(cases[0][0]), "--out", str(out), "--max-steps", "3", "--force-resume"]) == 0
    assert "forced" in caplog.text and "data.batch_size" in caplog.text
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3]


# ------------------------------------------------------------------ index files are checked
def _saved_index(tmp_path, n=400, dim=16):
    import numpy as np

    from medfm.evaluation.index import VectorIndex

    x = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    VectorIndex.build(x, [f"s{i}" for i in range(n)], model_fingerprint="a" * 64).save(tmp_path / "ix")
    return tmp_path / "ix", x


def test_flipped_bytes_in_index_faiss_are_an_error_naming_the_file(tmp_path):
    from medfm.errors import CheckpointError
    from medfm.evaluation.index import VectorIndex

    d, x = _saved_index(tmp_path)
    assert VectorIndex.load(d).search(x[:2], 3)[1][:, 0].tolist() == [0, 1]
    blob = bytearray((d / "index.faiss").read_bytes())
    start = len(blob) // 2
    blob[start:start + 64] = bytes(b ^ 0xFF for b in blob[start:start + 64])  # 64 flipped bytes in the vectors
    (d / "index.faiss").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"index\.faiss: checksum mismatch"):
        VectorIndex.load(d)
    # metadata too
    d2, _ = _saved_index(tmp_path / "b")
    import pandas as pd

    pd.DataFrame({"id": [f"t{i}" for i in range(400)]}).to_parquet(d2 / "metadata.parquet", index=False)
    with pytest.raises(CheckpointError, match=r"metadata\.parquet: checksum mismatch"):
        VectorIndex.load(d2)


def test_an_index_without_fingerprint_or_checksums_is_refused(tmp_path):
    import numpy as np

    from medfm.errors import CheckpointError, ConfigError
    from medfm.evaluation.index import VectorIndex

    x = np.eye(4, 8, dtype=np.float32)
    with pytest.raises(ConfigError, match="fingerprint"):
        VectorIndex.build(x, list("abcd")).save(tmp_path / "nofp")
    with pytest.raises(CheckpointError, match="no model fingerprint"):
        VectorIndex.build(x, list("abcd")).check_model("b" * 64)
    d, _ = _saved_index(tmp_path)
    info = json.loads((d / "index.json").read_text())
    (d / "index.json").write_text(json.dumps({**info, "model_fingerprint": None}))
    with pytest.raises(CheckpointError, match="no model fingerprint"):
        VectorIndex.load(d)
    old = {k: v for k, v in info.items() if k != "files_sha256"}  # an index of an older medfm
    (d / "index.json").write_text(json.dumps(old))
    with pytest.raises(CheckpointError, match="no file checksums.*medfm index build"):
        VectorIndex.load(d)


def test_sigterm_stops_finetune_at_the_next_step_and_releases_out(tmp_path, monkeypatch):
    from medfm.finetune import FineTuner
    from medfm.finetune import finetuner as ft_mod
    from medfm.train.run_guard import RunStopped
    from toy_cohort import write_toy_manifest

    manifest = write_toy_manifest(tmp_path / "m.csv", n=40)
    torch.manual_seed(0)
    medfm.create_model({"name": "medfm-tiny", "trunk": {"depth": 1}, "modalities": {"toy": {}}}).save_pretrained(
        tmp_path / "base")
    real = ft_mod.TrainCore.step

    def step_then_sigterm(self, *a, **k):
        res = real(self, *a, **k)
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the handler, as from `kill`
        return res

    monkeypatch.setattr(ft_mod.TrainCore, "step", step_then_sigterm)
    ft = FineTuner({"base": str(tmp_path / "base"), "data": {"manifest": str(manifest), "batch_size": 8, "split_column": None},
                    "optim": {"epochs": 3}, "progress": False, "tensorboard": False}, tmp_path / "ft")
    assert (tmp_path / "ft" / LOCK_NAME).is_file()
    with pytest.raises(RunStopped, match="stopped at step 1; this command does not resume"):
        ft.fit()
    assert not (tmp_path / "ft" / LOCK_NAME).exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
