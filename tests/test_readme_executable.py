"""Every command block of README.md and docs/*.md, run as written from a user's layout.

The layout (module-scoped, built once): ``ROOT/shared/data`` is a small slice of the team's
``../shared/data`` (10 barcodes of each of the 14 orders of the BOLD table, 6 CinC ECG records,
the CT series and NIfTI, the vendor OCT files, 20 chest X-ray reports; copies, so that
every file lies inside the data folder as in a user's own copy), and each block runs in its own working folder ``ROOT/<block>/`` beside it, so
``../shared/data`` means what it means for a user whose checkout sits beside the data. Recipes are
named as the docs name them (the installed package's ``configs/``). ``medfm ...`` lines run
in-process (``medfm.cli.main``), other shell lines with bash, Python blocks with ``exec``.

Blocks marked ``<!-- docs: not-run (reason) -->`` are skipped with their reason;
``full-only`` blocks run only with ``MEDFM_DOCS_FULL=1``. How each block is parsed:
``tests/docs_runner.py``.

The walkthrough transcript (the ``$ `` lines): each command's stdout is compared with the lines
printed under it in the README. Progress bars go to stderr and are not compared. On the slice:

* ``medfm inspect`` lines are compared exactly (the same file is read);
* every other printed line must have the same words, with the numbers free (``shape``): counts
  depend on the slice, metrics on the trained model; ``search`` prints species names of the slice,
  so its rows are compared by column count;
* the numbers that matter are asserted against chance (zero-shot macro AUROC CI above 0.5,
  BIOSCAN accuracy above 0.5, retrieval with 14 distinct texts in the gallery).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from medfm.cli import main

from conftest import shared_data
from docs_runner import ROOT, Block, command_blocks, medfm_argv, shape, shell_commands

FULL = os.environ.get("MEDFM_DOCS_FULL") == "1"
BLOCKS = command_blocks()
WALK_NAMES = ["manifest", "inspect", "inspect", "pretrain", "zeroshot", "evaluate retrieval",
              "evaluate bioscan", "index build", "search"]

def _params():
    return [pytest.param(b, id=b.name) for b in BLOCKS]


# ------------------------------------------------------------------------------------- layout
@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """``ROOT/shared/data``: a slice of the team's data with the same folder names."""
    root = tmp_path_factory.mktemp("user")
    data = root / "shared" / "data"
    bold = shared_data("dna", "coi_barcodes_100_species.tsv")
    (data / "dna").mkdir(parents=True)
    table = pd.read_csv(bold, sep="\t", dtype=str)
    barcode_slice(table, bold.name).to_csv(data / "dna" / bold.name, sep="\t", index=False)
    ecg = shared_data("ecg", "cinc2021_12lead")
    (data / "ecg" / ecg.name).mkdir(parents=True)
    heads = sorted(ecg.glob("*.hea"))[:6]
    assert ecg / "E07500.hea" in heads  # the record the README inspects
    for hea in heads:
        for f in (hea, hea.with_suffix(".mat")):
            shutil.copy2(f, data / "ecg" / ecg.name / f.name)
    (data / "ct").mkdir()
    for f in shared_data("ct").iterdir():
        (shutil.copytree if f.is_dir() else shutil.copy2)(f, data / "ct" / f.name)
    (data / "oct").mkdir()
    shutil.copytree(shared_data("oct", "device_files"), data / "oct" / "device_files")
    reports = shared_data("text", "iu_chest_xray_reports.csv")
    (data / "text").mkdir()
    pd.read_csv(reports, dtype=str).head(20).to_csv(data / "text" / reports.name, index=False)
    return root


def _walkthrough_salt_seed():
    """``(salt text, seed)`` of the README's ``medfm manifest`` line."""
    walk = next(b for b in BLOCKS if b.transcript())
    argv = medfm_argv(walk.transcript()[0][0])
    return argv[argv.index("--salt") + 1], int(argv[argv.index("--seed") + 1])


