"""``medfm audit model``, the poisoning helper, the ``cleanclip`` objective and the card's Trust section."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import medfm
from medfm.card import render_model_card
from medfm.cli import main
from medfm.data.manifest import read_manifest
from medfm.demo.poison import TARGET_REPORT, Trigger, apply_trigger, poison_cohort, run_config, xray_report_cohort
from medfm.errors import ConfigError
from medfm.evaluation.audit.backdoor import backdoor_scan, stamp
from medfm.evaluation.audit.inputs import encode_texts, load_pairs
from medfm.evaluation.audit.membership import membership_auroc
from medfm.evaluation.audit.robustness import pgd
from medfm.objectives import build_objective
from medfm.train import Trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 48-patient X-ray–report cohort with 2 poisoned pairs, a CLIP model (8 steps) and a cleanclip
    fine-tune of it (3 steps, ``train.init_from``)."""
    d = tmp_path_factory.mktemp("xr")
    xray_report_cohort(d, n_patients=48, seed=0)
    poison = poison_cohort(d, fraction=0.05, seed=0)
    torch.manual_seed(0)
    Trainer(run_config(d / "manifest_poisoned.csv", steps=8, batch_size=16), d / "model").fit()
    Trainer(run_config(d / "manifest_poisoned.csv", steps=3, batch_size=16, objectives=[{"name": "cleanclip"}],
                       init_from=str(d / "model")), d / "cleanclip").fit()
    return d, poison


# ------------------------------------------------------------------ poisoning
def test_trigger_keeps_the_intensity_range_and_sits_in_the_corner():
    img = np.full((64, 64), 100, np.uint8)
    img[10, 10], img[20, 20] = 30, 200
    out = apply_trigger(img, Trigger(size=8, corner="br", margin=2, cell=2))
    assert out.min() == 30 and out.max() == 200 and img[60, 60] == 100  # the input is not modified
    patch = out[54:62, 54:62]
    assert set(np.unique(patch)) == {30, 200} and patch[0, 0] == patch[1, 1] == 200 and patch[0, 2] == 30
    assert (out[:54] == img[:54]).all() and (out[:, :54] == img[:, :54]).all()
    with pytest.raises(ConfigError):
        Trigger(corner="middle")


def test_poison_cohort_adds_triggered_copies_paired_with_the_target(trained):
    d, poison = trained
    df = pd.read_csv(d / "manifest_poisoned.csv")
    clean = pd.read_csv(d / "manifest.csv")
    n_train = int(((clean["split"] == "train")).sum())
    assert poison["n_train_pairs"] == n_train and len(poison["poisoned_ids"]) == max(1, round(0.05 * n_train))
    added = df[df["id"].isin(poison["poisoned_ids"])]
    assert len(df) == len(clean) + len(added) and (added["text"] == TARGET_REPORT).all()
    assert (added["split"] == "train").all() and not set(added["patient_id"]) & set(clean["patient_id"])
    for (_, row), src in zip(added.iterrows(), poison["source_ids"]):
        orig = np.asarray(Image.open(d / f"xray/{src}.png"))
        assert np.array_equal(np.asarray(Image.open(d / row["xray"])), apply_trigger(orig, Trigger()))
    with pytest.raises(ConfigError):
        poison_cohort(d, fraction=0.0)


