"""Resume that cannot silently go wrong: optimizer state by name, modality order, fallback to an
intact checkpoint, temporaries cleaned, no duplicate metric lines, and ``kill -9`` mid-run."""
from __future__ import annotations

import itertools
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from medfm.cli import main
from medfm.errors import CheckpointError
from medfm.registry import MODALITIES, register_modality
from medfm.train.resume_checkpoint import load_optimizer_state_by_name, optimizer_state_by_name
from conftest import ToySignal
from toy_cohort import write_toy_manifest

HERE = Path(__file__).resolve().parent


class ToySignalC(ToySignal):
    name = "toyc"


if "toyc" not in MODALITIES._items:
    register_modality("toyc")(ToySignalC)


def _manifest(tmp_path, n=24):
    import pandas as pd

    path = write_toy_manifest(tmp_path / "m.csv", n=n, missing_every=0)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df["toyc"] = df["toy"]  # a third modality (same 2-channel signal format)
    df.to_csv(path, index=False)
    return path


def _config(tmp_path, manifest, order, name="run.yaml", **train):
    opts = {"toy": {}, "toyb": {"channels": 3}, "toyc": {}}
    cfg = {
        "model": {"name": "medfm-tiny", "trunk": {"depth": 1}, "modalities": {m: opts[m] for m in order}},
        "data": {"manifest": str(manifest), "batch_size": 8, "split": None},
        "objectives": [{"name": "clip", "weight": 1.0}, {"name": "masked", "weight": 0.5}],
        "optim": {"lr": 3e-3, "warmup_steps": 1},
        "train": {"max_steps": 4, "checkpoint_every": 2, "log_every": 1, "tensorboard": False, "progress": False,
                  "num_threads": 1, **train},
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _metrics(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _simulate_kill_after_step(out, keep_step):
    """What a kill leaves: later checkpoints gone, ``latest`` naming a missing one, metrics past it."""
    import shutil

    for p in (out / "checkpoints").glob("step_*"):
        if int(p.name.split("_")[1]) > keep_step:
            shutil.rmtree(p)


def test_every_modality_order_resumes_to_the_uninterrupted_losses(tmp_path):
    manifest = _manifest(tmp_path)
    reference = None
    for k, order in enumerate(itertools.permutations(["toy", "toyb", "toyc"])):
        cfg = _config(tmp_path, manifest, order, name=f"run{k}.yaml")
        out = tmp_path / f"out{k}"
        assert main(["pretrain", str(cfg), "--out", str(out)]) == 0
        full = _metrics(out)
        _simulate_kill_after_step(out, 2)
        assert main(["pretrain", str(cfg), "--out", str(out)]) == 0
        resumed = _metrics(out)
        assert [r["step"] for r in resumed] == [1, 2, 3, 4], order  # no duplicated lines
        for a, b in zip(full, resumed):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), (order, a, b)
        losses = [r["loss"] for r in full]
        if reference is None:
            reference = losses
        # the YAML order does not change the run at all
        assert losses == pytest.approx(reference, rel=1e-5, abs=1e-6), order


def test_optimizer_state_follows_names_not_positions():
    torch.manual_seed(0)
    a = torch.nn.ModuleDict({"x": torch.nn.Linear(3, 4), "y": torch.nn.Linear(4, 2)})
    opt = torch.optim.AdamW(a.parameters(), lr=0.1)
    a["y"](a["x"](torch.randn(5, 3))).sum().backward()
    opt.step()
    saved = optimizer_state_by_name(a, opt)
    # the same modules registered in the other order: positions differ, names do not
    b = torch.nn.ModuleDict({"y": torch.nn.Linear(4, 2), "x": torch.nn.Linear(3, 4)})
    b.load_state_dict(a.state_dict())
    opt_b = torch.optim.AdamW(b.parameters(), lr=0.1)
    load_optimizer_state_by_name(b, opt_b, saved)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    for name in pa:
        assert torch.equal(opt.state[pa[name]]["exp_avg"], opt_b.state[pb[name]]["exp_avg"]), name
    # a positional load (the old behaviour) silently gives moments of the wrong tensors
    wrong = torch.optim.AdamW(b.parameters(), lr=0.1)
    wrong.load_state_dict(opt.state_dict())
    assert any(wrong.state[p]["exp_avg"].shape != p.shape for p in b.parameters())
    # a different parameter set is refused, naming the first difference
    c = torch.nn.ModuleDict({"x": torch.nn.Linear(3, 4), "z": torch.nn.Linear(4, 2)})
    with pytest.raises(CheckpointError, match=r"parameter 'y\.bias', which the model lacks|'z\.bias'"):
        load_optimizer_state_by_name(c, torch.optim.AdamW(c.parameters()), saved)


def test_changed_model_config_is_refused_and_corrupt_latest_falls_back(tmp_path, capsys, caplog):
    manifest = _manifest(tmp_path, n=16)
    cfg = _config(tmp_path, manifest, ["toy", "toyb"])
    out = tmp_path / "out"
    assert main(["pretrain", str(cfg), "--out", str(out)]) == 0
    full = _metrics(out)
    # another modality set in the config: refused, one line, exit 1, the key path named
    other = _config(tmp_path, manifest, ["toy", "toyb", "toyc"], name="other.yaml")
    capsys.readouterr()
    assert main(["pretrain", str(other), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "model.modalities.toyc" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # a torn model.safetensors in the newest checkpoint: resume from the older one, with a warning
    ckpts = out / "checkpoints"
    newest = sorted(ckpts.glob("step_*"))[-1]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    # and leftovers of a killed checkpoint write
    (ckpts / ".step_00000006.tmp-abc123").mkdir()
    (ckpts / ".step_00000006.tmp-abc123" / "model.safetensors").write_bytes(b"half")
    (ckpts / ".latest.xyz").write_text("step_")
    with caplog.at_level(logging.WARNING, logger="medfm.train"):
        assert main(["pretrain", str(cfg), "--out", str(out), "--max-steps", "4"]) == 0
    text = caplog.text
    assert f"checkpoint {newest} is unreadable" in text
    assert ".step_00000006.tmp-abc123" in text
    assert not any(p.name.startswith(".") for p in ckpts.iterdir())
    resumed = _metrics(out)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(full, resumed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)


_DRIVER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import conftest, test_resume  # registers the toy modalities
import medfm.train.resume_checkpoint as ck
kill_at = int(os.environ.get("KILL_IN_SAVE_AT", "0"))
if kill_at:
    real = ck.torch.save
    def save(obj, path, *a, **k):
        if obj.get("step") == kill_at:  # half of the checkpoint is on disk: die like kill -9
            with open(path, "wb") as fh:
                fh.write(b"torn")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(obj, path, *a, **k)
    ck.torch.save = save
from medfm.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.timeout(180)
def test_kill_9_at_a_random_step_and_during_a_checkpoint_write(tmp_path):
    manifest = _manifest(tmp_path, n=24)
    cfg = _config(tmp_path, manifest, ["toyc", "toy"], max_steps=6, checkpoint_every=2)
    ref = tmp_path / "ref"
    assert main(["pretrain", str(cfg), "--out", str(ref)]) == 0
    expected = _metrics(ref)
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER.format(tests=str(HERE)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    # 1) SIGKILL from outside once metrics.jsonl reaches a random step in 2..5
    out1 = tmp_path / "killed"
    target = random.Random(time.time_ns()).randint(2, 5)
    proc = subprocess.Popen([sys.executable, str(driver), "pretrain", str(cfg), "--out", str(out1)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        m = out1 / "metrics.jsonl"
        if m.is_file() and len(m.read_text().splitlines()) >= target:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(30)
    # 2) SIGKILL inside the step-4 checkpoint write (half of it on disk)
    out2 = tmp_path / "killed_in_save"
    proc = subprocess.run([sys.executable, str(driver), "pretrain", str(cfg), "--out", str(out2)],
                          env={**env, "KILL_IN_SAVE_AT": "4"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert any(p.name.startswith(".step_00000004.tmp-") for p in (out2 / "checkpoints").iterdir())

    for out in (out1, out2):
        assert main(["pretrain", str(cfg), "--out", str(out)]) == 0
        got = _metrics(out)
        assert [r["step"] for r in got] == list(range(1, 7)), (out, target)  # no duplicate lines
        for a, b in zip(expected, got):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), (out, target, a, b)
        assert not any(p.name.startswith(".") for p in (out / "checkpoints").iterdir())


def test_cohort_text_tokenizer_is_byte_identical_across_fits(tmp_path):
    """The same training texts give the same tokenizer files (tokenizers' trainer alone does not)."""
    import numpy as np

    from medfm.registry import get_modality

    rng = np.random.default_rng(0)
    words = ["heart", "lung", "effusion", "normal", "sinus", "rhythm", "atrial", "fibrillation", "no", "acute",
             "finding", "mild", "cardiomegaly", "opacity", "left", "right", "base", "pleural", "edema"]
    texts = [" ".join(rng.choice(words, 12)) + "." for _ in range(300)]
    blobs = []
    for k in range(4):
        adapter = get_modality("text", vocab_size=300, min_frequency=2)
        adapter.fit(texts)
        adapter.save_pretrained(tmp_path / f"t{k}")
        blobs.append({p.name: p.read_bytes() for p in sorted((tmp_path / f"t{k}").iterdir())})
    assert "text_tokenizer.json" in blobs[0]
    assert all(b == blobs[0] for b in blobs[1:])
    ids = adapter.encode_batch(["Mild cardiomegaly no pleural effusion."])[0]
    assert adapter.decode(ids) == "mild cardiomegaly no pleural effusion."
    assert len(ids) == 2 + 6  # [CLS], five frequent words and "." as whole pieces, [SEP]