def barcode_slice(table: pd.DataFrame, file_name: str, per_order: int = 10) -> pd.DataFrame:
    """10 barcodes of each of the 14 orders, spread over the split order of the README's salt and seed.

    The split ranks patients by a keyed hash (:func:`medfm.data.splits.assign_patients`): val takes
    the first 10 %, test the next 20 %. Barcodes taken at rank quantiles 0.05, 0.15, …, 0.95 of the
    whole table put one of each order in val and two in test, so every order is in the held-out
    split of the slice, whatever salt the README pins. The barcode the README inspects is kept.
    """
    import hashlib

    from medfm.data.cohort import salt_from_text, salted_hash

    text, seed = _walkthrough_salt_seed()
    salt = salt_from_text(text)
    pid = [salted_hash(f"sample:{file_name}:{p}", salt) for p in table["processid"]]
    key = [hashlib.blake2b(f"{seed}:{p}".encode(), digest_size=8).hexdigest() for p in pid]
    rank = pd.Series(key).rank(method="first").to_numpy() / len(key)
    keep = set()
    for _, grp in table.assign(_q=rank).groupby("order_name"):
        taken = set()
        for t in ((i + 0.5) / per_order for i in range(per_order)):
            free = grp.loc[~grp.index.isin(taken)]
            taken.add((free["_q"] - t).abs().idxmin())
        keep |= taken
    readme_id = table.index[table["processid"] == "SSJAE238-13"][0]
    if readme_id not in keep:  # replace the Diptera barcode nearest in rank
        dip = table.index[(table["order_name"] == "Diptera") & table.index.isin(keep)]
        keep.discard(min(dip, key=lambda i: abs(rank[i] - rank[readme_id])))
        keep.add(readme_id)
    return table.loc[sorted(keep)]


def _workdir(layout: Path, block: Block) -> Path:
    d = layout / block.name.replace("/", "_").replace(":", "_").replace(".", "_")
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    return d


def _env():
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_command(command: str, cwd: Path, capsys):
    """One shell command of a block: ``(stdout, stderr)``; fails the test on a non-zero exit.

    ``MEDFM_DOCS_TIMES=FILE`` appends each command's wall and CPU seconds to FILE.
    """
    import time

    t0, c0 = time.perf_counter(), time.process_time()
    try:
        return _run_command(command, cwd, capsys)
    finally:
        if os.environ.get("MEDFM_DOCS_TIMES"):
            with open(os.environ["MEDFM_DOCS_TIMES"], "a") as fh:
                fh.write(f"{time.perf_counter() - t0:.1f}s wall {time.process_time() - c0:.1f}s cpu  {command[:100]}\n")


def _python_c(command: str):
    """``[VAR=VALUE ...] python -c CODE`` → ``(env, CODE)``; None for any other command."""
    if "\n" in command:
        return None
    words = shlex.split(command)
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    if len(words) == 3 and words[:2] == ["python", "-c"]:
        return env, words[2]
    return None


