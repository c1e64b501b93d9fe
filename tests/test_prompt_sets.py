"""Prompt sets: the shipped folders load as matching sets, the ensemble holds every distinct prompt, the spread
is the mean / SD / range over sets, and mismatched sets are refused."""
import numpy as np
import pytest

from medfm.errors import ConfigError
from medfm.evaluation.prompt_sets import ensemble_set, load_prompt_sets, spread


@pytest.mark.parametrize("folder,n,task,n_classes", [("ptbxl_superclasses", 3, "multiclass", 5),
                                                     ("chexpert14", 3, "multilabel", 14),
                                                     ("bold_orders", 3, "multiclass", 14)])
def test_shipped_prompt_folders(folder, n, task, n_classes):
    sets = load_prompt_sets([folder])
    assert len(sets) == n and {s.task for s in sets} == {task}
    assert all(s.classes == sets[0].classes for s in sets) and len(sets[0].classes) == n_classes
    ens = ensemble_set(sets)
    for c in ens.classes:
        union = list(dict.fromkeys(p for s in sets for p in s.positive[c]))
        assert ens.positive[c] == union
        if task == "multilabel":
            assert ens.negative[c] == list(dict.fromkeys(p for s in sets for p in s.negative[c]))


def test_german_set_is_shipped():
    names = [s.name for s in load_prompt_sets(["ptbxl_superclasses"])]
    assert "de_befund" in names
    de = next(s for s in load_prompt_sets(["ptbxl_superclasses"]) if s.name == "de_befund")
    assert "Myokardinfarkt" in de.positive["MI"]


def test_spread_and_refusals(tmp_path):
    per = {"a": {"accuracy": 0.6, "macro_auroc": 0.7}, "b": {"accuracy": 0.8, "macro_auroc": float("nan")}}
    s = spread(per)
    assert s["prompts/spread/accuracy/mean"] == pytest.approx(0.7)
    assert s["prompts/spread/accuracy/sd"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert s["prompts/spread/accuracy/min"] == 0.6 and s["prompts/spread/macro_auroc/max"] == 0.7
    a = tmp_path / "a.yaml"
    a.write_text("name: a\nclasses:\n  x: [ex]\n  y: [why]\n")
    b = tmp_path / "b.yaml"
    b.write_text("name: a\nclasses:\n  y: [wye]\n  x: [eks]\n")
    with pytest.raises(ConfigError, match="share a name"):
        load_prompt_sets([a, b])
    b.write_text("name: b\nclasses:\n  y: [wye]\n  x: [eks]\n")
    sets = load_prompt_sets([a, b])
    assert sets[1].classes == ["x", "y"]  # the first set's order
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="no \\*.yaml"):
        load_prompt_sets([tmp_path / "empty"])
