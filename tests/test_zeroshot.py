"""Zero-shot: prompt-set parsing, ensembling, hand-built multi-class / multi-label / prototype cases."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfm.errors import ConfigError, DataError
from medfm.evaluation import zeroshot as zs

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_parse_forms_and_templates():
    ps = zs.parse_prompt_set({
        "task": "multiclass", "templates": ["a photo of {label}", "{label}"],
        "classes": {"cat": ["a cat", "kitty"], "dog": {"label": "a dog"}, "owl": None}})
    assert ps.classes == ["cat", "dog", "owl"]
    assert ps.positive["cat"] == ["a cat", "kitty"]
    assert ps.positive["dog"] == ["a photo of a dog", "a dog"]
    assert ps.positive["owl"] == ["a photo of owl", "owl"]
    ml = zs.parse_prompt_set({"task": "multilabel", "classes": {
        "Edema": {"label": "edema"}, "X": {"positive": ["x"], "negative": ["not x"]}}})
    assert ml.positive["Edema"] == ["edema"] and ml.negative["Edema"] == ["no edema"]
    assert ml.negative["X"] == ["not x"]


@pytest.mark.parametrize("bad", [
    {"classes": {}},
    {"task": "regression", "classes": {"a": None}},
    {"templates": ["no placeholder"], "classes": {"a": None}},
    {"classes": {"a": {"prompts": []}}},
    {"classes": {"a": {"colour": "red"}}},
])
def test_bad_prompt_sets(bad):
    with pytest.raises(ConfigError):
        zs.parse_prompt_set(bad, "p.yaml")


def test_ensemble_is_normalised_mean_of_normalised():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(5, 7)) * rng.uniform(0.1, 10, (5, 1))
    ref = (e / np.linalg.norm(e, axis=1, keepdims=True)).mean(0)
    np.testing.assert_allclose(zs.ensemble(e), ref / np.linalg.norm(ref), rtol=1e-5)


def _fake_encoder(table):
    calls = []

    def encode(prompts):
        calls.append(list(prompts))
        return np.stack([table[p] for p in prompts])
    return encode, calls


def test_multiclass_hand_built_case():
    """Class c's prompts point near axis c; images near axis c must be classified as c."""
    rng = np.random.default_rng(1)
    d, classes = 6, ["a", "b", "c"]
    table = {}
    for c, name in enumerate(classes):
        for j in range(3):
            table[f"{name}{j}"] = np.eye(d)[c] + 0.2 * rng.normal(size=d)
    ps = zs.parse_prompt_set({"classes": {n: [f"{n}{j}" for j in range(3)] for n in classes}})
    encode, calls = _fake_encoder(table)
    clf = zs.text_classifier(encode, ps)
    assert len(calls) == 1 and len(calls[0]) == 9  # one batched encode for all prompts
    y = rng.integers(0, 3, 60)
    img = np.eye(d)[y] + 0.2 * rng.normal(size=(60, d))
    probs = zs.zeroshot_scores(img, clf, logit_scale=50.0)
    assert probs.shape == (60, 3)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    assert (probs.argmax(1) == y).mean() == 1.0
    # swapping the class names' prompts swaps the answers: accuracy falls to zero for a<->b
    ps_swapped = zs.parse_prompt_set({"classes": {"a": ["b0", "b1", "b2"], "b": ["a0", "a1", "a2"],
                                                  "c": ["c0", "c1", "c2"]}})
    pred = zs.zeroshot_scores(img, zs.text_classifier(encode, ps_swapped), 50.0).argmax(1)
    assert (pred[y < 2] == y[y < 2]).mean() == 0.0


def test_multilabel_pos_neg_softmax():
    d = 4
    table = {"edema": np.eye(d)[0], "no edema": np.eye(d)[1], "mass": np.eye(d)[2], "no mass": np.eye(d)[3]}
    ps = zs.parse_prompt_set({"task": "multilabel", "classes": {"Edema": {"label": "edema"},
                                                                 "Mass": {"label": "mass"}}})
    encode, _ = _fake_encoder(table)
    img = np.array([[1.0, 0.2, 0.0, 1.0], [0.1, 1.0, 1.0, 0.3]])
    p = zs.zeroshot_scores(img, zs.text_classifier(encode, ps), logit_scale=10.0)
    u = _unit(img)
    for i in range(2):
        for c, (pos, neg) in enumerate([(0, 1), (2, 3)]):
            a, b = np.exp(10 * u[i, pos]), np.exp(10 * u[i, neg])
            assert p[i, c] == pytest.approx(a / (a + b), rel=1e-5)
    assert p[0, 0] > 0.5 and p[0, 1] < 0.5 and p[1, 0] < 0.5 and p[1, 1] > 0.5


def test_prototypes_from_support_set():
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(4, 10))
    ys = np.repeat(np.arange(4), 5)
    support = centers[ys] + 0.3 * rng.normal(size=(20, 10))
    yq = rng.integers(0, 4, 40)
    query = centers[yq] + 0.3 * rng.normal(size=(40, 10))
    protos = zs.class_prototypes(support, ys, 4)
    ref = _unit(np.stack([_unit(support[ys == c]).mean(0) for c in range(4)]))
    np.testing.assert_allclose(protos, ref, rtol=1e-5)
    assert (zs.multiclass_scores(query, protos).argmax(1) == yq).mean() >= 0.95
    with pytest.raises(DataError, match="class 4"):
        zs.class_prototypes(support, ys, 5)


def test_label_targets_and_class_checks():
    ps = zs.parse_prompt_set({"classes": {"NORM": None, "MI": None}})
    assert zs.label_targets(["MI", "NORM", "MI"], ps).tolist() == [1, 0, 1]
    with pytest.raises(DataError, match="'MI'"):       # a prompt class that is not in the labels
        zs.label_targets(["NORM", "NORM"], ps, source="m.csv", column="dx")
    with pytest.raises(DataError, match="HYP"):        # a label without prompts
        zs.label_targets(["NORM", "MI", "HYP"], ps)
    ml = zs.parse_prompt_set({"task": "multilabel", "classes": {"Edema": None, "Mass": None}})
    assert zs.label_targets(["Edema|Mass", None, "Mass"], ml).tolist() == [[1, 1], [0, 0], [0, 1]]


def test_shipped_prompt_sets(tmp_path):
    chex = zs.load_prompt_set(ROOT / "configs/prompts/chexpert14.yaml")
    assert chex.task == "multilabel" and len(chex.classes) == 14
    assert {"No Finding", "Pleural Effusion", "Support Devices", "Cardiomegaly"} <= set(chex.classes)
    assert all(chex.negative[c] for c in chex.classes)
    ptb = zs.load_prompt_set(ROOT / "configs/prompts/ptbxl_superclasses.yaml")
    assert ptb.classes == ["NORM", "MI", "STTC", "CD", "HYP"]
    tax = zs.load_prompt_set(ROOT / "configs/prompts/taxonomy_ranks.yaml")
    tsv = DATA / "dna" / "coi_barcodes_100_species.tsv"
    if not tsv.is_file():
        pytest.skip(f"shared data not found at {tsv}")
    orders = set(pd.read_csv(tsv, sep="\t", usecols=["order_name"])["order_name"])
    assert set(tax.classes) == orders  # every order of the real barcodes has prompts, and only those
    with pytest.raises(DataError, match="not found"):
        zs.load_prompt_set(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("classes: [unclosed")
    with pytest.raises(ConfigError, match="YAML"):
        zs.load_prompt_set(tmp_path / "bad.yaml")
