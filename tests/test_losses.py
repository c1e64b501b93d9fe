"""Objectives against independent references written plainly (loops, float64)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medfm.errors import ConfigError
from medfm.objectives import (
    CompositeObjective,
    build_objective,
    cached_embeddings,
    clip_loss,
    gram_loss,
    gram_volume,
    multimodal_contrastive_loss,
    siglip_loss,
)
from medfm.registry import OBJECTIVES


pytestmark = pytest.mark.usefixtures("one_thread")


def unit(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def leaf(t):
    return t.detach().clone().requires_grad_(True)


# ---------------------------------------------------------------- references

def ref_clip(za, zb, log_scale, labels=None, beta=0.0):
    """Symmetric InfoNCE with optional label-aware soft targets and hard-negative weights, by loops."""
    s = torch.clamp(torch.exp(log_scale), max=100.0)
    B = za.shape[0]

    def positives(i):
        if labels is None or int(labels[i]) < 0:
            return {i}
        return {j for j in range(B) if int(labels[j]) == int(labels[i])}

    def direction(q, k):
        total = 0
        for i in range(B):
            pos = positives(i)
            neg = [j for j in range(B) if j not in pos]
            if neg:
                mean_imp = sum(torch.exp(beta * torch.dot(q[i], k[j])) for j in neg) / len(neg)
            denom = sum(torch.exp(s * torch.dot(q[i], k[j])) for j in pos)
            for j in neg:
                w = torch.exp(beta * torch.dot(q[i], k[j])) / mean_imp
                denom = denom + w * torch.exp(s * torch.dot(q[i], k[j]))
            for p in pos:
                total = total - torch.log(torch.exp(s * torch.dot(q[i], k[p])) / denom) / len(pos)
        return total / B

    return (direction(za, zb) + direction(zb, za)) / 2


def ref_siglip(za, zb, log_scale, bias, labels=None, beta=0.0):
    """Sigmoid loss by loops; with beta, negative terms weighted by exp(beta cos) / mean over negatives."""
    s = torch.clamp(torch.exp(log_scale), max=100.0)
    B = za.shape[0]
    total = 0
    for i in range(B):
        same = [j == i or (labels is not None and int(labels[i]) >= 0 and int(labels[i]) == int(labels[j]))
                for j in range(B)]
        neg = [j for j in range(B) if not same[j]]
        mean_imp = sum(torch.exp(beta * torch.dot(za[i], zb[j])) for j in neg) / max(len(neg), 1)
        for j in range(B):
            y = 1.0 if same[j] else -1.0
            w = 1.0 if same[j] else torch.exp(beta * torch.dot(za[i], zb[j])) / mean_imp
            logit = s * torch.dot(za[i], zb[j]) + bias
            total = total - w * torch.log(1.0 / (1.0 + torch.exp(-y * logit)))
    return total / B


def ref_volume(vectors):
    """Parallelotope volume from a QR decomposition: |prod diag(R)| (independent of the Gram det)."""
    m = np.stack([np.asarray(v, dtype=np.float64) for v in vectors], axis=1)  # (D, k)
    r = np.linalg.qr(m, mode="r")
    return float(abs(np.prod(np.diag(r))))


def ref_gram(mods, log_scale):
    """GRAM loss by loops: volumes via explicit Gram determinants in float64."""
    s = torch.clamp(torch.exp(log_scale), max=100.0)
    B = mods[0].shape[0]

    def vol(i, j):
        vecs = [mods[0][i]] + [m[j] for m in mods[1:]]
        g = torch.stack([torch.stack([torch.dot(u, v) for v in vecs]) for u in vecs])
        return torch.sqrt(torch.clamp(torch.linalg.det(g), min=1e-8))

    V = torch.stack([torch.stack([vol(i, j) for j in range(B)]) for i in range(B)])
    total = 0
    for i in range(B):
        total = total - torch.log_softmax(-s * V[i], 0)[i] - torch.log_softmax(-s * V[:, i], 0)[i]
    return total / (2 * B)


def check_value_and_grads(fn, ref, inputs, rtol=1e-9, atol=1e-10):
    xs = [leaf(t) for t in inputs]
    ys = [leaf(t) for t in inputs]
    out, expected = fn(*xs), ref(*ys)
    torch.testing.assert_close(out, expected, rtol=rtol, atol=atol)
    out.backward()
    expected.backward()
    for x, y in zip(xs, ys):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------- pairwise losses

def test_clip_matches_reference_values_and_grads():
    za, zb = unit(7, 5, seed=1), unit(7, 5, seed=2)
    check_value_and_grads(
        lambda a, b, s: clip_loss(a, b, s), lambda a, b, s: ref_clip(a, b, s),
        [za, zb, torch.tensor(math.log(10.0), dtype=torch.float64)],
    )


def test_clip_equals_torch_cross_entropy_and_clamps_scale():
    za, zb = unit(6, 4, seed=3), unit(6, 4, seed=4)
    log_s = torch.tensor(math.log(1000.0), dtype=torch.float64)  # clamped to 100
    logits = 100.0 * za @ zb.T
    t = torch.arange(6)
    expected = (F.cross_entropy(logits, t) + F.cross_entropy(logits.T, t)) / 2
    torch.testing.assert_close(clip_loss(za, zb, log_s), expected)


def test_clip_perfect_alignment_beats_random():
    z = unit(16, 32, seed=5)
    s = torch.tensor(math.log(50.0), dtype=torch.float64)
    aligned = clip_loss(z, z, s)
    shuffled = clip_loss(z, z[torch.randperm(16, generator=torch.Generator().manual_seed(0))], s)
    assert aligned < 0.1 < math.log(16) * 0.5 < shuffled


def test_siglip_matches_loop():
    za, zb = unit(6, 4, seed=6), unit(6, 4, seed=7)
    check_value_and_grads(
        lambda a, b, s, c: siglip_loss(a, b, s, c), ref_siglip,
        [za, zb, torch.tensor(math.log(10.0), dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)],
    )


def test_siglip_hard_negatives_match_loop_and_beta_zero_is_plain():
    za, zb = unit(6, 4, seed=40), unit(6, 4, seed=41)
    s, bias = torch.tensor(math.log(10.0), dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, -1, 1, 2])
    assert torch.equal(siglip_loss(za, zb, s, bias, hard_negative_beta=0.0), siglip_loss(za, zb, s, bias))
    check_value_and_grads(
        lambda a, b, t, c: siglip_loss(a, b, t, c, labels=labels, hard_negative_beta=3.0),
        lambda a, b, t, c: ref_siglip(a, b, t, c, labels=labels, beta=3.0), [za, zb, s, bias],
    )


def test_label_aware_clip_and_siglip_match_reference():
    za, zb = unit(8, 5, seed=8), unit(8, 5, seed=9)
    labels = torch.tensor([0, 1, 0, 2, -1, 1, -1, 0])
    s = torch.tensor(math.log(5.0), dtype=torch.float64)
    check_value_and_grads(
        lambda a, b, t: clip_loss(a, b, t, labels=labels),
        lambda a, b, t: ref_clip(a, b, t, labels=labels), [za, zb, s],
    )
    bias = torch.tensor(-1.0, dtype=torch.float64)
    check_value_and_grads(
        lambda a, b, t, c: siglip_loss(a, b, t, c, labels=labels),
        lambda a, b, t, c: ref_siglip(a, b, t, c, labels=labels), [za, zb, s, bias],
    )


def test_label_aware_with_unique_labels_equals_clip():
    za, zb = unit(6, 4, seed=10), unit(6, 4, seed=11)
    s = torch.tensor(2.0, dtype=torch.float64)
    plain = clip_loss(za, zb, s)
    torch.testing.assert_close(clip_loss(za, zb, s, labels=torch.arange(6)), plain)
    torch.testing.assert_close(clip_loss(za, zb, s, labels=torch.full((6,), -1)), plain)
    assert not torch.allclose(clip_loss(za, zb, s, labels=torch.zeros(6, dtype=torch.long)), plain)


def test_hard_negative_beta_zero_is_clip_and_beta_matches_reference():
    za, zb = unit(7, 5, seed=12), unit(7, 5, seed=13)
    s = torch.tensor(math.log(10.0), dtype=torch.float64)
    a1, b1, a2, b2 = leaf(za), leaf(zb), leaf(za), leaf(zb)
    l0, lc = clip_loss(a1, b1, s, hard_negative_beta=0.0), clip_loss(a2, b2, s)
    assert torch.equal(l0, lc)
    (l0 + 0).backward()
    lc.backward()
    assert torch.equal(a1.grad, a2.grad) and torch.equal(b1.grad, b2.grad)
    check_value_and_grads(
        lambda a, b, t: clip_loss(a, b, t, hard_negative_beta=2.0),
        lambda a, b, t: ref_clip(a, b, t, beta=2.0), [za, zb, s],
    )
    labels = torch.tensor([0, 0, 1, 1, 2, -1, 2])
    check_value_and_grads(
        lambda a, b, t: clip_loss(a, b, t, labels=labels, hard_negative_beta=1.5),
        lambda a, b, t: ref_clip(a, b, t, labels=labels, beta=1.5), [za, zb, s],
    )
    assert clip_loss(za, zb, s, hard_negative_beta=4.0) > clip_loss(za, zb, s)  # hard negatives weigh more


def test_gradcheck_float64():
    za, zb = leaf(unit(5, 3, seed=14)), leaf(unit(5, 3, seed=15))
    s, b = leaf(torch.tensor(1.5, dtype=torch.float64)), leaf(torch.tensor(-0.5, dtype=torch.float64))
    labels = torch.tensor([0, 1, 0, -1, 1])
    assert torch.autograd.gradcheck(lambda x, y, t: clip_loss(x, y, t, labels=labels, hard_negative_beta=1.0), (za, zb, s))
    assert torch.autograd.gradcheck(lambda x, y, t, c: siglip_loss(x, y, t, c), (za, zb, s, b))
    zc = leaf(unit(5, 3, seed=16))
    assert torch.autograd.gradcheck(lambda x, y, w, t: gram_loss({"a": x, "b": y, "c": w}, None, t)[0], (za, zb, zc, s))


# ---------------------------------------------------------------- GRAM

def test_gram_volume_two_vectors_is_area():
    g = torch.Generator().manual_seed(17)
    a, b = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(5, 6, generator=g, dtype=torch.float64)
    V = gram_volume(a, b[:, None, :])
    for i in range(4):
        for j in range(5):
            cos = torch.dot(a[i], b[j]) / (a[i].norm() * b[j].norm())
            area = a[i].norm() * b[j].norm() * math.sin(math.acos(float(cos)))
            assert abs(float(V[i, j]) - float(area)) < 1e-9


def test_gram_volume_three_vectors_is_parallelepiped():
    g = torch.Generator().manual_seed(18)
    a, bc = torch.randn(3, 3, generator=g, dtype=torch.float64), torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    V = gram_volume(a, bc)
    for i in range(3):
        for j in range(4):
            box = abs(np.linalg.det(np.stack([a[i].numpy(), bc[j, 0].numpy(), bc[j, 1].numpy()])))
            assert abs(float(V[i, j]) - box) < 1e-9
    a7, o7 = torch.randn(3, 7, generator=g, dtype=torch.float64), torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    V7 = gram_volume(a7, o7)  # 4 vectors in 7-D
    for i in range(3):
        for j in range(2):
            assert abs(float(V7[i, j]) - ref_volume([a7[i], *o7[j]])) < 1e-9


def test_gram_loss_matches_reference_values_and_grads():
    mods = [unit(6, 5, seed=s) for s in (19, 20, 21)]
    s = torch.tensor(math.log(10.0), dtype=torch.float64)
    check_value_and_grads(
        lambda a, b, c, t: gram_loss({"a": a, "b": b, "c": c}, None, t, anchor="a")[0],
        lambda a, b, c, t: ref_gram([a, b, c], t), [*mods, s],
    )


def test_gram_uses_only_rows_with_all_modalities():
    mods = {k: unit(8, 5, seed=s) for k, s in (("a", 22), ("b", 23), ("c", 24))}
    present = {k: torch.ones(8, dtype=torch.bool) for k in mods}
    present["c"][[1, 4]] = False
    present["b"][6] = False
    s = torch.tensor(2.0, dtype=torch.float64)
    keep = torch.tensor([0, 2, 3, 5, 7])
    expected = ref_gram([mods[k][keep] for k in ("b", "a", "c")], s)
    got, logs = gram_loss(mods, present, s, anchor="b", modalities=["b", "a", "c"])
    torch.testing.assert_close(got, expected)
    assert logs["n_rows"] == 5


# ---------------------------------------------------------------- several modalities, missing ones

def _three(B=8, seed=30):
    return {k: unit(B, 6, seed=seed + i) for i, k in enumerate(("ct", "text", "ecg"))}


def test_pairs_and_anchored_are_means_of_pair_losses_on_shared_rows():
    emb = _three()
    present = {k: torch.ones(8, dtype=torch.bool) for k in emb}
    present["text"][[0, 3]] = False
    present["ecg"][[5]] = False
    s = torch.tensor(2.5, dtype=torch.float64)

    def pair(a, b):
        keep = present[a] & present[b]
        return ref_clip(emb[a][keep], emb[b][keep], s)

    got, logs = multimodal_contrastive_loss(emb, present, s, mode="pairs")
    expected = [pair(a, b) for a, b in itertools.combinations(["ct", "text", "ecg"], 2)]
    torch.testing.assert_close(got, sum(expected) / 3)
    assert logs["n_pairs"] == 3
    got, _ = multimodal_contrastive_loss(emb, present, s, mode="anchored", anchor="ecg")
    torch.testing.assert_close(got, (pair("ecg", "ct") + pair("ecg", "text")) / 2)


def test_pair_with_fewer_than_two_rows_contributes_nothing():
    emb = {k: leaf(v) for k, v in _three().items()}
    present = {k: torch.ones(8, dtype=torch.bool) for k in emb}
    present["ecg"][:] = False
    present["ecg"][2] = True  # one ecg row: pairs with ecg have < 2 rows
    s = leaf(torch.tensor(2.0, dtype=torch.float64))
    got, logs = multimodal_contrastive_loss(emb, present, s, mode="pairs")
    torch.testing.assert_close(got, ref_clip(emb["ct"].detach(), emb["text"].detach(), s.detach()))
    assert logs["n_pairs"] == 1
    only, _ = multimodal_contrastive_loss({"ct": emb["ct"], "ecg": emb["ecg"]}, present, s)
    assert float(only.detach()) == 0.0
    only.backward()
    assert emb["ct"].grad is not None and torch.all(emb["ct"].grad == 0)
    assert torch.isfinite(s.grad) and float(s.grad) == 0.0
    z, _ = gram_loss(emb, present, s)
    assert float(z.detach()) == 0.0 and z.requires_grad


def test_rows_of_absent_modalities_are_ignored():
    emb = _three()
    present = {k: torch.ones(8, dtype=torch.bool) for k in emb}
    present["text"][[1, 6]] = False
    present["ct"][[2]] = False
    s = torch.tensor(2.0, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0, 2, 2, 0, -1])
    changed = {k: v.clone() for k, v in emb.items()}
    changed["text"][[1, 6]] = unit(2, 6, seed=99)
    changed["ct"][2] = 0.0
    for kind, bias in (("clip", None), ("siglip", torch.tensor(-1.0, dtype=torch.float64))):
        a, _ = multimodal_contrastive_loss(emb, present, s, bias, kind=kind, labels=labels)
        b, _ = multimodal_contrastive_loss(changed, present, s, bias, kind=kind, labels=labels)
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(gram_loss(emb, present, s)[0], gram_loss(changed, present, s)[0])
    # while a present row does matter
    changed["text"][0] = unit(1, 6, seed=98)[0]
    assert not torch.allclose(multimodal_contrastive_loss(emb, present, s)[0],
                              multimodal_contrastive_loss(changed, present, s)[0])


# ---------------------------------------------------------------- objective classes with a fake model

class FakeModel(nn.Module):
    """encode_batch / masked_loss / logit_scale / logit_bias, nothing of the real model."""

    def __init__(self, dims=None, embed_dim=4):
        super().__init__()
        torch.manual_seed(0)
        dims = dims or {"ct": 5, "text": 3}
        self.proj = nn.ModuleDict({k: nn.Linear(d, embed_dim) for k, d in dims.items()})
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-2.0))
        self.embed_dim = embed_dim
        self.encode_calls = 0
        self.masked_calls = []

    def encode_batch(self, batch):
        self.encode_calls += 1
        B = len(batch["id"])
        out = {}
        for mod, inp in batch["inputs"].items():
            z = torch.zeros(B, self.embed_dim)
            z[batch["present"][mod]] = F.normalize(self.proj[mod](inp["x"]), dim=-1)
            out[mod] = z
        return out

    def masked_loss(self, modality, x, mask=None, mask_ratio=None):
        self.masked_calls.append((modality, x.shape[0], mask_ratio))
        return {"loss": (self.proj[modality](x) ** 2).mean() * (mask_ratio or 1.0)}


def fake_batch(B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    present = {"ct": torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool),
               "text": torch.tensor([1, 1, 1, 1, 0, 1], dtype=torch.bool)}
    return {
        "id": [f"s{i}" for i in range(B)],
        "patient_id": [f"p{i}" for i in range(B)],
        "present": present,
        "inputs": {"ct": {"x": torch.randn(int(present["ct"].sum()), 5, generator=g)},
                   "text": {"x": torch.randn(int(present["text"].sum()), 3, generator=g)}},
        "labels": {"dx": torch.tensor([0, 1, 0, -1, 1, 0])},
        "n_skipped": 0,
    }


def test_registered_objectives_match_functions():
    assert {"clip", "siglip", "gram", "masked"} <= set(OBJECTIVES.names())
    model, batch = FakeModel(), fake_batch()
    emb = model.encode_batch(batch)
    for name, kwargs, expected in [
        ("clip", {}, multimodal_contrastive_loss(emb, batch["present"], model.logit_scale)[0]),
        ("siglip", {"label_column": "dx"}, multimodal_contrastive_loss(
            emb, batch["present"], model.logit_scale, model.logit_bias, kind="siglip",
            labels=batch["labels"]["dx"])[0]),
        ("gram", {}, gram_loss(emb, batch["present"], model.logit_scale)[0]),
    ]:
        out = OBJECTIVES.get(name)(**kwargs)(model, batch, {})
        torch.testing.assert_close(out["loss"], expected)
        assert all(isinstance(v, float) for k, v in out.items() if k != "loss")


def test_masked_objective_averages_present_modalities():
    model, batch = FakeModel(), fake_batch()
    out = OBJECTIVES.get("masked")(mask_ratio=0.5)(model, batch, {})
    expected = torch.stack([(model.proj[m](batch["inputs"][m]["x"]) ** 2).mean() * 0.5 for m in ("ct", "text")]).mean()
    torch.testing.assert_close(out["loss"], expected)
    assert sorted(model.masked_calls) == [("ct", 5, 0.5), ("text", 5, 0.5)]
    only = OBJECTIVES.get("masked")(modalities=["text"])(model, batch, {})
    torch.testing.assert_close(only["loss"], (model.proj["text"](batch["inputs"]["text"]["x"]) ** 2).mean())


def test_composite_weights_add_up_and_embeddings_are_computed_once():
    model, batch = FakeModel(), fake_batch()
    cfg = [{"name": "clip", "weight": 1.0, "mode": "pairs"},
           {"name": "siglip", "weight": 0.25, "label_column": "dx"},
           {"name": "masked", "weight": 0.5, "mask_ratio": 0.75}]
    composite = build_objective(cfg)
    assert isinstance(composite, CompositeObjective)
    out = composite(model, batch, {})
    assert model.encode_calls == 1
    parts = [OBJECTIVES.get(c["name"])(**{k: v for k, v in c.items() if k not in ("name", "weight")})(model, batch, {})
             for c in cfg]
    expected = sum(c["weight"] * p["loss"] for c, p in zip(cfg, parts))
    torch.testing.assert_close(out["loss"], expected)
    for c, p in zip(cfg, parts):
        assert out[c["name"]] == pytest.approx(float(p["loss"].detach()))
    out["loss"].backward()
    assert model.proj["ct"].weight.grad is not None and model.logit_bias.grad is not None
    cache = {}
    cached_embeddings(model, batch, cache)
    cached_embeddings(model, batch, cache)
    assert model.encode_calls == 1 + 2 + 1  # composite once, clip + siglip parts, one cached pair


def test_build_objective_rejects_bad_configs():
    with pytest.raises(ConfigError, match="nope"):
        build_objective([{"name": "nope"}])
    with pytest.raises(ConfigError, match="clip"):
        build_objective([{"name": "clip", "temperature": 3}])
    with pytest.raises(ConfigError, match="mode"):
        build_objective({"name": "clip", "mode": "triangles"})
    with pytest.raises(ConfigError, match="weight"):
        build_objective([{"name": "clip", "weight": "heavy"}])
    model, batch = FakeModel(), fake_batch()
    with pytest.raises(ConfigError, match="missing_col"):
        build_objective({"name": "clip", "label_column": "missing_col"})(model, batch, {})
