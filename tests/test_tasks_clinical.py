"""The task API's clinical additions on a multi-label probe: calibration per finding, subgroups, and the report
rendered from the JSON record (NaN → null survives)."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import recall_score

from medfm.evaluation import tasks
from medfm.evaluation.calibration import choose_threshold, expected_calibration_error
from medfm.evaluation.report import to_jsonable
from medfm.evaluation.tasks_clinical import add_calibration, add_subgroups, probe_validation_scores


def test_multilabel_probe_calibration_and_subgroups():
    rng = np.random.default_rng(0)
    n, d = 240, 6
    X = rng.normal(size=(n, d))
    Y = np.stack([(X[:, 0] + 0.5 * rng.normal(size=n) > 0), (X[:, 1] + rng.normal(size=n) > 0.5)], 1).astype(int)
    splits = np.array(["train"] * 120 + ["val"] * 40 + ["test"] * 80, dtype=object)
    groups = np.array([f"p{i // 2}" for i in range(n)])
    res = tasks.run_probe(X, Y, splits, classes=["a", "b"], groups=groups, knn_k=None, shots=(), n_boot=20)
    va, te = splits == "val", splits == "test"
    s_val = probe_validation_scores(X, Y, splits, res.info["linear_C"], 2)
    assert s_val.shape == (40, 2)
    add_calibration(res, Y[te], res.details["linear"], groups[te], y_val=Y[va], scores_val=s_val, prefix="linear/")
    m = res.metrics
    assert m["linear/calibration/ece"] == pytest.approx(expected_calibration_error(Y[te], res.details["linear"]))
    for j, name in enumerate(["a", "b"]):  # one threshold per finding, chosen on validation
        t = choose_threshold(Y[va, j], s_val[:, j])
        assert res.info["calibration"]["thresholds"][name] == t
        assert m[f"linear/threshold/{name}/sensitivity"] == pytest.approx(
            recall_score(Y[te, j], res.details["linear"][:, j] >= t))
    rows = pd.DataFrame({"site": np.where(np.arange(n) % 3 == 0, "A", "B")})[te].reset_index(drop=True)
    add_subgroups(res, Y[te], res.details["linear"], groups[te], rows, [("site", None)], min_size=10, prefix="linear/")
    assert set(res.info["subgroups"]["site"]["groups"]) == {"A", "B"}
    rec = json.loads(json.dumps(to_jsonable(res.to_dict())))
    md = res.markdown()
    assert "## Calibration" in md and "## Subgroups by `site`" in md and "| a |" in md
    assert rec["calibration"]["threshold_rule"] == "youden"