def _run_command(command: str, cwd: Path, capsys):
    pyc = _python_c(command)
    if pyc is not None:  # run in this interpreter (no second start-up of torch), as `python -c` would
        env, code = pyc
        prev, saved = os.getcwd(), {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        os.chdir(cwd)
        try:
            exec(compile(code, "<-c>", "exec"), {"__name__": "__main__"})
        finally:
            os.chdir(prev)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return capsys.readouterr()
    argv = medfm_argv(command)
    if argv is not None:
        prev = os.getcwd()
        os.chdir(cwd)
        try:
            rc = main(argv)
        finally:
            os.chdir(prev)
        out, err = capsys.readouterr()
        assert rc == 0, f"{command}\nexit {rc}\n{err[-3000:]}"
        return out, err
    p = subprocess.run(["bash", "-c", command], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"{command}\nexit {p.returncode}\n{p.stderr[-3000:]}"
    return p.stdout, p.stderr


# -------------------------------------------------------------------------------- the tests
def test_every_command_block_is_run_or_marked():
    assert BLOCKS, "no command block found"
    bad = [f"{b.name}: {b.mark_error}" for b in BLOCKS if b.mark_error]
    assert not bad, bad
    for b in BLOCKS:
        if b.mark is None:  # run as written: a language the runner can run
            assert b.lang in ("bash", "sh", "shell", "python") or b.transcript(), b.name
            # a block that runs for minutes as written belongs in a full-only block
            assert "max_minutes" not in b.text and "torchrun" not in b.text and "s3://" not in b.text, b.name
        else:
            assert b.reason, b.name
    run = [b for b in BLOCKS if b.mark is None]
    assert any(b.transcript() for b in run), "the walkthrough transcript must run"
    assert len(run) >= 5, [b.name for b in run]


def test_marker_parser_requires_a_reason(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("<!-- docs: not-run -->\n```bash\nmedfm info\n```\n\n<!-- docs: not-run (GPU) -->\n```bash\nls\n```\n"
                  "```yaml\na: 1\n```\n```text\n$ medfm info\nout\n```\n")
    from docs_runner import blocks

    b = blocks(md)
    assert b[0].mark_error and b[1].mark == "not-run" and b[1].reason == "GPU"
    assert [x.is_command for x in b] == [True, True, False, True]
    assert b[3].transcript() == [("medfm info", ["out"])]
    assert shell_commands("a \\\n  b  # c\n# d\npython - <<'PY'\nx\nPY\n") == ["a  b  # c", "python - <<'PY'\nx\nPY"]
    assert medfm_argv("medfm search --query t.tsv#R1 -k 5  # five hits") == ["search", "--query", "t.tsv#R1", "-k", "5"]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("block", _params())
def test_doc_block(block: Block, layout, capsys, monkeypatch, one_thread):
    if block.mark == "not-run" or (block.mark == "full-only" and not FULL):
        pytest.skip(f"{block.mark}: {block.reason}")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    cwd = _workdir(layout, block)
    if block.transcript():
        return _walkthrough(block, cwd, capsys)
    if block.lang == "python":
        monkeypatch.chdir(cwd)
        exec(compile(block.text, block.name, "exec"), {"__name__": "__docs__"})
        return
    commands = shell_commands(block.text)
    assert commands, f"{block.name}: a command block with no command"
    for command in commands:  # each exits 0 (run_command asserts it); a run that learned nothing exits 1
        run_command(command, cwd, capsys)


# ------------------------------------------------------------------------------ walkthrough
def _compare(command: str, got: str, want: list) -> None:
    got_lines = got.rstrip("\n").splitlines()
    name = command.split()[1]
    if name == "inspect":
        assert got_lines == want, (command, got_lines)
    elif name == "search":  # species of the slice: header exact, then k rows of the same columns
        assert got_lines[0] == want[0] and len(got_lines) == len(want), (command, got_lines)
        assert all(len(g.split("\t")) == len(w.split("\t")) for g, w in zip(got_lines, want))
    elif FULL and name == "manifest":
        assert got_lines == want, (command, got_lines)
    else:
        assert [shape(line) for line in got_lines] == [shape(line) for line in want], (command, got_lines)


def _walkthrough(block: Block, cwd: Path, capsys) -> None:
    steps = block.transcript()
    names = [c.split()[1] if c.split()[1] not in ("evaluate", "index") else " ".join(c.split()[1:3])
             for c, _ in steps]
    assert names == WALK_NAMES
    out = {}
    for command, printed in steps:
        o, err = run_command(command, cwd, capsys)
        _compare(command, o, printed)
        out[" ".join(command.split()[1:3])] = o
    summary = json.loads((cwd / "cohort/cohort.csv.summary.json").read_text())
    if not FULL:
        assert summary["rows_per_modality"]["dna"] == 140 and summary["rows_per_modality"]["ecg"] == 6
    assert summary["n_unreadable"] == 0
    assert (cwd / "cohort/E07500.png").is_file()
    # pretrain: one JSON line on stdout (the progress bar is on stderr), the steps as written
    assert json.loads(out["pretrain walkthrough_dna_text.yaml"])["step"] == 50
    # zero-shot from text prompts on held-out barcodes: 14 orders, macro AUROC above chance (0.5)
    zs = json.loads((cwd / "cohort/zeroshot/results.json").read_text())
    assert len(zs["classes"]) == 14 and zs["n"] >= 14
    assert zs["ci"]["macro_auroc"][0] > 0.5, zs["metrics"]["macro_auroc"]
    # retrieval DNA -> taxonomy text: every query has a match; the gallery ranks its 14 distinct texts once
    ret = json.loads((cwd / "cohort/retrieval/results.json").read_text())
    m = ret["metrics"]
    assert m["dna_to_text_n_queries"] == zs["n"] and m["dna_to_text_n_no_match"] == 0
    assert ret["n_gallery_unique"]["dna_to_text"] == 14
    assert ret["chance"]["dna_to_text_R@1"] == pytest.approx(1 / 14)
    assert m["dna_to_text_R@5"] >= m["dna_to_text_R@1"] and m["dna_to_text_R@10"] > m["dna_to_text_R@1"]
    # BIOSCAN: nearest training barcode's order, on held-out barcodes of seen species
    bio = json.loads((cwd / "cohort/bioscan/results.json").read_text())
    assert bio["metrics"]["seen/order_name/micro"] > 0.5
    # search with a table record as query: its own order ranks first, the query itself is not a hit
    hits = [line.split("\t") for line in out["search --index"].strip().splitlines()[1:]]
    assert hits and hits[0][3] == "Diptera"
    assert "SSJAE238-13" not in [h[1] for h in hits]


def test_run_config_examples_are_valid():
    """A YAML block that names a run config file (first line ``# NAME.yaml`` with a ``model:`` and
    ``objectives:``) passes the run-config schema, so the example a user copies is one medfm accepts."""
    import yaml

    from docs_runner import DOCS, blocks
    from medfm.train.run_config import validate_run_config

    examples = [b for p in DOCS for b in blocks(p)
                if b.lang == "yaml" and re.match(r"#\s*\S+\.yaml", b.text) and "objectives:" in b.text]
    assert examples, "the README's run.yaml example is gone"
    for b in examples:
        validate_run_config(yaml.safe_load(b.text))
