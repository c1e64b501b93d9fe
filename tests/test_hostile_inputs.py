"""Hostile inputs that used to hang, eat memory or leak (issue 22, files and configs).

The risky cases (a FIFO, ``/dev/zero``, an alias bomb, a 50 MB inline cell, a huge WFDB header)
run in worker subprocesses of this file: each worker caps its own address space
(``RLIMIT_AS`` = what its imports mapped + 1.5 GiB) and runs every case under ``SIGALRM``, and
the test puts a wall-clock timeout on the worker, so a regression fails (``timeout``,
``MemoryError``, a crash) instead of hanging CI or taking the machine's memory. Each case's
outcome is one JSON line; the tests below assert it. The cheap cases (ids, splits, warning
summaries) run in-process.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
CASE_SECONDS = 20  # a case over this is a hang
WORKER_TIMEOUT = 600
HEADROOM = 1536 * 2 ** 20  # bytes of address space a worker may add to what its imports mapped

def bomb_yaml(indent: str = "  ") -> str:
    """A ~400-byte billion-laughs value: 9**9 x's once expanded, as a YAML block under a key."""
    lines = [f"{indent}- &a [x,x,x,x,x,x,x,x,x]"]
    lines += [f"{indent}- &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    return "\n" + "\n".join(lines) + "\n"


def bomb_flow() -> str:
    """The same bomb in flow style, for one command-line value."""
    parts = ["a: &a [x,x,x,x,x,x,x,x,x]"]
    parts += [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    return "{" + ", ".join(parts) + "}"


# ==================================================================== worker side
def _cap_memory() -> None:
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + HEADROOM, resource.RLIM_INFINITY))


def _alarm(signum, frame):
    raise TimeoutError(f"still running after {CASE_SECONDS} s")


def _run_case(name, fn) -> dict:
    t0 = time.monotonic()
    signal.alarm(CASE_SECONDS)
    try:
        value = fn()
        out = {"outcome": "ok", "value": value}
    except TimeoutError as e:
        out = {"outcome": "timeout", "message": str(e)}
    except MemoryError as e:
        out = {"outcome": "memory", "message": f"MemoryError {e}"}
    except BaseException as e:  # noqa: BLE001 - every outcome is reported
        from medfm.errors import MedFMError

        out = {"outcome": "error" if isinstance(e, MedFMError) else "crash", "type": type(e).__name__,
               "message": str(e)[:2000], "trace": traceback.format_exc()[-1500:]}
    finally:
        signal.alarm(0)
    out.update(case=name, seconds=round(time.monotonic() - t0, 3))
    print(json.dumps(out, default=str), flush=True)
    return out


def _cli(argv) -> dict:
    import contextlib
    import io

    from medfm.cli import main

    buf_out, buf_err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
        rc = main([str(a) for a in argv])
    return {"rc": rc, "out": buf_out.getvalue()[-3000:], "err": buf_err.getvalue()[-3000:]}


def _dataset_outcome(manifest: Path, adapters: dict, **kw) -> dict:
    from medfm.data import ManifestDataset, MultiModalCollate, read_manifest

    df = read_manifest(manifest)
    ds = ManifestDataset(df, adapters, **kw)
    batch = MultiModalCollate(adapters)([ds[i] for i in range(len(ds))])
    return {"n_skipped": batch["n_skipped"], "errors": [list(e) for e in batch["errors"]], "ids": batch["id"],
            "inputs": sorted(batch["inputs"])}


def _text_adapter():
    from medfm.registry import get_modality

    a = get_modality("text", vocab_size=64)
    a.fit(["normal sinus rhythm", "no acute finding"] * 4)
    return a


