"""Start-up cost of the CLI: CPU seconds (user + sys) each command spends before and while it answers.

Run by hand (not part of pytest)::

    python benchmarks/bench_startup.py            # 3 runs per command, the least CPU is kept
    python benchmarks/bench_startup.py --runs 1 --skip-search

CPU time, not wall time: on a shared machine the wall clock measures the neighbours. Each
command runs in a fresh interpreter (``resource.getrusage(RUSAGE_CHILDREN)`` around it). The named
baseline is ``python -c "import torch"`` in the same run (each row's ratio to it), and the machine
line gives the load average and the fp32 GEMM rate (1024³, one thread) beside the numbers.

Commands: ``--help``, ``info``, ``inspect`` of a PNG (the xray adapter) and of pydicom's
``CT_small.dcm`` (the ct adapter: MONAI resampling), and ``search`` on an index built here from a
tiny random dna + text model (``--text`` through the text tower, ``--query FILE`` through the
dna tower). Also lists the heavy packages each command imported.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "transformers", "timm", "monai", "pandas", "matplotlib", "scipy", "sklearn", "faiss",
         "pydicom", "nibabel", "tokenizers", "PIL", "numpy")

_PROBE = r"""
import contextlib, io, json, sys
import medfm.cli
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        rc = medfm.cli.main(sys.argv[1:])
    except SystemExit as e:
        rc = e.code
print(json.dumps({"rc": rc, "modules": sorted({m.partition(".")[0] for m in sys.modules})}))
"""


def cpu_seconds(argv, cwd=None, runs=3):
    """(least user+sys CPU seconds over ``runs``, wall seconds of that run, rc) of a child process."""
    best = None
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(map(str, argv))} failed ({r.returncode}): {r.stderr[-1500:]}")
        if best is None or cpu < best[0]:
            best = (cpu, wall)
    return best


def heavy_imports(args, cwd=None):
    r = subprocess.run([sys.executable, "-c", _PROBE, *map(str, args)], cwd=cwd, capture_output=True, text=True)
    try:
        mods = json.loads(r.stdout.strip().splitlines()[-1])["modules"]
    except (IndexError, ValueError):
        return "?"
    return " ".join(m for m in HEAVY if m in mods) or "-"


def gemm_line() -> str:
    code = ("import time, torch; torch.set_num_threads(1); a = torch.randn(1024, 1024); b = torch.randn(1024, 1024); "
            "a @ b; t = time.perf_counter(); [a @ b for _ in range(5)]; dt = (time.perf_counter() - t) / 5; "
            "print(f'{2 * 1024 ** 3 / dt / 1e9:.1f}')")
    gflops = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: {os.cpu_count()} cores, load average {load}, fp32 GEMM 1024^3 one thread {gflops} GFLOP/s, "
            f"python {sys.version.split()[0]}")


def make_search_fixture(root: Path) -> dict:
    """A tiny random dna + text model, a manifest of 40 barcodes, its flat index and a query file."""
    code = r"""
import sys, random
import pandas as pd, torch, medfm
root = sys.argv[1]
rng = random.Random(0)
seqs = ["".join(rng.choice("ACGT") for _ in range(120)) for _ in range(40)]
texts = [f"order {i % 4} family {i % 7}" for i in range(40)]
pd.DataFrame({"id": [f"s{i}" for i in range(40)], "patient_id": [f"P{i}" for i in range(40)],
              "dna": seqs, "text": texts}).to_csv(f"{root}/m.csv", index=False)
open(f"{root}/query.txt", "w").write(seqs[3])
torch.manual_seed(0)
text = medfm.get_modality("text", vocab_size=120, min_frequency=1, max_length=16,
                          hf_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                     "intermediate_size": 64})
text.fit(texts)
model = medfm.create_model({"name": "medfm-tiny", "modalities": {"dna": {}}}, adapters={"text": text})
model.save_pretrained(f"{root}/model")
"""
    subprocess.run([sys.executable, "-c", code, str(root)], check=True)
    subprocess.run([sys.executable, "-m", "medfm", "index", "build", "--model", str(root / "model"),
                    "--manifest", str(root / "m.csv"), "--modality", "dna", "--out", str(root / "index"),
                    "--no-progress"], check=True, capture_output=True)
    return {"index": root / "index", "query": root / "query.txt"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--json", default=None, help="also write the rows here")
    a = ap.parse_args()
    print(gemm_line(), flush=True)
    script = Path(sys.executable).parent / "medfm"  # the console script a user runs
    medfm = [str(script)] if script.is_file() else [sys.executable, "-m", "medfm"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from PIL import Image  # the PNG an X-ray inspect reads
        import numpy as np

        Image.fromarray((np.random.default_rng(0).random((256, 256)) * 255).astype(np.uint8)).save(tmp / "cxr.png")
        rows = [("python -c pass (interpreter)", [sys.executable, "-c", "pass"], None),
                ("import torch (baseline)", [sys.executable, "-c", "import torch"], None),
                ("medfm --help", ["--help"], None),
                ("medfm info", ["info"], None),
                ("medfm inspect cxr.png", ["inspect", tmp / "cxr.png", "--out", tmp / "p.png"], None)]
        try:
            import pydicom.data

            ct = pydicom.data.get_testdata_file("CT_small.dcm")
            rows.append(("medfm inspect CT_small.dcm", ["inspect", ct, "--out", tmp / "c.png"], None))
        except Exception as e:  # pragma: no cover - pydicom without its test files
            print(f"(no CT_small.dcm: {e})")
        if not a.skip_search:
            fx = make_search_fixture(tmp)
            rows.append(("medfm search --text", ["search", "--index", fx["index"], "--text", "order 1 family 3",
                                                 "-k", "5"], None))
            rows.append(("medfm search --query FILE (dna)", ["search", "--index", fx["index"], "--query",
                                                            fx["query"], "-k", "5"], None))
        results = []
        base = None
        print(f"{'command':<34} {'CPU s':>6} {'wall s':>7} {'/ import torch':>15}  heavy imports")
        for name, argv, cwd in rows:
            is_cli = name.startswith("medfm")
            full = medfm + [str(x) for x in argv] if is_cli else argv
            cpu, wall = cpu_seconds(full, cwd=tmp, runs=a.runs)
            if name.startswith("import torch"):
                base = cpu
            ratio = f"{cpu / base:.2f}" if base else "-"
            imports = heavy_imports(argv, cwd=tmp) if is_cli else "-"
            print(f"{name:<34} {cpu:>6.2f} {wall:>7.2f} {ratio:>15}  {imports}", flush=True)
            results.append({"command": name, "cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "imports": imports})
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
