"""Public ViT checkpoints (timm ViT, MAE, RETFound, OCTCube; MONAI and open_clip by their names)
mapped onto the engine's ``vit`` tower (:mod:`medfm.models.vit_tower`), which holds

    embedder.proj.{weight,bias}    Conv2d/Conv3d patch projection
    embedder.pos_embed             (1, N, D) over the patch grid, no class-token slot
    cls_token                      (1, 1, D) only with pool="cls"
    trunk.blocks.{i}.*             timm ``Block`` (norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2)
    trunk.norm.*                   final LayerNorm
    decoder.*                      MAE decoder (not in encoder checkpoints)

Source keys are renamed (``patch_embed.proj`` → ``embedder.proj``, ``blocks`` →
``trunk.blocks``, ``norm``/``fc_norm`` → ``trunk.norm``), and shapes are adapted:
positional embeddings are resampled to the target grid (class-token position
folded into ``cls_token`` or dropped), 2D patch projections are inflated to 3D
tubelets (I3D: repeated over depth and divided by the depth, so a volume constant
along depth gives the 2D response), input channels adapted with timm's
``adapt_input_conv``, patch sizes resampled with timm's ``resample_patch_embed``.
MONAI's ``ViT`` names (:func:`monai_to_timm`) and open_clip's transformer blocks
(:func:`openclip_blocks`, :func:`openclip_visual_to_timm`, :func:`load_openclip_text`) are
mapped to timm's first. Everything not loaded is listed in a
:class:`~medfm.models.state_dicts.KeyReport`; nothing is dropped silently. Which file layout a
checkpoint is in, and what it fixes about the architecture, is the formats' business
(:mod:`medfm.modalities.weight_formats`).
"""
from __future__ import annotations

import math
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models._manipulate import adapt_input_conv  # the towers are timm blocks: timm is loaded with them

from medfm.errors import CheckpointError

from .state_dicts import KeyReport, load_state_dict_file, strip_prefixes

RENAMES: Sequence[Tuple[str, str]] = (
    (r"^patch_embed\.proj\.", "embedder.proj."),
    (r"^blocks\.", "trunk.blocks."),
    (r"^norm\.", "trunk.norm."),
    (r"^norm_pre\.", "trunk.norm_pre."),
    (r"^fc_norm\.", "trunk.norm."),
)


def rename_key(key: str) -> str:
    """Source (timm/MAE/RETFound/OCTCube) key → engine tower key; unknown keys are returned unchanged."""
    key = strip_prefixes(key)
    for pat, rep in RENAMES:
        key = re.sub(pat, rep, key)
    return key


def _grid_from_tokens(n: int, ndim: int) -> Optional[Tuple[int, ...]]:
    root = round(n ** (1.0 / ndim))
    return (root,) * ndim if root ** ndim == n else None


def resample_grid_pos(pos: torch.Tensor, src_grid: Sequence[int], dst_grid: Sequence[int]) -> torch.Tensor:
    """``(1, prod(src_grid), D)`` → ``(1, prod(dst_grid), D)``: timm bicubic (2D) / trilinear (3D) / linear (1D)."""
    if tuple(src_grid) == tuple(dst_grid):
        return pos
    d = pos.shape[-1]
    nd = len(src_grid)
    if nd == 2:  # timm's resampling (bicubic, antialiased), as timm does for its own checkpoints
        return resample_abs_pos_embed(pos, list(dst_grid), list(src_grid), num_prefix_tokens=0)
    grid = pos.reshape(1, *src_grid, d).movedim(-1, 1).float()
    mode = {1: "linear", 2: "bicubic", 3: "trilinear"}[nd]
    out = F.interpolate(grid, size=tuple(dst_grid), mode=mode, align_corners=False)
    return out.movedim(1, -1).reshape(1, -1, d).to(pos.dtype)


def inflate_patch_weight(w: torch.Tensor, depth: int) -> torch.Tensor:
    """2D patch projection ``(O, C, ph, pw)`` → 3D ``(O, C, depth, ph, pw)``, I3D average inflation."""
    return w[:, :, None].repeat(1, 1, depth, 1, 1) / depth