def group_files(tmp: Path) -> None:
    """FIFOs and devices as cells, tables and manifests; symlink escapes; bounded reads."""
    import gzip

    from medfm.data.manifest import read_manifest
    from medfm.limits import limits
    from medfm.registry import get_modality

    os.mkfifo(tmp / "pipe.png")
    os.mkfifo(tmp / "pipe.txt")
    os.symlink("/dev/zero", tmp / "zero.txt")
    os.symlink("/dev/zero", tmp / "zero.fasta")
    os.symlink("/dev/zero", tmp / "zero.csv")
    os.mkfifo(tmp / "pipe_manifest.csv")
    outside = tmp.parent / f"{tmp.name}-outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("zebulon quixote secret report text")
    root = tmp / "root"
    root.mkdir()
    os.symlink(outside / "secret.txt", root / "report.txt")
    (root / "own.txt").write_text("normal sinus rhythm")
    (tmp / "big.txt").write_text("word " * (1 << 20))  # 5 MiB: over the 4 MiB default max_text_mb
    with gzip.open(tmp / "bomb.fasta.gz", "wt") as fh:  # ~10 KB compressed, 8 MiB of sequence
        fh.write(">r1\n" + "ACGT" * (2 << 20) + "\n")

    xray = get_modality("xray", size=32, patch_size=16)
    dna = get_modality("dna", k=6)
    text = _text_adapter()
    _run_case("fifo-png-cell", lambda: xray.load(str(tmp / "pipe.png"), sample_id="s1"))
    _run_case("fifo-txt-cell", lambda: text.load(str(tmp / "pipe.txt"), sample_id="s1"))
    (tmp / "c.csv").write_text("id,patient_id,xray\np,p1,pipe.png\nz,p2,zero.txt\n")
    _run_case("fifo-cell-with-cache", lambda: _dataset_outcome(tmp / "c.csv", {"xray": xray},
                                                               cache_dir=tmp / "cache", confine=False))
    _run_case("fifo-inspect", lambda: _cli(["inspect", tmp / "pipe.png", "--out", tmp / "prev.png"]))
    _run_case("devzero-txt-cell", lambda: text.load(str(tmp / "zero.txt"), sample_id="s1"))
    _run_case("devzero-fasta-record", lambda: dna.load(f"{tmp / 'zero.fasta'}#r1", sample_id="s1"))
    _run_case("devzero-manifest-table", lambda: len(read_manifest(tmp / "zero.csv")))
    _run_case("fifo-manifest-table", lambda: len(read_manifest(tmp / "pipe_manifest.csv")))
    _run_case("text-file-over-limit", lambda: text.load(str(tmp / "big.txt"), sample_id="s1"))

    def gz_bomb():
        with limits(max_file_mb=1):
            return dna.load(f"{tmp / 'bomb.fasta.gz'}#r1", sample_id="s1")
    _run_case("gzip-fasta-over-limit", gz_bomb)

    (root / "m.csv").write_text("id,patient_id,text\nesc,p1,report.txt\nown,p2,own.txt\n")
    # a confined data root (data.root): the path is inside it, the link's target is not
    _run_case("symlink-escape-in-root", lambda: _dataset_outcome(root / "m.csv", {"text": text}, root=root))


