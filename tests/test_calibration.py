"""Calibration: ECE and reliability bins against a hand computation, temperature scaling, thresholds
and the rates at them against scikit-learn, patient-bootstrap intervals."""
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_score, recall_score, roc_curve

from medfm.errors import UsageError
from medfm.evaluation import calibration as cal


def test_reliability_bins_and_ece_by_hand():
    # 4 bins of width 0.25; confidences 0.1 (bin 0), 0.3 & 0.5 (bin 1: (0.25, 0.5]), 0.9 (bin 3), 0.75 (bin 2)
    conf = np.array([0.1, 0.3, 0.5, 0.9, 0.75])
    correct = np.array([0, 1, 1, 1, 0])
    r = cal.reliability_bins(conf, correct, n_bins=4)
    assert r["count"].tolist() == [1, 2, 1, 1]
    assert r["confidence"][1] == pytest.approx(0.4) and r["accuracy"][1] == pytest.approx(1.0)
    assert r["accuracy"][2] == 0.0 and r["confidence"][2] == pytest.approx(0.75)
    # ECE = 1/5 |0 - .1| + 2/5 |1 - .4| + 1/5 |0 - .75| + 1/5 |1 - .9|
    hand = (0.1 + 2 * 0.6 + 0.75 + 0.1) / 5
    assert cal.ece(conf, correct, n_bins=4) == pytest.approx(hand)


def test_top_label_ece_of_multiclass_scores_by_hand():
    y = np.array([0, 1, 2, 2])
    s = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]])
    conf, correct = cal.confidence_correct(y, s)
    assert conf.tolist() == [0.7, 0.6, 0.8, 0.6] and correct.tolist() == [1, 0, 1, 1]
    # 10 bins: 0.6 twice in (0.5, 0.6] → acc 0.5, conf 0.6; 0.7 alone; 0.8 alone
    hand = (2 * abs(0.5 - 0.6) + abs(1 - 0.7) + abs(1 - 0.8)) / 4
    assert cal.expected_calibration_error(y, s, n_bins=10) == pytest.approx(hand)


def test_multilabel_ece_ignores_missing_labels():
    y = np.array([[1, -1], [0, 1]])
    s = np.array([[0.9, 0.5], [0.2, 0.6]])
    conf, correct = cal.confidence_correct(y, s)
    assert sorted(conf.tolist()) == [0.2, 0.6, 0.9] and correct.sum() == 2


def test_temperature_recovers_overconfidence_and_keeps_argmax():
    rng = np.random.default_rng(0)
    n, c = 4000, 3
    logits = rng.normal(size=(n, c)) * 2
    p_true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(c, p=p) for p in p_true])
    over = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)  # 3× too confident
    t = cal.fit_temperature(y[:2000], over[:2000])
    assert t == pytest.approx(3.0, rel=0.15)
    scaled = cal.apply_temperature(y, over, t)
    assert (scaled.argmax(1) == over.argmax(1)).all()
    assert cal.expected_calibration_error(y[2000:], scaled[2000:]) < 0.5 * cal.expected_calibration_error(y[2000:], over[2000:])


def test_thresholds_and_rates_match_scikit_learn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = np.clip(0.3 * y + rng.normal(0.35, 0.2, 300), 0, 1)
    fpr, tpr, thr = roc_curve(y, s)
    t = cal.choose_threshold(y, s, "youden")
    assert (tpr - fpr)[list(thr).index(t)] == pytest.approx(np.max(tpr - fpr))
    t90 = cal.choose_threshold(y, s, "sensitivity:0.9")
    assert recall_score(y, s >= t90) >= 0.9
    assert recall_score(y, s > t90) < 0.9  # the highest threshold that reaches the target
    r = cal.binary_rates(y, s, t)
    pred = (s >= t).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert r["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert r["specificity"] == pytest.approx(recall_score(1 - y, 1 - pred))
    assert r["ppv"] == pytest.approx(precision_score(y, pred))
    assert r["npv"] == pytest.approx(tn / (tn + fn))
    with pytest.raises(UsageError):
        cal.parse_threshold_rule("sensitivity:1.5")


def test_run_calibration_two_classes_uses_the_positive_class_and_gives_intervals():
    rng = np.random.default_rng(2)
    n = 400
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(0, 0.2, n), 0.01, 0.99)
    s = np.stack([1 - p1, p1], 1)
    groups = np.repeat(np.arange(n // 2), 2)
    res = cal.run_calibration(y[200:], s[200:], groups[200:], ["neg", "pos"], y_val=y[:200], scores_val=s[:200],
                              n_boot=100)
    m, ci = res["metrics"], res["ci"]
    assert set(res["info"]["thresholds"]) == {"pos"}
    t = res["info"]["thresholds"]["pos"]
    assert t == cal.choose_threshold(y[:200], p1[:200])
    assert m["threshold/pos/sensitivity"] == pytest.approx(recall_score(y[200:], p1[200:] >= t))
    for k in ("calibration/ece", "calibration/ece_scaled", "threshold/pos/ppv"):
        assert ci[k][0] <= m[k] <= ci[k][1]
    assert res["scaled"].shape == s[200:].shape
    no_val = cal.run_calibration(y, s, groups, ["neg", "pos"], n_boot=0)
    assert "calibration/ece_scaled" not in no_val["metrics"] and "note" in no_val["info"]


def test_reliability_plot_is_written(tmp_path):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 60)
    s = rng.dirichlet(np.ones(3), 60)
    res = cal.run_calibration(y, s, np.arange(60), ["a", "b", "c"], y_val=y, scores_val=s, n_boot=0)
    p = cal.plot_reliability(res["bins"], tmp_path / "rel.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