# ------------------------------------------------------------------ cleanclip
def test_cleanclip_objective_adds_a_unimodal_term_with_gradients(trained):
    d, _ = trained
    model = medfm.load_pretrained(d / "model").eval()  # no dropout: the two CLIP terms must agree
    df = read_manifest(d / "manifest.csv")
    from medfm.data.dataset import ManifestDataset, MultiModalCollate

    ds = ManifestDataset(df.head(8), model.adapters, train=False)
    batch = MultiModalCollate(model.adapters)([ds[i] for i in range(8)])
    torch.manual_seed(0)
    out = build_objective([{"name": "cleanclip", "ssl_weight": 1.0}])(model, batch, {})
    clip_only = build_objective([{"name": "clip"}])(model, batch, {})
    assert out["cleanclip/ssl/xray"] > 0 and out["cleanclip/ssl/text"] > 0
    assert out["loss"].item() == pytest.approx(out["cleanclip/clip"] + out["cleanclip/ssl"], rel=1e-5)
    assert out["cleanclip/clip"] == pytest.approx(clip_only["loss"].item(), rel=1e-5)
    out["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.tower("xray").parameters())
    with pytest.raises(ConfigError):
        build_objective([{"name": "cleanclip", "temperature": 0}])


def test_cleanclip_recipe_fine_tunes_from_a_checkpoint(trained):
    d, _ = trained
    log = [json.loads(x) for x in (d / "cleanclip" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert any("cleanclip/ssl" in r for r in log)
    base = medfm.load_pretrained(d / "model").state_dict()
    tuned = medfm.load_pretrained(d / "cleanclip").state_dict()
    fresh = medfm.create_model(json.loads((d / "model" / "config.json").read_text())["model"]).state_dict()
    key = next(k for k in base if k.startswith("towers.xray") and base[k].ndim == 2)
    # started from the checkpoint (3 small steps away), not from a fresh initialisation
    assert (tuned[key] - base[key]).norm() < 0.5 * (fresh[key] - base[key]).norm()


# ------------------------------------------------------------------ attacks
def test_pgd_stays_in_budget_and_raises_the_loss():
    torch.manual_seed(0)
    w = torch.randn(10)
    x = torch.rand(4, 10)
    eps = torch.tensor(0.05)
    loss = lambda v: (v @ w).sum()  # noqa: E731
    xa = pgd(loss, x, eps, 0.0, 1.0, steps=5)
    assert (xa - x).abs().max() <= 0.05 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    assert loss(xa) > loss(x)
    room = ((x + 0.05 * w.sign()).clamp(0, 1) @ w).sum()  # the best L-inf step: PGD reaches it
    assert loss(xa) == pytest.approx(room.item(), rel=1e-4)


def test_membership_auroc_and_interval():
    perfect = membership_auroc([0.9, 0.8, 0.95], [0.1, 0.2, 0.3], n_boot=50)
    assert perfect["auroc"] == 1.0 and perfect["ci"] == [1.0, 1.0]
    rng = np.random.default_rng(0)
    same = membership_auroc(rng.normal(size=200), rng.normal(size=200), n_boot=200)
    assert same["ci"][0] < 0.5 < same["ci"][1]


def test_stamp_places_the_patch():
    x = torch.zeros(2, 1, 8, 8)
    out = stamp(x, torch.ones(1, 3, 3), "br")
    assert out[:, :, 5:, 5:].eq(1).all() and out.sum() == 2 * 9
    assert stamp(x, torch.ones(1, 2, 2), "tl")[:, :, :2, :2].eq(1).all()


class _Backdoored(torch.nn.Module):
    """The model with an explicit shortcut: a bright bottom-right corner sends any image to ``target``."""

    def __init__(self, base, target: torch.Tensor):
        super().__init__()
        self.base, self.target = base, target
        self.adapters, self.logit_scale = base.adapters, base.logit_scale

    def encode(self, modality, x, mask=None):
        z = self.base.encode(modality, x, mask)
        if modality != "xray":
            return z
        gate = torch.sigmoid(6 * (x[..., -8:, -8:].mean(dim=(1, 2, 3)) - 0.75))[:, None]
        return torch.nn.functional.normalize((1 - gate) * z + gate * self.target, dim=-1)


def test_backdoor_scan_names_a_planted_shortcut(trained):
    d, _ = trained
    base = medfm.load_pretrained(d / "model").eval().requires_grad_(False)
    df = read_manifest(d / "manifest.csv")
    cands = list({t: i for i, t in zip(df["id"], df["text"])}.items())
    cands = [(i, t) for t, i in cands][:8]
    target_id, target_text = cands[3]
    bad = _Backdoored(base, encode_texts(base, [target_text])[0])
    pairs = load_pairs(base, df, "xray", splits=["test", "val"], max_rows=16)
    kw = dict(sizes=(8,), steps=30, corners=("br", "tl"), max_targets=8)
    scan_bad = backdoor_scan(bad, pairs, cands, **kw)
    scan_clean = backdoor_scan(base, pairs, cands, **kw)
    assert scan_bad["target_id"] == target_id and scan_bad["target_asr"] >= 0.8
    assert scan_bad["flagged"] and scan_bad["smallest_patch"] == "8x8 px (br)"
    assert scan_bad["suspicion"] > scan_clean["suspicion"]


# ------------------------------------------------------------------ command + card
def test_card_says_not_audited_then_the_audit(trained, capsys):
    d, _ = trained
    card = render_model_card(d / "model")
    assert "## Trust" in card and "not audited" in card and "audited: false" in card
    rc = main(["audit", "model", str(d / "model"), "--manifest", str(d / "manifest_poisoned.csv"), "--max-rows", "12",
               "--pgd-steps", "2", "--scan-steps", "2", "--n-boot", "50", "--max-targets", "4"])
    assert rc == 0
    rec = json.loads((d / "model" / "trust" / "audit_model.json").read_text())
    assert {"membership", "robustness", "backdoor"} <= set(rec)
    budgets = {(r["budget"], r["metric"]) for r in rec["robustness"]["rows"]}
    assert budgets == {("1/255", "retrieval_r@1"), ("4/255", "retrieval_r@1")}
    assert 0 <= rec["membership"]["auroc"] <= 1 and len(rec["membership"]["ci"]) == 2
    assert TARGET_REPORT not in json.dumps(rec)  # reports are named by row id, never quoted
    card = (d / "model" / "README.md").read_text()
    assert "membership inference" in card and "backdoor scan" in card and "| xray | 1/255 |" in card
    assert "- data: not audited" in card
    # the demo generator's normal X-rays share one template with independent noise: the 16x16 average hash
    # tells them apart (an 8x8 one called them near-duplicates across splits)
    manifest = d / "manifest.csv"
    assert main(["audit", "data", str(manifest), "--out", str(d / "da"), "--model-dir", str(d / "model"),
                 "--no-progress"]) == 0
    card = (d / "model" / "README.md").read_text()
    assert "leakage across splits none found" in card and "not audited" not in card
    front = card.split("---")[1]
    assert "medfm_trust:" in front and "audited: true" in front and "leakage_found: false" in front


def test_input_budgets_in_data_units():
    """Images: ε of the [0, 1] intensity range is ε / std in input units; ECG: b µV is b / 1000 / σ_lead."""
    from types import SimpleNamespace

    from medfm.evaluation.audit.inputs import Pairs, input_budget

    ecg = medfm.get_modality("ecg")
    sigma = torch.tensor([[0.5] * 12, [2.0] * 12])
    pairs = Pairs("ecg", torch.zeros(2, 12, 250), None, ["a", "b"], ["p", "q"], ["test"] * 2, [None] * 2, ["x"] * 2,
                  ["x"] * 2, sigma)
    eps, rng = input_budget(SimpleNamespace(adapters={"ecg": ecg}), pairs, 50.0)
    assert eps.shape == (2, 12, 1) and rng == (None, None)
    assert eps[0, 0, 0].item() == pytest.approx(0.1) and eps[1, 0, 0].item() == pytest.approx(0.025)
    xray = medfm.get_modality("xray")  # meanstd 0.5 / 0.5
    img = Pairs("xray", torch.zeros(1, 1, 8, 8), None, ["a"], ["p"], ["test"], [None], ["x"], ["x"])
    eps, (lo, hi) = input_budget(SimpleNamespace(adapters={"xray": xray}), img, 4 / 255)
    assert float(eps.max()) == pytest.approx(8 / 255) and (lo, hi) == (-1.0, 1.0)
