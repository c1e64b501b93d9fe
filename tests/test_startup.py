"""Start-up imports only what a command needs (issue 19, item 9).

Each check runs the command in a fresh interpreter (``sys.modules`` of this test process is
full of torch) and lists the heavy packages it imported. No wall-time asserts here: timings
are in ``benchmarks/bench_startup.py``.

Also: every built-in declaration of :mod:`medfm.modalities` / :mod:`medfm.objectives` (what
``medfm info`` lists without importing) agrees with the object its module registers.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

#: what ``medfm --help`` and ``medfm info`` must not import
HEAVY = ("torch", "transformers", "timm", "monai", "pandas", "matplotlib", "scipy", "sklearn", "faiss")

_PROBE = r"""
import contextlib, io, json, sys
import medfm.cli
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    try:
        rc = medfm.cli.main(sys.argv[1:])
    except SystemExit as e:
        rc = e.code
top = sorted({m.partition(".")[0] for m in sys.modules})
print(json.dumps({"rc": rc, "modules": top, "stdout": out.getvalue()}))
"""


def _imports_of(*argv: str, cwd=None) -> dict:
    r = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _heavy(res: dict):
    return sorted(set(HEAVY) & set(res["modules"]))


@pytest.mark.parametrize("argv", [["--help"], ["info", "--help"], ["search", "--help"], ["inspect", "--help"]])
def test_help_imports_nothing_heavy(argv):
    res = _imports_of(*argv)
    assert res["rc"] == 0 and "usage: medfm" in res["stdout"]
    assert _heavy(res) == []


def test_info_imports_nothing_heavy_and_lists_everything():
    res = _imports_of("info", "--json")
    assert res["rc"] == 0 and _heavy(res) == []
    info = json.loads(res["stdout"])
    assert {"ct", "xray", "oct", "fundus", "ecg", "dna", "text"} <= set(info["modalities"])
    assert {"clip", "siglip", "gram", "masked", "views"} <= set(info["objectives"])
    assert {"timm", "hf", "open_clip", "monai", "medfm"} <= {f["name"] for f in info["weight_formats"]}
    assert "medfm-tiny" in info["models"]


def test_import_medfm_is_light_and_the_lazy_names_still_work():
    # also guards the probe's premise: resolving a lazy model name does import torch
    r = subprocess.run([sys.executable, "-c", "import sys, medfm, medfm.models, medfm.data, medfm.objectives, "
                        "medfm.evaluation, medfm.finetune, medfm.train; "
                        "from medfm.models import ModelConfig; from medfm.models.config import ModelConfig as C; "
                        "light = 'torch' not in sys.modules and 'pandas' not in sys.modules; "
                        "from medfm.models import MultiModalModel; "
                        "print(light, ModelConfig is C, medfm.MultiModalModel is MultiModalModel, "
                        "medfm.create_model is medfm.models.factory.create_model, 'torch' in sys.modules)"],
                       capture_output=True, text=True, timeout=300)
    assert r.stdout.split() == ["True", "True", "True", "True", "True"], r.stderr[-2000:]
    import medfm

    with pytest.raises(AttributeError):
        medfm.no_such_name  # noqa: B018


def _png(path):
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((64, 80)) * 255).astype(np.uint8)).save(path)
    return path


def test_inspect_png_imports_the_xray_adapter_alone(tmp_path):
    # what a PNG needs: the adapter (numpy, PIL, torch for the tensor it gives the model) and matplotlib
    # for the preview; not pandas/scipy/tokenizers (other adapters, the manifest scanners) nor monai
    res = _imports_of("inspect", str(_png(tmp_path / "cxr.png")), "--out", str(tmp_path / "p.png"), cwd=tmp_path)
    assert res["rc"] == 0 and res["stdout"].startswith("xray:")
    assert _heavy(res) == ["matplotlib", "torch"]
    assert not {"tokenizers", "faiss", "transformers", "timm"} & set(res["modules"])


# ------------------------------------------------------------------ declarations == registered objects
def test_declared_modalities_match_their_classes():
    from medfm.registry import MODALITIES

    declared = {n: MODALITIES.describe(n) for n in MODALITIES.names() if MODALITIES.describe(n)}
    assert {"ct", "xray", "oct", "fundus", "ecg", "dna", "text"} <= set(declared)
    for name, meta in declared.items():
        cls = MODALITIES.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        assert (meta["input_kind"], tuple(meta["suffixes"]), meta["summary"]) == (cls.input_kind,
                                                                                   tuple(cls.suffixes), doc), name
        assert (tuple(meta["dicom_modalities"]), meta["suffix_priority"]) == (tuple(cls.dicom_modalities),
                                                                              cls.suffix_priority), name


def test_declared_weight_formats_sources_and_objectives_match():
    import medfm.objectives  # noqa: F401  (declares the objectives)
    from medfm.registry import OBJECTIVES, SOURCES, WEIGHT_FORMATS

    for name in WEIGHT_FORMATS.names():
        assert WEIGHT_FORMATS.describe(name)["description"] == WEIGHT_FORMATS.get(name).description, name
    registered = dict(SOURCES.items())  # imports the scanners' module: every declared name registered
    assert set(registered) == set(SOURCES.names()) and len(registered) >= 7
    objectives = dict(OBJECTIVES.items())
    assert set(objectives) >= {"clip", "siglip", "gram", "masked", "views"}


def test_a_declaration_whose_module_does_not_register_it_is_an_error():
    from medfm.errors import ConfigError
    from medfm.registry import Registry

    reg = Registry("thing")
    reg.declare("ghost", "medfm.errors")  # a real module that registers nothing
    assert reg.names() == ["ghost"] and "ghost" in reg
    with pytest.raises(ConfigError, match="ghost.*medfm.errors"):
        reg.get("ghost")