def group_walk(tmp: Path) -> None:
    """``medfm manifest``: symlink loops and escapes, FIFO and device tables, huge WFDB headers."""
    import shutil

    from pydicom.data import get_testdata_file

    src = tmp / "src"
    (src / "sub").mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "sub" / "a.dcm")
    os.symlink(".", src / "loop")
    os.symlink("..", src / "sub" / "up")
    far = tmp / "far"
    far.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), far / "b.dcm")
    import pydicom

    ds = pydicom.dcmread(far / "b.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ds.StudyInstanceUID + ".9", ds.SeriesInstanceUID + ".9"
    ds.save_as(far / "b.dcm")
    os.symlink(far, src / "elsewhere")
    os.symlink("/", src / "fsroot")
    os.mkfifo(src / "reports.csv")
    os.symlink("/dev/zero", src / "table.csv")
    _run_case("walk-loop-and-escape", lambda: _cli(["manifest", src, "--out", tmp / "o1" / "m.csv", "--json"]))
    os.unlink(src / "fsroot")
    _run_case("walk-follow-links", lambda: _cli(["manifest", src, "--out", tmp / "o2" / "m.csv", "--json",
                                                 "--follow-links"]))
    wf = tmp / "wfdb"
    wf.mkdir()
    n = 100_000
    lines = [f"big {n} 500 10"] + [f"big.dat 16 200 16 0 0 0 0 s{i}" for i in range(n)]
    (wf / "big.hea").write_text("\n".join(lines) + "\n")
    (wf / "big.dat").write_bytes(b"\0" * 64)
    lines = [f"many 2000 500 10"] + [f"many.dat 16 200 16 0 0 0 0 s{i}" for i in range(2000)]
    (wf / "many.hea").write_text("\n".join(lines) + "\n")  # 60 KB: under the size limit, over the count
    (wf / "many.dat").write_bytes(b"\0" * 64)

    def read(stem):
        from medfm.registry import get_modality

        return get_modality("ecg").load(str(wf / f"{stem}.hea"), sample_id=stem)
    _run_case("wfdb-header-3mb", lambda: read("big"))
    _run_case("wfdb-header-2000-signals", lambda: read("many"))
    _run_case("wfdb-header-manifest", lambda: _cli(["manifest", wf, "--out", tmp / "o3" / "m.csv", "--json"]))


def group_configs(tmp: Path) -> None:
    """A billion-laughs alias bomb in every YAML place."""
    from medfm.evaluation.zeroshot import load_prompt_set
    from medfm.io import apply_overrides, load_config_file

    places = {
        "description": "model: medfm-tiny\ndescription:" + bomb_yaml(),
        "hf_config": "model:\n  name: medfm-tiny\n  modalities:\n    text:\n      hf_config:\n        x:"
                     + bomb_yaml("          "),
        "adapter-option": "model:\n  name: medfm-tiny\n  modalities:\n    text:\n      surprise:"
                          + bomb_yaml("        "),
        "objective-option": "model: medfm-tiny\nobjectives:\n  - name: masked\n    surprise:" + bomb_yaml("      "),
    }
    for place, text in places.items():
        p = tmp / f"{place}.yaml"
        p.write_text(text)
        _run_case(f"alias-bomb-{place}", lambda p=p: _cli(["pretrain", p, "--out", tmp / f"out-{p.stem}"]))
        _run_case(f"alias-bomb-{place}-loader", lambda p=p: len(json.dumps(load_config_file(p))))
    prompts = tmp / "prompts.yaml"
    prompts.write_text("name: bomb\ntask: multiclass\nclasses:\n  a:" + bomb_yaml("    "))
    _run_case("alias-bomb-prompts", lambda: len(json.dumps(load_prompt_set(prompts).__dict__, default=str)))
    _run_case("alias-bomb-set", lambda: len(json.dumps(apply_overrides({}, ["x.y=" + bomb_flow()]))))
    ok = tmp / "anchors.yaml"
    ok.write_text("base: &b {lr: 0.001, wd: 0.05}\nfirst: *b\nsecond: *b\n")
    _run_case("anchors-allowed", lambda: load_config_file(ok))


def group_inline(tmp: Path) -> None:
    """One 50 MB inline text cell among ordinary ones: a counted skip naming the sample."""
    import pandas as pd

    huge = "no acute finding " * (50 * 2 ** 20 // 17)
    pd.DataFrame({"id": ["a", "huge", "b"], "patient_id": ["p1", "p2", "p3"],
                  "text": ["normal sinus rhythm", huge, "no acute finding"]}).to_csv(tmp / "m.csv", index=False)
    del huge

    def run():
        text = _text_adapter()
        out = _dataset_outcome(tmp / "m.csv", {"text": text})
        from medfm.data import read_manifest

        fitted = _text_adapter()
        fitted.fit(list(read_manifest(tmp / "m.csv")["text"]))  # the huge cell is left out of the fit
        out["fit_vocab"] = fitted.vocab_size
        return out
    _run_case("inline-cell-50mb", run)


def group_main(tmp: Path) -> None:
    """Every case that cannot crash the worker on a regression (a hang is cut by the alarm, a memory
    grab by the cap): one worker, one set of imports."""
    for name, fn in (("files", group_files), ("walk", group_walk), ("configs", group_configs)):
        (tmp / name).mkdir()
        fn(tmp / name)


#: the inline case alone: the old code's native tokenizer could abort the whole worker
GROUPS = {"main": group_main, "inline": group_inline}
WORKER_OF = {"files": "main", "walk": "main", "configs": "main", "inline": "inline"}


def worker_main(group: str, tmp: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import medfm.cli  # noqa: F401 - everything a case needs is mapped before the cap
    import medfm.train  # noqa: F401
    import medfm.data  # noqa: F401
    import medfm.evaluation.zeroshot  # noqa: F401
    import pydicom  # noqa: F401
    import wfdb  # noqa: F401
    from medfm.registry import get_modality

    for m in ("xray", "text", "dna", "ecg", "ct"):
        get_modality(m)
    logging.disable(logging.WARNING)
    _cap_memory()
    signal.signal(signal.SIGALRM, _alarm)
    GROUPS[group](Path(tmp))


# ==================================================================== test side
_RESULTS: dict = {}


def run_group(group: str, tmp_path_factory) -> dict:
    if group not in _RESULTS:
        tmp = tmp_path_factory.mktemp(f"hostile-{group}")
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]))
        try:
            proc = subprocess.run([sys.executable, str(HERE), group, str(tmp)], capture_output=True, text=True,
                                  timeout=WORKER_TIMEOUT, env=env, cwd=str(tmp))
            stdout, note = proc.stdout, f"worker exit {proc.returncode}: {proc.stderr[-3000:]}"
        except subprocess.TimeoutExpired as e:
            stdout, note = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
        cases = {}
        for line in stdout.splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                cases[rec["case"]] = rec
        _RESULTS[group] = {"cases": cases, "note": note}
    return _RESULTS[group]


