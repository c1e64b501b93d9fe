"""``mask_ratio`` has one owner: the masked objective (with a per-modality override)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import medfm
from medfm import schema
from medfm.errors import ConfigError
from medfm.objectives import MaskedObjective, build_objective
from medfm.registry import get_modality

ROOT = Path(__file__).resolve().parents[1]
OCT = {"frames": 6, "size": [32, 32]}  # 3×16×16 tubelets: 2 × 2 × 2 = 8 tokens
XRAY = {"size": 32, "patch_size": 8}  # 16 tokens


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Deprecation warnings are shown once per process; each test sees its own."""
    monkeypatch.setattr(schema, "_WARNED", set())


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return medfm.create_model({"name": "medfm-tiny", "modalities": {"oct": OCT, "xray": XRAY}})


def masked_counts(model, objective, batch_size=2):
    """Run ``objective`` and return ``{modality: masked tokens per sample}`` the towers drew."""
    seen = {}
    original = model.masked_loss

    def spy(mod, x, mask=None, mask_ratio=None):
        out = original(mod, x, mask=mask, mask_ratio=mask_ratio)
        per_sample = out["token_mask"].sum(dim=1)
        assert bool((per_sample == per_sample[0]).all())
        seen[mod] = int(per_sample[0])
        return out

    model.masked_loss = spy
    try:
        inputs = {"oct": {"x": torch.rand(batch_size, 1, 6, 32, 32)}, "xray": {"x": torch.rand(batch_size, 1, 32, 32)}}
        batch = {"inputs": {m: v for m, v in inputs.items() if m in model.modalities}}
        out = objective(model, batch, {})
        assert torch.isfinite(out["loss"])
    finally:
        del model.masked_loss
    return seen


def test_objective_ratio_sets_the_number_of_masked_tokens(model, one_thread):
    # without a ratio: each modality's own (OCT 0.9 as OCTCube, X-ray 0.75 as MAE)
    assert masked_counts(model, MaskedObjective()) == {"oct": round(0.9 * 8), "xray": round(0.75 * 16)}
    assert masked_counts(model, MaskedObjective(mask_ratio=0.5)) == {"oct": 4, "xray": 8}
    assert masked_counts(model, build_objective([{"name": "masked", "mask_ratio": 0.25}])) == {"oct": 2, "xray": 4}


def test_per_modality_override_wins_over_default(model, one_thread):
    both = MaskedObjective(mask_ratio={"oct": 0.5, "default": 0.25})
    assert masked_counts(model, both) == {"oct": 4, "xray": 4}
    only_xray = MaskedObjective(mask_ratio={"xray": 0.5})  # oct keeps its own 0.9
    assert masked_counts(model, only_xray) == {"oct": 7, "xray": 8}
    assert only_xray.ratio_for("oct") is None and only_xray.ratio_for("xray") == 0.5


def test_bad_ratios_are_errors_with_their_path(model):
    with pytest.raises(ConfigError, match=r"masked\.mask_ratio: must be in \[0, 1\), got 1\.0"):
        MaskedObjective(mask_ratio=1.0)
    with pytest.raises(ConfigError, match=r"masked\.mask_ratio\.oct: expected a number"):
        MaskedObjective(mask_ratio={"oct": "most"})
    with pytest.raises(ConfigError, match=r"masked\.mask_ratio\.ecg: not among the objective's modalities"):
        MaskedObjective(modalities=["oct"], mask_ratio={"ecg": 0.5})
    typo = MaskedObjective(mask_ratio={"ocd": 0.5})
    with pytest.raises(ConfigError, match=r"masked\.mask_ratio\.ocd: the model has no 'ocd' modality"):
        masked_counts(model, typo)


def test_a_ratio_typo_is_found_through_nested_wrappers(model):
    # compile(DDP(model)): ``._orig_mod`` outside ``.module``; the one unwrap_model finds the model inside both
    class Wrapper(torch.nn.Module):
        def __init__(self, attr, inner):
            super().__init__()
            setattr(self, attr, inner)

    wrapped = Wrapper("_orig_mod", Wrapper("module", model))
    typo = MaskedObjective(mask_ratio={"ocd": 0.5})
    with pytest.raises(ConfigError, match=r"masked\.mask_ratio\.ocd: the model has no 'ocd' modality"):
        typo._check_model(wrapped)


def test_adapter_option_is_deprecated_and_mapped(one_thread):
    with pytest.warns(FutureWarning, match=r"modalities\.oct\.mask_ratio is deprecated; mask_ratio belongs to the "
                                           r"masked objective: objectives: \[\{name: masked, mask_ratio: \{oct: 0\.5\}"):
        model = medfm.create_model({"name": "medfm-tiny", "modalities": {"oct": {**OCT, "mask_ratio": 0.5}}})
    assert model.tower("oct").mask_ratio == 0.5  # what it meant before: the tower's ratio ...
    assert "mask_ratio" not in model.config_with_adapters()["modalities"]["oct"]
    assert masked_counts(model, MaskedObjective(mask_ratio=0.25)) == {"oct": 2}  # ... which the objective overrides
    with pytest.warns(FutureWarning, match=r"modality 'xray' option mask_ratio is deprecated"):
        adapter = get_modality("xray", mask_ratio=0.6)
    assert adapter.tower_config()["masked"]["mask_ratio"] == 0.6 and "mask_ratio" not in adapter.config()


def test_tower_override_is_deprecated(one_thread):
    with pytest.warns(FutureWarning, match=r"model\.towers\.oct\.masked\.mask_ratio is deprecated"):
        model = medfm.create_model({"name": "medfm-tiny", "modalities": {"oct": OCT},
                                    "towers": {"oct": {"masked": {"mask_ratio": 0.5}}}})
    assert model.tower("oct").mask_ratio == 0.5


def _mask_ratio_paths(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            sub = f"{path}.{k}" if path else str(k)
            if k == "mask_ratio":
                yield sub
            yield from _mask_ratio_paths(v, sub)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _mask_ratio_paths(v, f"{path}[{i}]")


def test_shipped_configs_and_demo_set_mask_ratio_only_in_the_objective():
    from medfm.demo.pipeline import pretrain_config, settings

    configs = {p.name: yaml.safe_load(p.read_text()) for p in (ROOT / "configs").rglob("*.yaml")}
    configs["demo"] = pretrain_config(Path("/nonexistent/m.csv"), settings(quick=True), seed=0)
    objective_owned = 0
    for name, cfg in configs.items():
        for where in _mask_ratio_paths(cfg):
            assert where.startswith("objectives["), f"{name}: {where}"
            objective_owned += 1
    assert objective_owned >= 6
    # oct_mae.yaml said 0.9 three times; now once, in its objective
    oct_mae = configs["oct_mae.yaml"]
    assert list(_mask_ratio_paths(oct_mae)) == ["objectives[0].mask_ratio"] and oct_mae["objectives"][0]["mask_ratio"] == 0.9
    assert configs["demo"]["objectives"][1]["mask_ratio"] == {"oct": 0.75}
