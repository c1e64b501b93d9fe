"""Model presets come from configs/models/*.yaml only, and give what callers got before."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import medfm
from medfm.errors import ConfigError
from medfm.models import resolve_config
from medfm.models.presets import FilePreset, preset_config, register_preset_dir
from medfm.registry import MODELS, register_model

ROOT = Path(__file__).resolve().parents[1]
XRAY = {"xray": {"size": 32, "patch_size": 8}}

# What resolve_config gave before the presets moved to YAML (the @register_model functions merged
# over DEFAULT_CONFIG), and the parameter count of the model with one small x-ray tower.
BEFORE = {
    "medfm-tiny": ({"width": 64, "depth": 2, "heads": 2, "mlp_ratio": 4.0, "drop_path": 0.0, "shared": True},
                   {"width": 32, "depth": 1, "heads": 2}, 64, 126882),
    "medfm-small": ({"width": 384, "depth": 6, "heads": 6, "mlp_ratio": 4.0, "drop_path": 0.0, "shared": True},
                    {"width": 256, "depth": 2, "heads": 8}, 256, 12476354),
    "medfm-base": ({"width": 768, "depth": 12, "heads": 12, "mlp_ratio": 4.0, "drop_path": 0.0, "shared": True},
                   {"width": 512, "depth": 8, "heads": 16}, 512, 111166786),
    "models/tiny_3d.yaml": ({"width": 96, "depth": 2, "heads": 3, "mlp_ratio": 4.0, "drop_path": 0.0, "shared": True},
                            {"width": 64, "depth": 1, "heads": 2}, 64, 299362),
    "models/small_3d.yaml": ({"width": 384, "depth": 12, "heads": 6, "mlp_ratio": 4.0, "drop_path": 0.1,
                              "shared": False}, {"width": 256, "depth": 4, "heads": 8}, 256, 24702658),
    "models/base_3d.yaml": ({"width": 768, "depth": 12, "heads": 12, "mlp_ratio": 4.0, "drop_path": 0.1,
                             "shared": False}, {"width": 512, "depth": 8, "heads": 16}, 512, 111166786),
    "models/retfound_vit_large.yaml": ({"width": 1024, "depth": 24, "heads": 16, "mlp_ratio": 4.0, "drop_path": 0.0,
                                        "shared": False}, {"width": 512, "depth": 8, "heads": 16}, 512, None),
}
NAME_BEFORE = {"models/tiny_3d.yaml": "medfm-tiny", "models/small_3d.yaml": "medfm-small",
               "models/base_3d.yaml": "medfm-base", "models/retfound_vit_large.yaml": "medfm-base"}


@pytest.mark.parametrize("name", list(BEFORE))
def test_preset_resolves_as_before(name):
    trunk, decoder, embed_dim, _ = BEFORE[name]
    cfg = resolve_config(name)
    assert {k: cfg["trunk"][k] for k in trunk} == trunk
    assert cfg["decoder"] == decoder and cfg["embed_dim"] == embed_dim
    assert cfg["name"] == NAME_BEFORE.get(name, name)
    assert cfg["init_logit_bias"] == -10.0 and cfg["init_logit_scale"] == pytest.approx(2.659260036932778)


@pytest.mark.parametrize("name", ["medfm-tiny", "medfm-small"])
def test_preset_models_have_the_same_layers_and_parameters(name, one_thread):
    trunk, _, _, params = BEFORE[name]
    model = medfm.create_model({"name": name, "modalities": XRAY})
    assert len(model.tower("xray").trunk.blocks) == trunk["depth"]
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("name", ["medfm-base", "models/small_3d.yaml"])
def test_large_presets_have_the_same_parameter_count(name, one_thread):
    cfg = {**resolve_config(name), "modalities": XRAY}
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = medfm.create_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == BEFORE[name][3]
    assert len(model.tower("xray").trunk.blocks) == BEFORE[name][0]["depth"]


def test_every_shipped_model_file_is_a_preset_and_python_holds_none():
    files = sorted(p.stem for p in (ROOT / "configs" / "models").glob("*.yaml"))
    assert {"medfm-tiny", "medfm-small", "medfm-base"} <= set(files)
    for stem in files:
        assert stem in MODELS and isinstance(MODELS.get(stem), FilePreset)
        assert MODELS.get(stem).path.name == f"{stem}.yaml"
    # no @register_model preset functions left in the package
    for path in (ROOT / "medfm").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                for deco in node.decorator_list:
                    target = deco.func if isinstance(deco, ast.Call) else deco
                    assert getattr(target, "id", getattr(target, "attr", None)) != "register_model", \
                        f"{path}: {node.name} registers a model preset in Python"


def test_a_file_extends_the_preset_its_name_names():
    small_3d = preset_config("small_3d")
    assert small_3d["name"] == "medfm-small"
    assert small_3d["trunk"]["depth"] == 12  # its own
    assert small_3d["embed_dim"] == 256 and small_3d["trunk"]["width"] == 384  # medfm-small's
    # by name and by file, the same model
    by_name, by_file = resolve_config("small_3d"), resolve_config("models/small_3d.yaml")
    assert {k: v for k, v in by_name.items() if k != "name"} == {k: v for k, v in by_file.items() if k != "name"}
    assert by_name["name"] == "small_3d" and by_file["name"] == "medfm-small"


@pytest.fixture
def preset_dir(tmp_path):
    made = []

    def write(name, text):
        (tmp_path / f"{name}.yaml").write_text(text)
        made.append(name)

    yield tmp_path, write
    for name in made:
        MODELS._items.pop(name, None)


def test_chains_and_cycles(preset_dir):
    folder, write = preset_dir
    write("pt-root", "name: pt-root\nembed_dim: 32\ntrunk: {width: 32, depth: 3, heads: 2}\n")
    write("pt-child", "name: pt-root\ntrunk: {depth: 1}\n")
    write("pt-grandchild", "name: pt-child\ndecoder: {width: 16, heads: 2}\n")
    write("pt-a", "name: pt-b\n")
    write("pt-b", "name: pt-a\n")
    assert set(register_preset_dir(folder)) == {"pt-root", "pt-child", "pt-grandchild", "pt-a", "pt-b"}
    cfg = resolve_config("pt-grandchild")
    assert cfg["trunk"]["width"] == 32 and cfg["trunk"]["depth"] == 1 and cfg["decoder"]["width"] == 16
    assert cfg["trunk"]["mlp_ratio"] == 4.0 and cfg["decoder"]["depth"] == 2  # schema defaults beneath
    with pytest.raises(ConfigError, match="cycle: pt-a -> pt-b -> pt-a"):
        resolve_config("pt-a")


def test_a_preset_file_with_an_unknown_key_names_the_file(preset_dir):
    folder, write = preset_dir
    write("pt-bad", "name: pt-bad\ntrunk: {width: 32, depht: 3, heads: 2}\n")
    register_preset_dir(folder)
    with pytest.raises(ConfigError, match=r"pt-bad\.yaml: trunk\.depht: unknown key"):
        resolve_config({"name": "pt-bad", "modalities": XRAY})


def test_register_model_stays_the_python_extension_point():
    @register_model("pt-python-preset")
    def _preset():
        """A preset written in Python that extends a YAML one."""
        return {"name": "medfm-tiny", "embed_dim": 48}

    try:
        cfg = resolve_config({"name": "pt-python-preset", "modalities": XRAY})
        assert cfg["embed_dim"] == 48 and cfg["trunk"]["width"] == 64  # medfm-tiny beneath
        model = medfm.create_model(cfg)
        assert model.embed_dim == 48
    finally:
        MODELS._items.pop("pt-python-preset", None)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"model\.name: unknown model preset 'medfm-huge'.*medfm-tiny"):
        resolve_config({"name": "medfm-huge"})
    with pytest.raises(ConfigError, match="not a preset"):
        resolve_config("medfm-huge")
