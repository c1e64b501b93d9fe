"""Import of timm ViT / MAE / RETFound / OCTCube-style checkpoints into the engine's vit towers."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import medfm
import medfm.modalities.fundus  # noqa: F401
import medfm.modalities.oct  # noqa: F401
import medfm.modalities.xray  # noqa: F401
from medfm.errors import CheckpointError
from medfm.models.vit_weights import load_state_dict_file, load_vit_weights

WIDTH, DEPTH, HEADS = 64, 2, 2


def timm_vit(img_size=32, in_chans=3, **kw):
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=img_size, in_chans=in_chans,
                          embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, num_classes=3, **kw)
    with torch.no_grad():  # non-trivial values everywhere (timm zero-inits some)
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return m.eval()


def engine(modalities, pool=None):
    cfg = {"name": "medfm-tiny", "trunk": {"width": WIDTH, "depth": DEPTH, "heads": HEADS}, "modalities": modalities}
    if pool:
        cfg["towers"] = {name: {"pool": pool} for name in modalities}
    torch.manual_seed(1)
    return medfm.create_model(cfg).eval()


def test_timm_vit_gives_the_same_features():
    src = timm_vit(img_size=32, in_chans=3)
    model = engine({"fundus": {"size": 32}}, pool="cls")
    report = load_vit_weights(model, src.state_dict(), modality="fundus")
    assert not report.mismatched and not report.missing_encoder
    assert set(report.unexpected) == {"head.weight", "head.bias"}
    assert all(k.startswith("decoder.") for k in report.missing)
    for mod in model.tower("fundus").modules():  # the engine's LayerNorm eps (1e-5) vs timm ViT's (1e-6)
        if isinstance(mod, torch.nn.LayerNorm):
            mod.eps = 1e-6
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = src.forward_features(x)  # (B, 1 + N, D) after the final norm
        out = model.forward_features("fundus", x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_pos_embed_resampled_like_timm():
    from timm.layers import resample_abs_pos_embed

    src = timm_vit(img_size=32)
    model = engine({"fundus": {"size": 64}})
    report = load_vit_weights(model, src.state_dict(), modality="fundus")
    assert any(k == "embedder.pos_embed" for k, _ in report.adapted)
    ref = resample_abs_pos_embed(src.pos_embed, (4, 4), num_prefix_tokens=1)[:, 1:]
    torch.testing.assert_close(model.tower("fundus").embedder.pos_embed.data, ref, atol=1e-5, rtol=1e-5)
    assert "cls_token" in " ".join(report.unexpected)  # mean pooling: the class token is reported, not loaded


def test_rgb_to_gray_patch_embedding():
    src = timm_vit(img_size=32, in_chans=3)
    model = engine({"xray": {"size": 32}})
    load_vit_weights(model, src.state_dict(), modality="xray")
    gray = torch.randn(1, 1, 32, 32)
    proj = model.tower("xray").embedder.proj
    with torch.no_grad():  # gray through the adapted conv == gray replicated to RGB through the source conv
        torch.testing.assert_close(proj(gray), src.patch_embed.proj(gray.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-4)


def test_2d_to_3d_inflation_preserves_constant_volumes():
    src = timm_vit(img_size=32, in_chans=3)
    model = engine({"oct": {"frames": 6, "size": [32, 32], "patch_size": [3, 16, 16]}})
    report = load_vit_weights(model, src.state_dict(), modality="oct")
    assert any("inflated" in how for _, how in report.adapted)
    emb = model.tower("oct").embedder
    assert emb.pos_embed.shape == (1, 2 * 2 * 2, WIDTH)
    sl = torch.randn(1, 1, 32, 32)
    vol = sl[:, :, None].repeat(1, 1, 6, 1, 1)
    w2 = src.patch_embed.proj.weight.sum(1, keepdim=True)  # RGB → gray: sum of channel weights
    with torch.no_grad():
        ref = F.conv2d(sl, w2, src.patch_embed.proj.bias, stride=16)  # (1, D, 2, 2)
        out = emb.proj(vol)  # (1, D, 2, 2, 2)
    torch.testing.assert_close(out[:, :, 0], ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[:, :, 1], ref, atol=1e-5, rtol=1e-4)


def test_mae_checkpoint_file_with_wrapper_and_prefix(tmp_path):
    src = timm_vit(img_size=32, in_chans=3)
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    sd["module.mask_token"] = torch.zeros(1, 1, 32)
    sd["module.decoder_embed.weight"] = torch.zeros(32, WIDTH)
    torch.save({"model": sd, "epoch": 3}, tmp_path / "mae.pth")
    save_file({k[len("module."):]: v.contiguous() for k, v in sd.items()}, str(tmp_path / "mae.safetensors"))
    a = engine({"fundus": {"size": 32}}, pool="cls")
    b = engine({"fundus": {"size": 32}}, pool="cls")
    ra = load_vit_weights(a, tmp_path / "mae.pth", modality="fundus")
    rb = load_vit_weights(b, tmp_path / "mae.safetensors", modality="fundus")
    assert "decoder_embed.weight" in ra.unexpected and "decoder_embed.weight" in rb.unexpected
    assert "mask_token" in ra.unexpected
    assert ra.loaded == rb.loaded
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        if not k.startswith("towers.fundus.decoder"):
            torch.testing.assert_close(v, w)
    assert "unexpected" in str(ra) and "missing" in str(ra)


def test_octcube_separable_pos_embed():
    model = engine({"oct": {"frames": 6, "size": [32, 32], "patch_size": [3, 16, 16]}})
    tower = model.tower("oct")
    sd = {k: v.clone() for k, v in tower.state_dict().items() if k.startswith("trunk.")}
    sd = {k.replace("trunk.", "", 1): v for k, v in sd.items()}
    torch.manual_seed(3)
    spatial, temporal = torch.randn(1, 4, WIDTH), torch.randn(1, 2, WIDTH)
    sd.update({"pos_embed_spatial": spatial, "pos_embed_temporal": temporal,
               "patch_embed.proj.weight": torch.randn(WIDTH, 1, 3, 16, 16), "patch_embed.proj.bias": torch.randn(WIDTH)})
    report = load_vit_weights(model, sd, modality="oct", strict=True)
    assert not report.unexpected and not report.mismatched
    pos = tower.embedder.pos_embed.data.reshape(2, 4, WIDTH)
    for t in range(2):
        for s in range(4):
            torch.testing.assert_close(pos[t, s], temporal[0, t] + spatial[0, s])


def test_strict_rejects_a_wrong_width(tmp_path):
    torch.manual_seed(0)
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, embed_dim=96, depth=DEPTH,
                              num_heads=HEADS, num_classes=0)
    model = engine({"fundus": {"size": 32}})
    before = model.tower("fundus").embedder.proj.weight.detach().clone()
    report = load_vit_weights(model, other.state_dict(), modality="fundus")
    assert ("embedder.proj.weight", (96, 3, 16, 16), (WIDTH, 3, 16, 16)) in report.mismatched
    torch.testing.assert_close(model.tower("fundus").embedder.proj.weight.detach(), before)  # not loaded
    with pytest.raises(CheckpointError, match="mismatched"):
        load_vit_weights(model, other.state_dict(), modality="fundus", strict=True)


def test_unsafe_or_missing_checkpoint_files(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_state_dict_file(tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict_file(tmp_path / "none.safetensors")