def _adapt_patch_weight(w: torch.Tensor, target: torch.Tensor) -> Tuple[Optional[torch.Tensor], str]:
    how = []
    if w.shape[1] != target.shape[1]:
        how.append(f"in_chans {w.shape[1]}→{target.shape[1]} (timm adapt_input_conv: "
                   + ("channel weights summed)" if target.shape[1] == 1 else "channel weights tiled)"))
        w = adapt_input_conv(target.shape[1], w)
    if w.ndim == 4 and target.ndim == 5:
        w = inflate_patch_weight(w, target.shape[2])
        how.append(f"inflated 2D→3D over {target.shape[2]} frames")
    if w.ndim != target.ndim or w.shape[:2] != target.shape[:2]:
        return None, ""
    if w.shape[2:] != target.shape[2:]:
        if w.ndim == 4:
            w = resample_patch_embed(w, list(target.shape[2:]))
        else:
            scale = math.prod(w.shape[2:]) / math.prod(target.shape[2:])
            w = F.interpolate(w.float(), size=tuple(target.shape[2:]), mode="trilinear", align_corners=False) * scale
        how.append(f"patch {tuple(target.shape[2:])}")
    return w.to(target.dtype), ", ".join(how)


def _adapt_pos(src: torch.Tensor, target: torch.Tensor, tgt_grid: Sequence[int], n_prefix: int,
               src_grid: Optional[Sequence[int]]) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], str]:
    """Returns (new pos (1, N, D), class-token position (1, 1, D) or None, description)."""
    if src.ndim == 2:
        src = src[None]
    if src.shape[-1] != target.shape[-1]:
        return None, None, ""
    prefix = src[:, :n_prefix] if n_prefix else None
    body = src[:, n_prefix:]
    nd = len(tgt_grid)
    if src_grid is None:
        src_grid = _grid_from_tokens(body.shape[1], nd) or _grid_from_tokens(body.shape[1], 2)
    if src_grid is None or math.prod(src_grid) != body.shape[1]:
        return None, None, ""
    how = (f"grid {tuple(src_grid)}→{tuple(tgt_grid)}" if tuple(src_grid) != tuple(tgt_grid)
           else f"grid {tuple(src_grid)} unchanged")
    if n_prefix:
        how += f", {n_prefix} class-token position(s) split off"
    if len(src_grid) == 2 and nd == 3:  # 2D checkpoint into a 3D tower: spatial pos + the target's depth profile
        spatial = resample_grid_pos(body, src_grid, tgt_grid[1:]).reshape(1, 1, -1, target.shape[-1])
        depth_prof = target.detach().reshape(1, tgt_grid[0], -1, target.shape[-1]).mean(2, keepdim=True)
        new = (spatial + depth_prof).reshape(1, -1, target.shape[-1])
        how += " (2D spatial + depth profile of the model's init)"
    elif len(src_grid) == nd:
        new = resample_grid_pos(body, src_grid, tgt_grid)
    else:
        return None, None, ""
    return new.to(target.dtype), prefix, how


def _separable_pos(sd: Dict[str, torch.Tensor]) -> Optional[Tuple[torch.Tensor, Tuple[int, int, int], int]]:
    """OCTCube/VideoMAE-style ``pos_embed_spatial (1, HW, D)`` + ``pos_embed_temporal (1, T, D)`` → full grid."""
    sp, tp = sd.get("pos_embed_spatial"), sd.get("pos_embed_temporal")
    if sp is None or tp is None:
        return None
    g = _grid_from_tokens(sp.shape[1], 2)
    if g is None:
        return None
    full = (tp.reshape(1, -1, 1, tp.shape[-1]) + sp.reshape(1, 1, -1, sp.shape[-1])).reshape(1, -1, sp.shape[-1])
    n_prefix = 0
    cls_pos = sd.get("pos_embed_class")
    if cls_pos is not None:
        full, n_prefix = torch.cat([cls_pos.reshape(1, 1, -1), full], 1), 1
    return full, (tp.shape[1], g[0], g[1]), n_prefix


