"""Subgroups: banding rules, per-group metrics against scikit-learn, too-small groups kept and the gap."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from medfm.errors import DataError, UsageError
from medfm.evaluation import subgroups as sg


def test_parse_subgroups_with_edge_lists():
    assert sg.parse_subgroups("sex,age:decade,bmi:0,25,30,100,site") == [
        ("sex", None), ("age", "decade"), ("bmi", "0,25,30,100"), ("site", None)]
    with pytest.raises(UsageError):
        sg.parse_subgroups(" , ")


def test_banding_rules():
    ages = pd.Series([34, 39.5, 40, 71, None, ""])
    labels, how = sg.band(ages, "age", None)
    assert list(labels) == ["30-39", "30-39", "40-49", "70-79", "missing", "missing"] and "decade" in how
    labels, _ = sg.band(pd.Series([1, 17, 18, 64, 65, 300]), "x", "0,18,65,120")
    assert list(labels) == ["[0, 18)", "[0, 18)", "[18, 65)", "[18, 65)", "[65, 120)", "outside the edges"]
    labels, how = sg.band(pd.Series(range(8)), "score", None)
    assert len(set(labels)) == 4 and "quartile" in how
    labels, _ = sg.band(pd.Series([3, 3, 7]), "device", "value")
    assert list(labels) == ["3", "3", "7"]
    with pytest.raises(UsageError):
        sg.band(pd.Series(["F", "M"]), "sex", "decade")


def test_run_subgroups_metrics_too_small_and_gap():
    rng = np.random.default_rng(0)
    n = 200
    sex = np.array(["F"] * 100 + ["M"] * 90 + ["X"] * 10)
    y = rng.integers(0, 2, n)
    good = np.where(sex == "F", 2.0, 0.3)  # the model separates F far better than M
    p1 = 1 / (1 + np.exp(-(good * (2 * y - 1) + rng.normal(0, 1, n))))
    scores = np.stack([1 - p1, p1], 1)
    rows = pd.DataFrame({"id": range(n), "sex": sex})
    res = sg.run_subgroups(y, scores, np.arange(n), ["a", "b"], rows, [("sex", None)], min_size=20, n_boot=50)
    t = res["table"]["sex"]
    assert t["groups"]["X"] == {"n": 10, "n_patients": 10, "too_small": True}
    f = t["groups"]["F"]["metrics"]
    assert f["accuracy"] == pytest.approx(accuracy_score(y[sex == "F"], p1[sex == "F"] >= 0.5))
    assert f["macro_auroc"] == pytest.approx(roc_auc_score(y[sex == "F"], p1[sex == "F"]))
    gap = t["gap"]["macro_auroc"]
    assert gap["best"] == "F" and gap["worst"] == "M"
    m = t["groups"]["M"]["metrics"]["macro_auroc"]
    assert res["metrics"]["subgroup/sex/gap/macro_auroc"] == pytest.approx(f["macro_auroc"] - m)
    for k in ("macro_auroc", "ece"):  # every metric has its patient-bootstrap interval
        lo, hi = t["groups"]["F"]["ci"][k]
        assert lo <= f[k] <= hi
    md = "\n".join(sg.subgroup_markdown(res["table"], 20))
    assert "| X | 10 | 10 | too small |" in md and "worst-group gap in macro_auroc" in md
    with pytest.raises(DataError):
        sg.run_subgroups(y, scores, np.arange(n), ["a", "b"], rows, [("site", None)], n_boot=0)
