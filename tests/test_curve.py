"""Label-efficiency curve: patient-grouped draws, the crossover rule, and the crossover on synthetic
tasks whose answer is known by construction."""
import numpy as np
import pytest

from medfm.errors import UsageError
from medfm.evaluation import curve


def test_crossover_rule_by_hand():
    ns = [1, 2, 5, 10, "all"]
    model = [0.70, 0.72, 0.74, 0.75, 0.76]
    assert curve.crossover_n(ns, model, [0.5, 0.6, 0.75, 0.80, 0.90]) == {
        "n": 5, "verdict": "catches the model at n = 5 per class"}
    # a blip above the model that does not last is not a crossover
    assert curve.crossover_n(ns, model, [0.5, 0.8, 0.6, 0.80, 0.90])["n"] == 10
    assert curve.crossover_n(ns, model, [0.5, 0.6, 0.7, 0.80, 0.70]) == {"n": None, "verdict": curve.NOT_WITHIN}
    assert curve.crossover_n(ns, model, model)["n"] == 1  # equal everywhere: never behind
    assert curve.crossover_n(ns, model, [0, 0, 0, 0, 0.9])["n"] == "all"


def test_parse_ns():
    assert curve.parse_ns("1, 5,all") == [1, 5, "all"]
    assert curve.parse_ns(None)[-1] == "all"
    with pytest.raises(UsageError):
        curve.parse_ns("0,5")


def test_grouped_draw_takes_distinct_patients_first():
    y = np.array([0] * 12 + [1] * 12)
    groups = np.array([f"p{i // 4}" for i in range(24)])  # 3 patients per class, 4 rows each
    rng = np.random.default_rng(0)
    idx = curve.grouped_draw(y, groups, 3, rng)
    assert len(idx) == 6
    for c in (0, 1):
        assert len(set(groups[idx[y[idx] == c]])) == 3
    idx5 = curve.grouped_draw(y, groups, 5, rng)
    assert sorted(np.bincount(y[idx5])) == [5, 5]
    for c in (0, 1):  # 5 rows over 3 patients: every patient, two of them twice
        assert sorted(np.unique(groups[idx5[y[idx5] == c]], return_counts=True)[1]) == [1, 2, 2]


def _task(seed=0, n_train=300, n_test=400):
    """Two classes. The model's feature is ±1 by class on train and on 75 % of test rows (25 % flipped):
    its test AUROC is exactly 0.75 at every n. The baseline's 200-D features hold a weak signal in one
    dimension: near chance with few labels, far above 0.75 with all of them."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    y = np.tile([0, 1], n // 2)
    splits = np.array(["train"] * n_train + ["test"] * n_test, dtype=object)
    groups = np.array([f"p{i // 2}" for i in range(n)])
    sign = 2.0 * y - 1
    flip = np.zeros(n, bool)
    test_rows = np.flatnonzero(splits == "test")
    for c in (0, 1):
        rows = test_rows[y[test_rows] == c]
        flip[rows[: len(rows) // 4]] = True
    model = np.where(flip, -sign, sign)[:, None]
    base = rng.normal(size=(n, 200))
    base[:, 0] += 1.2 * sign
    return model, base, y, splits, groups


def test_crossover_known_by_construction():
    model, base, y, splits, groups = _task()
    noise = np.random.default_rng(9).normal(size=base.shape)
    res = curve.label_efficiency({"model": model, "same": model * 3.0, "noise": noise, "baseline": base}, y, splits,
                                 groups, ns=[1, 2, 5, 10, 20, 50, "all"], seeds=5)
    m = res["curves"]["model"]["macro_auroc"]["mean"]
    assert m == pytest.approx([0.75] * 7)
    assert res["crossover"]["same"]["n"] == 1          # the same information: never behind
    assert res["crossover"]["noise"] == {"n": None, "verdict": curve.NOT_WITHIN}
    b = res["curves"]["baseline"]["macro_auroc"]["mean"]
    assert b[0] < 0.7 and b[-1] > 0.8                  # behind with 1 label, ahead with all
    n = res["crossover"]["baseline"]["n"]
    assert n in (10, 20, 50)
    i = res["ns"].index(n)
    assert all(v >= 0.75 for v in b[i:]) and b[i - 1] < 0.75
    flat = curve.curve_metrics(res)
    assert flat["curve/crossover_n/baseline"] == n and np.isnan(flat["curve/crossover_n/noise"])
    assert res["ns"][-1] == "all" and 150 not in res["ns"]


def test_grid_drops_sizes_past_the_largest_class(tmp_path):
    model, base, y, splits, groups = _task(n_train=40, n_test=40)
    res = curve.label_efficiency({"model": model, "b": base}, y, splits, groups, ns=[1, 5, 20, 50, 100, "all"], seeds=2)
    assert res["ns"] == [1, 5, "all"]
    p = curve.plot_curve(res, tmp_path / "curve.png")
    assert p.read_bytes()[:4] == b"\x89PNG"