def case(group: str, name: str, tmp_path_factory) -> dict:
    res = run_group(WORKER_OF[group], tmp_path_factory)
    assert name in res["cases"], f"case {name} gave no outcome ({res['note']})"
    rec = res["cases"][name]
    assert rec["seconds"] < CASE_SECONDS, rec
    return rec


def _error(rec: dict, pattern: str) -> str:
    import re

    assert rec["outcome"] == "error", rec
    assert re.search(pattern, rec["message"]), rec["message"]
    return rec["message"]


@pytest.mark.parametrize("name,pattern", [
    ("fifo-png-cell", r"'pipe\.png' is a named pipe, not a file"),
    ("fifo-txt-cell", r"'pipe\.txt' is a named pipe, not a file"),
    ("devzero-txt-cell", r"'zero\.txt' \(a symlink to /dev/zero\) is a character device, not a file"),
    ("devzero-fasta-record", r"'zero\.fasta' \(a symlink to /dev/zero\) is a character device"),
    ("devzero-manifest-table", r"zero\.csv.*character device, not a file"),
    ("fifo-manifest-table", r"'pipe_manifest\.csv' is a named pipe"),
    ("text-file-over-limit", r"big\.txt.*over the limit max_text_mb=4"),
    ("gzip-fasta-over-limit", r"bomb\.fasta\.gz.*decompressed.*over the limit max_file_mb=1"),
])
def test_special_and_oversized_files_are_refused_by_name(name, pattern, tmp_path_factory):
    rec = case("files", name, tmp_path_factory)
    _error(rec, pattern)
    assert rec["seconds"] < 5


def test_fifo_and_device_cells_are_skips_with_a_preprocessing_cache(tmp_path_factory):
    rec = case("files", "fifo-cell-with-cache", tmp_path_factory)  # the cache hashes a cell before reading it
    assert rec["outcome"] == "ok", rec
    errors = {sid: msg for sid, _, msg in rec["value"]["errors"]}
    assert rec["value"]["n_skipped"] == 2
    assert "'pipe.png' is a named pipe" in errors["p"] and "character device" in errors["z"]


def test_inspect_of_a_fifo_exits_1_naming_it(tmp_path_factory):
    rec = case("files", "fifo-inspect", tmp_path_factory)
    assert rec["outcome"] == "ok" and rec["value"]["rc"] == 1, rec
    assert "is a named pipe, not a file" in rec["value"]["err"] and "Traceback" not in rec["value"]["err"]


def test_symlink_out_of_the_data_root_is_a_skip_and_never_read(tmp_path_factory):
    rec = case("files", "symlink-escape-in-root", tmp_path_factory)
    assert rec["outcome"] == "ok", rec
    out = rec["value"]
    assert out["ids"] == ["own"] and out["n_skipped"] == 1
    (sid, mod, msg), = out["errors"]
    assert sid == "esc" and mod == "text"
    assert "leads to" in msg and "secret.txt" in msg and "outside the data root" in msg


def test_manifest_walk_never_loops_nor_leaves_its_root(tmp_path_factory):
    rec = case("walk", "walk-loop-and-escape", tmp_path_factory)
    assert rec["outcome"] == "ok" and rec["value"]["rc"] == 0, rec
    summary = json.loads(rec["value"]["out"])
    assert summary["n_rows"] == 1 and summary["rows_per_modality"] == {"ct": 1}  # one DICOM, one row
    reasons = {Path(u["path"]).name: u["reason"] for u in summary["unreadable"]}
    assert "already walked" in reasons["loop"] and "already walked" in reasons["up"]
    assert "outside the source folder" in reasons["elsewhere"] and "not followed" in reasons["elsewhere"]
    assert "outside the source folder" in reasons["fsroot"]
    assert reasons["reports.csv"] == "'reports.csv' is a named pipe, not a file"
    assert "character device" in reasons["table.csv"]
    assert rec["seconds"] < 10


