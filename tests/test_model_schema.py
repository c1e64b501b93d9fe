"""The typed model config: unknown keys with their path, defaults in one place, old checkpoints,
and ``medfm info --config-schema``."""
from __future__ import annotations

import dataclasses
import json
import warnings
from typing import List, Optional

import pytest
import torch

import medfm
from medfm.cli import main
from medfm.errors import ConfigError
from medfm.models import MultiModalModel, resolve_config
from medfm.models.factory import resolve_model_config
from medfm.models import multimodal
from medfm.models.config import ModelConfig, model_defaults, validate_model_config
from medfm.schema import describe, to_dict, validate

XRAY = {"xray": {"size": 32, "patch_size": 8}}


@pytest.mark.parametrize("config, message", [
    ({"name": "medfm-tiny", "trunk": {"depht": 3}}, r"model\.trunk\.depht: unknown key; known: act, causal, depth"),
    ({"name": "medfm-tiny", "embeddim": 32}, r"model\.embeddim: unknown key"),
    ({"name": "medfm-tiny", "embed_dim": "big"}, r"model\.embed_dim: expected an integer, got 'big'"),
    ({"name": "medfm-tiny", "trunk": {"depth": -1}}, r"model\.trunk\.depth: must be >= 0"),
    ({"name": "medfm-tiny", "trunk": {"act": "relu"}}, r"model\.trunk\.act: expected one of 'gelu', 'quick_gelu'"),
    ({"name": "medfm-tiny", "trunk": {"width": 64, "heads": 3}}, r"model\.trunk\.heads: width 64 does not divide"),
    ({"name": "medfm-tiny", "decoder": {"width": 30, "heads": 4}}, r"model\.decoder\.heads: width 30"),
    ({"name": 3}, r"model\.name: expected a string"),
])
def test_bad_model_config_is_an_error_with_its_path(config, message):
    with pytest.raises(ConfigError, match=message):
        medfm.create_model({**config, "modalities": XRAY})


def test_adapter_and_tower_errors_carry_the_key_path():
    with pytest.raises(ConfigError, match=r"model\.modalities\.xray: .*unknown option\(s\) \['sise'\]"):
        medfm.create_model({"name": "medfm-tiny", "modalities": {"xray": {"sise": 32}}})
    with pytest.raises(ConfigError, match=r"model\.towers\.xray \(vit tower\): .*pool must be"):
        medfm.create_model({"name": "medfm-tiny", "modalities": XRAY, "towers": {"xray": {"pool": "max"}}})
    with pytest.raises(ConfigError, match=r"model\.towers\.ecg: not a modality of this model"):
        medfm.create_model({"name": "medfm-tiny", "modalities": XRAY, "towers": {"ecg": {"pool": "cls"}}})


def test_a_config_file_error_names_the_file(tmp_path):
    path = tmp_path / "my_model.yaml"
    path.write_text("name: medfm-tiny\ndecoder: {widht: 8}\n")
    with pytest.raises(ConfigError, match=r"my_model\.yaml: decoder\.widht: unknown key"):
        resolve_config(str(path))


def test_defaults_live_only_in_the_schema():
    assert not hasattr(multimodal, "DEFAULT_CONFIG")
    cfg = resolve_config({"modalities": XRAY})  # no preset: the field defaults
    assert "name" not in cfg and "init" not in cfg
    defaults = ModelConfig()
    assert cfg["embed_dim"] == defaults.embed_dim == 256
    assert cfg["trunk"] == to_dict(defaults.trunk) and cfg["trunk"]["width"] == 192 and cfg["trunk"]["depth"] == 4
    assert cfg["decoder"] == {"width": 128, "depth": 2, "heads": 4}
    assert model_defaults() == {k: v for k, v in to_dict(defaults).items() if k != "name"}


def test_create_model_takes_a_typed_config(one_thread):
    typed = resolve_model_config({"name": "medfm-tiny", "modalities": XRAY})  # complete: preset applied
    assert isinstance(typed, ModelConfig) and typed.trunk.width == 64 and typed.embed_dim == 64
    typed.embed_dim = 24
    model = medfm.create_model(typed)
    assert model.embed_dim == 24 and model.tower("xray").width == 64
    # validate_model_config only checks and fills the field defaults (no preset): trunk width 192
    assert validate_model_config({"name": "medfm-tiny"}).trunk.width == 192


def test_resolve_is_idempotent_on_its_own_output():
    once = resolve_config({"name": "small_3d", "modalities": XRAY})
    assert resolve_config(once) == once


def _save_tiny(tmp_path):
    torch.manual_seed(0)
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {"oct": {"frames": 6, "size": [32, 32]}}})
    return model, model.save_pretrained(tmp_path / "ckpt")