#: target biases that may be absent from a source layer built without bias (open_clip ``conv1``,
#: MONAI ``qkv_bias=False``): filled with zeros, which is the same function
_ZERO_BIAS = re.compile(r"^(embedder\.proj|trunk\.blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2))\.bias$")


def load_vit_weights(target: nn.Module, checkpoint: Union[str, os.PathLike, Mapping[str, torch.Tensor]], *,
                     modality: Optional[str] = None, strict: bool = False,
                     pos_prefix: Optional[int] = None) -> KeyReport:
    """Load a ViT-family checkpoint into an engine ``vit`` tower.

    Args:
        target: a ``ViTTower`` or a ``MultiModalModel`` (then ``modality`` names the tower).
        checkpoint: a ``.safetensors`` / ``.pth`` path (read with ``weights_only=True``) or a state dict.
        strict: raise :class:`CheckpointError` when an encoder key is missing, unexpected
            source keys other than MAE-decoder/head keys remain, or a shape cannot be adapted.
        pos_prefix: tokens before the patch grid in ``pos_embed`` (default: 1 per class/distillation
            token in the checkpoint; 0 for MONAI, whose class token has no position).

    Returns:
        :class:`KeyReport` listing loaded, adapted, missing, unexpected and mismatched keys.
    """
    tower = target.tower(modality) if modality is not None and hasattr(target, "tower") else target
    if not hasattr(tower, "embedder") or not hasattr(tower, "trunk"):
        raise CheckpointError(f"target {type(tower).__name__} is not a vit tower (needs .embedder and .trunk)")
    sd = dict(checkpoint) if isinstance(checkpoint, Mapping) else load_state_dict_file(checkpoint)
    sd = {strip_prefixes(k): v for k, v in sd.items()}  # unexpected keys are reported without wrapper prefixes
    tgt = tower.state_dict()
    report = KeyReport()
    new: Dict[str, torch.Tensor] = {}
    tgt_grid = tuple(tower.embedder.grid)
    has_cls_target = "cls_token" in tgt

    sep = _separable_pos(sd)
    n_prefix = 1 if "cls_token" in sd else 0
    n_prefix += 1 if "dist_token" in sd else 0
    if pos_prefix is not None:
        n_prefix = int(pos_prefix)
    pos_src, pos_grid = sd.get("pos_embed"), None
    consumed = set()
    if sep is not None:
        pos_src, pos_grid, n_prefix = sep
        consumed |= {"pos_embed_spatial", "pos_embed_temporal", "pos_embed_class"}
    elif pos_src is not None:
        consumed.add("pos_embed")
    cls_pos = None
    if pos_src is not None and "embedder.pos_embed" in tgt:
        pos, cls_pos, how = _adapt_pos(pos_src, tgt["embedder.pos_embed"], tgt_grid, n_prefix, pos_grid)
        if pos is None:
            report.mismatched.append(("embedder.pos_embed", tuple(pos_src.shape), tuple(tgt["embedder.pos_embed"].shape)))
        else:
            new["embedder.pos_embed"] = pos
            if tuple(pos_src.shape) != tuple(pos.shape):
                report.adapted.append(("embedder.pos_embed", how))

    for key, val in sd.items():
        if key in consumed:
            continue
        name = rename_key(key)
        if name == "cls_token":
            if has_cls_target:
                cls = val.reshape(tgt["cls_token"].shape).clone()
                if cls_pos is not None:
                    cls = cls + cls_pos[:, :1].reshape(cls.shape)
                    report.adapted.append(("cls_token", "class-token position embedding added"))
                new[name] = cls
            else:
                report.unexpected.append(f"{key} (model pools by mean: no class token)")
            continue
        if name not in tgt:
            if name.startswith("trunk.norm.") and "fc_norm" in key and any(k.startswith("norm.") for k in sd):
                report.unexpected.append(f"{key} (classifier-side norm; encoder norm loaded from 'norm')")
            else:
                report.unexpected.append(key)
            continue
        if name in new:
            report.unexpected.append(f"{key} (another key already loaded into {name})")
            continue
        t = tgt[name]
        if name == "embedder.proj.weight" and tuple(val.shape) != tuple(t.shape):
            w, how = _adapt_patch_weight(val, t)
            if w is None:
                report.mismatched.append((name, tuple(val.shape), tuple(t.shape)))
                continue
            new[name] = w
            report.adapted.append((name, how))
            continue
        if tuple(val.shape) != tuple(t.shape):
            report.mismatched.append((name, tuple(val.shape), tuple(t.shape)))
            continue
        new[name] = val.to(t.dtype)
    for name, t in tgt.items():
        if name not in new and _ZERO_BIAS.match(name) and name[:-len("bias")] + "weight" in new:
            new[name] = torch.zeros_like(t)
            report.adapted.append((name, "zeros (the source layer has no bias)"))
    tower.load_state_dict(new, strict=False)
    report.loaded = sorted(new)
    report.missing = sorted(k for k in tgt if k not in new)
    if strict:
        bad_unexp = [k for k in report.unexpected if not re.match(r"^(decoder|mask_token|head|fc_norm|norm_pix)", rename_key(k.split(" ")[0]))]
        if report.missing_encoder or report.mismatched or bad_unexp:
            raise CheckpointError("checkpoint does not fit the tower:\n" + str(report))
    return report