def test_manifest_follows_links_out_of_its_root_only_when_told(tmp_path_factory):
    rec = case("walk", "walk-follow-links", tmp_path_factory)
    assert rec["outcome"] == "ok" and rec["value"]["rc"] == 0, rec
    summary = json.loads(rec["value"]["out"])
    assert summary["n_rows"] == 2  # the DICOM behind `elsewhere` too, the loops still once


@pytest.mark.parametrize("name,pattern", [
    ("wfdb-header-3mb", r"WFDB header is over 1\.0 MiB, over the limit max_header_mb=1"),
    ("wfdb-header-2000-signals", r"declares 2,000 signals"),
])
def test_huge_wfdb_headers_are_refused_before_wfdb_parses_them(name, pattern, tmp_path_factory):
    rec = case("walk", name, tmp_path_factory)
    _error(rec, pattern)
    assert rec["seconds"] < 3  # wfdb itself needs ~1.5 ms per signal line: 3 s for 2000, minutes for 100 000


def test_huge_wfdb_header_in_a_manifest_walk_is_listed_unreadable(tmp_path_factory):
    rec = case("walk", "wfdb-header-manifest", tmp_path_factory)
    assert rec["outcome"] == "ok", rec
    assert rec["value"]["rc"] == 1 and "nothing usable" in rec["value"]["err"], rec  # both headers refused
    assert rec["seconds"] < 10


BOMB_PLACES = ("description", "hf_config", "adapter-option", "objective-option")


@pytest.mark.parametrize("place", BOMB_PLACES)
def test_alias_bomb_is_refused_at_once_naming_the_file(place, tmp_path_factory):
    rec = case("configs", f"alias-bomb-{place}", tmp_path_factory)
    assert rec["outcome"] == "ok", rec
    assert rec["value"]["rc"] == 2, rec
    assert f"{place}.yaml" in rec["value"]["err"] and "alias" in rec["value"]["err"]
    assert rec["seconds"] < 10  # the first CLI call imports the run stack lazily; the loader is timed below
    loader = case("configs", f"alias-bomb-{place}-loader", tmp_path_factory)
    _error(loader, rf"{place}\.yaml: the YAML expands to more than 1,000,000 values")
    assert loader["seconds"] < 1.0


@pytest.mark.parametrize("name,pattern", [("alias-bomb-prompts", r"prompts\.yaml: the YAML expands"),
                                          ("alias-bomb-set", r"--set x\.y=.*the YAML expands")])
def test_alias_bomb_in_prompts_and_set_values(name, pattern, tmp_path_factory):
    rec = case("configs", name, tmp_path_factory)
    _error(rec, pattern)
    assert rec["seconds"] < 1.0


def test_ordinary_anchors_still_load(tmp_path_factory):
    rec = case("configs", "anchors-allowed", tmp_path_factory)
    assert rec["outcome"] == "ok" and rec["value"]["second"] == {"lr": 0.001, "wd": 0.05}, rec


def test_huge_inline_cell_is_a_counted_skip_naming_the_sample(tmp_path_factory):
    rec = case("inline", "inline-cell-50mb", tmp_path_factory)
    assert rec["outcome"] == "ok", rec
    out = rec["value"]
    assert out["ids"] == ["a", "b"] and out["n_skipped"] == 1
    (sid, mod, msg), = out["errors"]
    assert sid == "huge" and mod == "text" and "over the limit max_text_mb=4" in msg
    assert out["fit_vocab"] > 0


# ------------------------------------------------------------------ in-process cases
def test_ids_are_stripped_and_case_only_collisions_refused(tmp_path):
    from medfm.data import read_manifest
    from medfm.errors import DataError

    p = tmp_path / "m.csv"
    p.write_text("id,patient_id\n a1 ,p\nb,q\n")
    assert list(read_manifest(p)["id"]) == ["a1", "b"]
    p.write_text("id,patient_id\nAB1,p\nx,q\nab1,r\n")
    with pytest.raises(DataError, match=r"duplicate sample id.*rows 1 and 3: 'AB1' and 'ab1' \(differing only in "
                                        r"case\)"):
        read_manifest(p)
    p.write_text("id,patient_id\na1,p\n a1,q\n")
    with pytest.raises(DataError, match=r"rows 1 and 2: 'a1' and 'a1'"):
        read_manifest(p)