def test_old_checkpoint_config_still_loads(tmp_path, one_thread):
    """A config.json written before mask_ratio moved (it sat among the adapter options too) loads,
    without a deprecation warning, and gives the same weights and the same tower ratio."""
    model, ckpt = _save_tiny(tmp_path)
    meta = json.loads((ckpt / "config.json").read_text())
    meta["model"]["modalities"]["oct"]["mask_ratio"] = 0.9  # as every adapter wrote it before
    trunk = meta["model"]["trunk"]
    for k in ("qkv_bias", "norm_eps", "pre_norm", "causal", "act"):  # keys old configs did not write
        trunk.pop(k)
    (ckpt / "config.json").write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        loaded = MultiModalModel.from_pretrained(ckpt)
    sd, ref = loaded.state_dict(), model.state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
    assert loaded.tower("oct").mask_ratio == 0.9
    assert "mask_ratio" not in loaded.config_with_adapters()["modalities"]["oct"]


def test_schema_rows_document_every_field_with_the_default_validate_fills():
    rows = {r["field"]: r for r in describe(ModelConfig)}
    filled = to_dict(validate(ModelConfig, {}))
    for name, value in filled.items():
        if isinstance(value, dict) and rows[name]["type"] == "section":
            for k, v in value.items():
                assert rows[f"{name}.{k}"]["default"] == v, f"{name}.{k}"
        else:
            assert rows[name]["default"] == value, name
    assert all(r["doc"] for r in rows.values()), [f for f, r in rows.items() if not r["doc"]]
    assert rows["trunk.depth"]["type"] == "int" and rows["trunk.depth"]["min"] == 0
    assert rows["name"]["type"] == "str?" and rows["trunk.act"]["type"] == "'gelu' | 'quick_gelu'"
    assert len(rows) == len(dataclasses.fields(ModelConfig)) + 11 + 3  # + trunk and decoder fields


def test_info_config_schema_prints_run_finetune_and_model(capsys):
    assert main(["info", "--config-schema"]) == 0
    out = capsys.readouterr().out
    for header in ("run config (", "finetune config (", "model config (", "objectives config ("):
        assert header in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert lines["optim.lr"].split()[1:3] == ["float", "0.001"]
    assert lines["trunk.depth"].split()[1:3] == ["int", "4"] and "transformer blocks" in lines["trunk.depth"]
    assert main(["info", "--config-schema", "model", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data) == ["model"]
    assert {r["field"]: r["default"] for r in data["model"]}["decoder.heads"] == 4
    assert main(["info", "--config-schema", "objectives", "--json"]) == 0
    objectives = {r["field"]: r for r in json.loads(capsys.readouterr().out)["objectives"]}
    assert "default" in objectives["masked.mask_ratio"]["doc"] and objectives["masked.mask_ratio"]["default"] is None
    assert objectives["clip.mode"]["default"] == "pairs" and objectives["clip.mode"]["doc"]  # documented on the base
    with pytest.raises(SystemExit) as e:
        main(["info", "--config-schema", "nope"])
    assert e.value.code == 2


def test_info_lists_presets_with_what_they_extend(capsys):
    assert main(["info", "--json"]) == 0
    details = {m["name"]: m for m in json.loads(capsys.readouterr().out)["model_details"]}
    assert details["small_3d"]["extends"] == "medfm-small" and details["medfm-small"]["extends"] is None
    assert details["medfm-tiny"]["file"] == "models/medfm-tiny.yaml" and details["medfm-tiny"]["description"]



@dataclasses.dataclass
class _DocInner:
    """What an inner section is.

    Attributes:
        depth: how many blocks; written over
            two lines.
    """

    depth: int = dataclasses.field(default=2, metadata={"min": 1})


@dataclasses.dataclass
class _DocOuter:
    inner: _DocInner = dataclasses.field(default_factory=_DocInner)
    tags: List[str] = dataclasses.field(default_factory=list, metadata={"doc": "free labels"})
    seed: Optional[int] = None


def test_describe_reads_field_docs_from_metadata_or_the_class_docstring():
    rows = {r["field"]: r for r in describe(_DocOuter)}
    assert rows["inner"]["doc"] == "What an inner section is." and rows["inner"]["type"] == "section"
    assert rows["inner.depth"] == {"field": "inner.depth", "type": "int", "default": 2, "min": 1,
                                   "doc": "how many blocks; written over two lines."}
    assert rows["tags"]["doc"] == "free labels" and rows["tags"]["type"] == "list[str]" and rows["tags"]["default"] == []
    assert rows["seed"]["type"] == "int?" and rows["seed"]["doc"] == ""


def test_pretraining_checks_the_model_config_before_reading_any_data(tmp_path):
    from medfm.train import Trainer

    missing = tmp_path / "no_such_manifest.csv"  # never opened: the model config fails first
    run = {"model": {"name": "medfm-tiny", "trunk": {"depht": 3}, "modalities": XRAY},
           "data": {"manifest": str(missing)}, "objectives": [{"name": "clip"}]}
    with pytest.raises(ConfigError, match=r"model\.trunk\.depht: unknown key"):
        Trainer(run, tmp_path / "out")
    run["model"]["trunk"] = {"depth": 1}
    with pytest.raises(Exception, match="no_such_manifest"):  # a valid model: now the manifest is read
        Trainer(run, tmp_path / "out")