# ----------------------------------------------------------------------- MONAI
_MONAI_RENAMES = (
    (r"^patch_embedding\.patch_embeddings\.", "patch_embed.proj."),
    (r"^patch_embedding\.position_embeddings$", "pos_embed"),
    (r"^blocks\.(\d+)\.mlp\.linear1\.", r"blocks.\1.mlp.fc1."),
    (r"^blocks\.(\d+)\.mlp\.linear2\.", r"blocks.\1.mlp.fc2."),
    (r"^blocks\.(\d+)\.attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^classification_head\.", "head."),
)


def monai_to_timm(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """MONAI ``ViT`` key names → timm ``VisionTransformer`` names (same tensors, same qkv layout)."""
    out = {}
    for k, v in sd.items():
        k = strip_prefixes(k)
        for pat, rep in _MONAI_RENAMES:
            k = re.sub(pat, rep, k)
        out[k] = v
    return out


# ------------------------------------------------------------------- open_clip
_OC_BLOCK = (
    (r"\.ln_1\.", ".norm1."), (r"\.ln_2\.", ".norm2."), (r"\.attn\.in_proj_weight$", ".attn.qkv.weight"),
    (r"\.attn\.in_proj_bias$", ".attn.qkv.bias"), (r"\.attn\.out_proj\.", ".attn.proj."),
    (r"\.mlp\.c_fc\.", ".mlp.fc1."), (r"\.mlp\.c_proj\.", ".mlp.fc2."),
)


def openclip_blocks(sd: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """``{prefix}transformer.resblocks.i.*`` → timm ``blocks.i.*``."""
    out = {}
    pre = prefix + "transformer.resblocks."
    for k, v in sd.items():
        if k.startswith(pre):
            name = "blocks." + k[len(pre):]
            for pat, rep in _OC_BLOCK:
                name = re.sub(pat, rep, name)
            out[name] = v
    return out


def openclip_depth(sd, prefix) -> int:
    pre = prefix + "transformer.resblocks."
    idx = {int(k[len(pre):].split(".")[0]) for k in sd if k.startswith(pre)}
    return max(idx) + 1 if idx else 0


def openclip_visual_to_timm(sd: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """open_clip's ViT image tower in timm names (``conv1`` → patch projection, ``class_embedding`` →
    class token, ``ln_pre``/``ln_post`` → pre-norm/final norm, ``resblocks`` → blocks), and the
    ``visual.*`` keys that have no place in a tower (other than the projection)."""
    src = {"patch_embed.proj.weight": sd["visual.conv1.weight"],
           "cls_token": sd["visual.class_embedding"].reshape(1, 1, -1),
           "pos_embed": sd["visual.positional_embedding"][None]}
    for a, b in (("visual.ln_pre.", "norm_pre."), ("visual.ln_post.", "norm.")):
        for s in ("weight", "bias"):
            if a + s in sd:
                src[b + s] = sd[a + s]
    src.update(openclip_blocks(sd, "visual."))
    other = [k for k in sd if k.startswith("visual.") and not k.startswith(
        ("visual.conv1", "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre",
         "visual.ln_post", "visual.transformer.resblocks", "visual.proj"))]
    return src, other


def load_openclip_text(tower: nn.Module, sd: Mapping[str, torch.Tensor], where: str, modality: str) -> KeyReport:
    """open_clip's text transformer into a ``vit`` tower with a token embedder: ``token_embedding``
    + ``positional_embedding`` (truncated to the tower's context) → embedder, causal blocks →
    trunk, ``ln_final`` → the trunk's final norm; biases the source has none of are zero-filled."""
    emb = tower.embedder
    if not hasattr(emb, "embed"):
        raise CheckpointError(f"open_clip init: the {modality!r} tower has no token embedder")
    report = KeyReport()
    new: Dict[str, torch.Tensor] = {}
    tgt = tower.state_dict()
    tok, pos = sd["token_embedding.weight"], sd["positional_embedding"]
    if tok.shape != tgt["embedder.embed.weight"].shape:
        raise CheckpointError(
            f"{where}: vocabulary of {tok.shape[0]} tokens × {tok.shape[1]}, but the {modality!r} "
            f"tower has {tuple(tgt['embedder.embed.weight'].shape)}; the tokenizer must match the checkpoint")
    new["embedder.embed.weight"] = tok
    if pos.shape[0] < tgt["embedder.pos_embed"].shape[1]:
        raise CheckpointError(f"{where}: context length {pos.shape[0]} is shorter than the tower's "
                              f"{tgt['embedder.pos_embed'].shape[1]}")
    new["embedder.pos_embed"] = pos[None, :tgt["embedder.pos_embed"].shape[1]]
    if pos.shape[0] != tgt["embedder.pos_embed"].shape[1]:
        report.adapted.append(("embedder.pos_embed", f"context {pos.shape[0]} truncated to "
                                                     f"{tgt['embedder.pos_embed'].shape[1]}"))
    for name, v in openclip_blocks(sd, "").items():
        new["trunk." + name] = v
    for s in ("weight", "bias"):
        new["trunk.norm." + s] = sd["ln_final." + s]
    bad = [(k, tuple(v.shape), tuple(tgt[k].shape)) for k, v in new.items() if k in tgt and v.shape != tgt[k].shape]
    if bad:
        report.mismatched += bad
        new = {k: v for k, v in new.items() if k in tgt and v.shape == tgt[k].shape}
    report.unexpected += [k for k in new if k not in tgt]
    new = {k: v for k, v in new.items() if k in tgt}
    for name, t in tgt.items():
        if name not in new and re.match(r"^trunk\.blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc[12])\.bias$", name) \
                and name[:-4] + "weight" in new:
            new[name] = torch.zeros_like(t)
            report.adapted.append((name, "zeros (the source layer has no bias)"))
    tower.load_state_dict(new, strict=False)
    report.loaded = sorted(new)
    report.missing = sorted(k for k in tgt if k not in new)
    return report


def note_shared_trunk(model, modality: str, report: KeyReport) -> None:
    """A note when the tower's trunk is shared with other towers (they now hold these weights too)."""
    tower = model.tower(modality)
    trunk = getattr(tower, "trunk", None)
    others = [m for m in model.modalities if m != modality and getattr(model.tower(m), "trunk", None) is trunk]
    if trunk is not None and others:
        report.notes.append(f"the trunk is shared with {', '.join(others)}: those towers now use these weights too "
                            "(set model.trunk.shared: false to keep them apart)")