def test_split_values_case_folded_and_unknown_ones_an_error(tmp_path):
    from medfm.data import read_manifest, select_split
    from medfm.errors import DataError

    p = tmp_path / "m.csv"
    p.write_text("id,patient_id,split\na,p1,TRAIN\nb,p2, train\nc,p3,holdout\nd,p4,val\n")
    df = read_manifest(p)
    assert list(select_split(df, "train")["id"]) == ["a", "b"]
    assert list(select_split(df, "test")["id"]) == ["c"]  # holdout is test, as in make_splits
    p.write_text("id,patient_id,split\na,p1,train\nb,p2,fold1\nc,p3,fold1\nd,p4,later\n")
    with pytest.raises(DataError, match=r"unknown split value\(s\) 'fold1' \(2 rows\), 'later' \(1 rows\); "
                                        r"known: test, train, val"):
        select_split(read_manifest(p), "train")


def test_warnings_of_one_cause_are_summarised(tmp_path, caplog):
    """200 rows whose report is missing: every skip counted, the log a handful of lines."""
    from medfm.data import ManifestDataset, MultiModalCollate, read_manifest

    rows = "".join(f"s{i},p{i},missing_{i}.txt\n" for i in range(200))
    (tmp_path / "m.csv").write_text("id,patient_id,text\nok,p,fine report\n" + rows)
    text = _text_adapter()
    ds = ManifestDataset(read_manifest(tmp_path / "m.csv"), {"text": text})
    with caplog.at_level(logging.WARNING, logger="medfm.data"):
        batch = MultiModalCollate({"text": text})([ds[i] for i in range(len(ds))])
    assert batch["n_skipped"] == 200 and len(batch["errors"]) == 200 and batch["id"] == ["ok"]
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if m.startswith("skipping text of sample s")]) == 5
    assert sum("more warnings like this are counted" in m for m in lines) == 1
    assert sum("100 warnings like this so far" in m for m in lines) == 1
    assert len(lines) == 8  # 5 in full, the notice, 10 and 100 so far
    assert ds.warnings.summary()[0][1] == 200


def test_limits_accept_the_new_keys_and_environment():
    from medfm.errors import ConfigError
    from medfm.limits import InputLimits, limits

    with limits(max_text_mb=1, max_header_mb=0.5) as lim:
        assert lim.max_text_mb == 1 and lim.max_header_mb == 0.5
    with pytest.raises(ConfigError, match="max_text_mb"):
        InputLimits(max_text_mb=0)


# ---------------------------------------------------- declared counts before the library decodes
def test_declared_sizes_are_checked_before_decoding(tmp_path):
    """A NIfTI OCT, an ECG .npz member and a DICOM waveform that declare more than the limits allow
    are refused from their headers (each file is a few KB: decoding would fail differently or
    allocate what the header says)."""
    import io
    import struct
    import zipfile

    import nibabel as nib
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file

    from medfm.errors import DataError
    from medfm.registry import get_modality

    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    nib.save(img, str(tmp_path / "o.nii"))
    b = bytearray((tmp_path / "o.nii").read_bytes())
    b[40:56] = struct.pack("<8h", 3, 30000, 30000, 30000, 1, 1, 1, 1)
    (tmp_path / "o.nii").write_bytes(bytes(b))
    with pytest.raises(DataError, match=r"o\.nii.*NIfTI OCT declares 30000×30000×30000"):
        get_modality("oct").read(str(tmp_path / "o.nii"))

    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": (12, 10 ** 9)})
    member.write(b"\0" * 64)
    with zipfile.ZipFile(tmp_path / "e.npz", "w") as z:
        z.writestr("signal.npy", member.getvalue())
    with pytest.raises(DataError, match=r"e\.npz.*'signal' declares 12×1000000000"):
        get_modality("ecg", input_fs=500).read(str(tmp_path / "e.npz"))

    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    for g in ds.WaveformSequence:
        g.NumberOfWaveformSamples = 10 ** 9
    ds.save_as(tmp_path / "w.dcm")
    with pytest.raises(DataError, match=r"w\.dcm.*DICOM waveform declares"):
        get_modality("ecg").read(str(tmp_path / "w.dcm"))


if __name__ == "__main__":
    worker_main(sys.argv[1], sys.argv[2])
