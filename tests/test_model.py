"""The model core: embedders, towers, MAE/MLM, encode, save/load."""
from __future__ import annotations

import math

import pytest
import torch

import medfm
from medfm.errors import CheckpointError, ConfigError, DataError
from medfm.layers.pos_embed import resample_pos_embed
from medfm.models.embedders import DiscreteTokenEmbedder, PatchEmbedND
from medfm.models.masking import mlm_mask, random_masking


def tiny(modalities=None, **extra):
    cfg = {"name": "medfm-tiny", "modalities": modalities or {"toy": {}, "toyb": {"channels": 3}}}
    cfg.update(extra)
    return medfm.create_model(cfg)


def test_encode_is_l2_normalised_and_shaped():
    model = tiny()
    z = model.encode("toy", torch.randn(5, 2, 32))
    assert z.shape == (5, 64)
    assert torch.allclose(z.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert model.forward_features("toy", torch.randn(5, 2, 32)).shape == (5, 4, 64)


@pytest.mark.parametrize("ndim,shape,patch", [(1, (2, 3, 40), (8,)), (2, (2, 3, 16, 24), (4, 8)),
                                              (3, (2, 1, 8, 16, 16), (2, 4, 8))])
def test_patch_targets_match_manual_patches(ndim, shape, patch):
    emb = PatchEmbedND(ndim, shape[1], shape[2:], patch, width=16)
    x = torch.randn(shape)
    t = emb.targets(x)
    grid = [s // p for s, p in zip(shape[2:], patch)]
    assert t.shape == (shape[0], math.prod(grid), math.prod(patch) * shape[1])
    # token k of the grid (row-major) is the patch at that grid position, flattened as (patch..., C)
    k = math.prod(grid) - 2
    pos = []
    rem = k
    for g in reversed(grid):
        pos.append(rem % g)
        rem //= g
    pos = pos[::-1]
    sl = tuple(slice(i * p, (i + 1) * p) for i, p in zip(pos, patch))
    manual = x[(1, slice(None)) + sl]  # (C, *patch)
    manual = manual.permute(*range(1, ndim + 1), 0).reshape(-1)
    assert torch.equal(t[1, k], manual)
    # the convolution sees the same patch: its output equals a linear map of the target
    w = emb.proj.weight.permute(0, *range(2, ndim + 2), 1).reshape(16, -1)
    tok = emb.proj(x).flatten(2).transpose(1, 2)
    assert torch.allclose(tok[1, k], w @ manual + emb.proj.bias, atol=1e-5)


def test_per_channel_tokens_and_targets():
    emb = PatchEmbedND(1, 3, 40, 8, width=16, per_channel=True)
    x = torch.randn(2, 3, 40)
    assert emb(x).shape == (2, 15, 16)
    t = emb.targets(x)
    assert torch.equal(t[0, 5 + 2], x[0, 1, 16:24])  # channel 1, time patch 2


def test_positional_embedding_resamples_for_other_input_sizes():
    model = tiny()
    z = model.encode("toy", torch.randn(2, 2, 64))  # configured length is 32
    assert z.shape == (2, 64) and torch.isfinite(z).all()
    pos = torch.randn(1, 4 * 6, 8)
    same = resample_pos_embed(pos, (4, 6), (4, 6))
    assert same is pos
    up = resample_pos_embed(pos, (4, 6), (8, 12))
    assert up.shape == (1, 96, 8)
    # linear interpolation of a constant field stays constant
    const = torch.ones(1, 10, 3)
    assert torch.allclose(resample_pos_embed(const, (10,), (25,)), torch.ones(1, 25, 3), atol=1e-6)


def test_wrong_input_shape_is_a_data_error():
    model = tiny()
    with pytest.raises(DataError, match="expected input of shape"):
        model.encode("toy", torch.randn(2, 5, 32))
    with pytest.raises(DataError, match="not divisible"):
        model.encode("toy", torch.randn(2, 2, 30))
    with pytest.raises(ConfigError, match="no 'ct' tower"):
        model.encode("ct", torch.randn(2, 2, 32))


def test_random_masking_keeps_the_right_tokens():
    ids_keep, ids_restore, mask = random_masking(4, 20, 0.75)
    assert ids_keep.shape == (4, 5)
    assert torch.equal(mask.sum(1), torch.full((4,), 15.0))
    for b in range(4):
        assert set(ids_keep[b].tolist()) == set((mask[b] == 0).nonzero().flatten().tolist())
    perm = torch.cat([ids_keep, (mask == 1).float().argsort(1, descending=True)[:, :15]], 1)
    assert perm.shape == ids_restore.shape


def test_mae_encoder_sees_only_visible_tokens():
    model = tiny({"toy": {"length": 64}})
    tower = model.towers["toy"]
    seen = []
    handle = tower.trunk.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    out = model.masked_loss("toy", torch.randn(3, 2, 64), mask_ratio=0.75)
    handle.remove()
    n = 64 // 8
    # first trunk call = encoder on visible tokens; the decoder has its own trunk
    assert seen[0] == round(n * 0.25)
    assert out["token_mask"].sum(1).tolist() == [n - round(n * 0.25)] * 3
    assert out["pred"].shape == (3, n, 16)


def test_mae_loss_is_zero_when_decoder_returns_true_patches_and_counts_masked_only():
    model = tiny()
    tower = model.towers["toy"]
    x = torch.randn(2, 2, 32)
    target = tower.embedder.targets(x)
    tower.decoder.forward = lambda latent, ids_restore, grid, has_cls: target.clone()
    assert model.masked_loss("toy", x)["loss"].item() == 0.0
    # corrupt only visible tokens → still zero; corrupt a masked one → positive
    _, token_mask, _, _ = tower.encode_visible(x, 0.5)
    pred = target.clone()
    pred[token_mask == 0] += 5.0
    assert tower.reconstruction_loss(pred, target, token_mask).item() == 0.0
    pred[token_mask == 1] += 1.0
    assert tower.reconstruction_loss(pred, target, token_mask).item() == pytest.approx(1.0)


def test_mlm_masking_rate_and_specials():
    torch.manual_seed(1)
    ids = torch.randint(5, 50, (64, 100))
    ids[:, 0] = 2  # CLS
    ids[:, -10:] = 0  # padding
    attn = (ids != 0).long()
    corrupted, chosen = mlm_mask(ids, attn, mask_ratio=0.5, mask_id=1, vocab_size=50, special_ids=[0, 1, 2])
    assert not chosen[:, 0].any() and not chosen[:, -10:].any()
    rate = chosen.float().sum() / (attn.sum() - 64)
    assert abs(rate.item() - 0.5) < 0.02
    frac_mask = (corrupted[chosen] == 1).float().mean().item()
    assert abs(frac_mask - 0.8) < 0.03
    assert torch.equal(corrupted[~chosen], ids[~chosen])


def test_discrete_token_tower_trains_with_mlm():
    emb = DiscreteTokenEmbedder(width=8, vocab_size=30, max_len=12)
    assert emb(torch.randint(0, 30, (2, 10))).shape == (2, 10, 8)
    with pytest.raises(DataError, match="exceeds max_len"):
        emb(torch.randint(0, 30, (2, 13)))


def test_save_load_roundtrip_identical_outputs(tmp_path):
    model = tiny().eval()
    x = torch.randn(3, 2, 32)
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "config.json").is_file() and (tmp_path / "ckpt" / "model.safetensors").is_file()
    loaded = medfm.load_pretrained(tmp_path / "ckpt").eval()
    assert torch.equal(model.encode("toy", x), loaded.encode("toy", x))
    assert loaded.adapters["toyb"].options["channels"] == 3
    assert torch.equal(model.logit_scale, loaded.logit_scale)
    # shared trunk stays shared after loading
    assert loaded.towers["toy"].trunk is loaded.towers["toyb"].trunk


def test_separate_trunks_by_config():
    model = tiny(trunk={"shared": False})
    assert model.towers["toy"].trunk is not model.towers["toyb"].trunk
    shared = tiny()
    assert shared.towers["toy"].trunk is shared.towers["toyb"].trunk


def test_from_pretrained_rejects_bad_directories(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        medfm.load_pretrained(tmp_path)
    model = tiny()
    model.save_pretrained(tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        medfm.load_pretrained(tmp_path / "c")


def test_grad_checkpointing_gives_same_outputs_and_grads():
    model = tiny().train()
    x = torch.randn(2, 2, 32)
    z1 = model.encode("toy", x)
    g1 = torch.autograd.grad(z1.sum(), model.towers["toy"].trunk.blocks[0].attn.qkv.weight)[0]
    model.set_grad_checkpointing(True)
    z2 = model.encode("toy", x)
    g2 = torch.autograd.grad(z2.sum(), model.towers["toy"].trunk.blocks[0].attn.qkv.weight)[0]
    assert torch.allclose(z1, z2, atol=1e-6) and torch.allclose(g1, g2, atol=1e-6)


def test_padding_mask_makes_padded_tokens_irrelevant():
    emb_cfg = {"type": "vit", "pool": "mean", "embedder": {"type": "tokens", "vocab_size": 20, "max_len": 16},
               "masked": {"kind": "mlm"}}
    model = tiny({"toy": {}}, towers={"toy": emb_cfg}).eval()
    ids = torch.randint(3, 20, (1, 16))
    mask = torch.ones(1, 16, dtype=torch.long)
    mask[:, 10:] = 0
    other = ids.clone()
    other[:, 10:] = torch.randint(3, 20, (1, 6))
    assert torch.allclose(model.encode("toy", ids, mask), model.encode("toy", other, mask), atol=1e-5)
    assert model.masked_loss("toy", ids, mask)["loss"].item() > 0


def test_unknown_preset_and_option_errors():
    with pytest.raises(ConfigError, match="unknown model"):
        medfm.create_model("no-such-model")
    with pytest.raises(ConfigError, match="unknown option"):
        medfm.create_model({"name": "medfm-tiny", "modalities": {"toy": {"bogus": 1}}})
