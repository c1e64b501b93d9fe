"""Load public ViT checkpoints (timm ViT, MAE, RETFound, OCTCube) from local files into the engine's ``vit`` towers.

The engine's tower (``medfm.models.vit_tower.ViTTower``) holds

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
Everything not loaded is listed in a :class:`KeyReport`; nothing is dropped silently.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from medfm.errors import CheckpointError

WRAPPER_KEYS = ("model", "state_dict", "model_state", "model_state_dict", "module", "encoder")
STRIP_PREFIXES = ("module.", "model.", "encoder.", "backbone.", "visual.", "_orig_mod.")
RENAMES: Sequence[Tuple[str, str]] = (
    (r"^patch_embed\.proj\.", "embedder.proj."),
    (r"^blocks\.", "trunk.blocks."),
    (r"^norm\.", "trunk.norm."),
    (r"^norm_pre\.", "trunk.norm_pre."),
    (r"^fc_norm\.", "trunk.norm."),
)


#: keys of heads used only in pretraining (not part of an encoder checkpoint)
PRETRAINING_HEADS = re.compile(r"^(decoder\.|mlm_head\.|cls\.predictions\.|lm_head\.)")


@dataclass
class KeyReport:
    """What :func:`load_vit_weights` did with every key.

    Attributes:
        loaded: target keys that received a tensor.
        adapted: ``(target key, how)`` for tensors reshaped on the way.
        missing: target keys the checkpoint did not provide (decoder keys listed too).
        unexpected: source keys with no place in the target (MAE decoder, classifier head, ...).
        mismatched: ``(key, source shape, target shape)`` that could not be adapted (not loaded).
        notes: what else the import should tell (a shared trunk, a pooling the engine does differently).
    """

    loaded: List[str] = field(default_factory=list)
    adapted: List[Tuple[str, str]] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def missing_encoder(self) -> List[str]:
        """Missing keys outside pretraining-only heads (MAE decoder, MLM heads): those an encoder checkpoint
        should have had."""
        return [k for k in self.missing if not PRETRAINING_HEADS.match(k)]

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors ({len(self.adapted)} adapted)"]
        lines += [f"  adapted    {k}: {how}" for k, how in self.adapted]
        lines += [f"  missing    {k}" for k in self.missing]
        lines += [f"  unexpected {k}" for k in self.unexpected]
        lines += [f"  mismatched {k}: checkpoint {s} vs model {t}" for k, s, t in self.mismatched]
        lines += [f"  note       {n}" for n in self.notes]
        return "\n".join(lines)


def load_state_dict_file(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Read ``.safetensors`` or a torch file (``weights_only=True``) and unwrap ``{"model": ...}``."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused, corrupt file, ...
        import pickle

        if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e):
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"{p}: refused: this pickle needs code beyond tensors and plain containers to load, and medfm "
                f"only reads torch files with torch.load(weights_only=True) (running a checkpoint's code is how "
                f"a malicious file takes over a machine); re-save its state dict as .safetensors where you "
                f"trust it. torch says: {first}") from e
        raise CheckpointError(f"{p}: cannot read checkpoint: {type(e).__name__}: {e}") from e
    for _ in range(3):
        if isinstance(sd, Mapping) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
            inner = next((sd[k] for k in WRAPPER_KEYS if k in sd and isinstance(sd[k], Mapping)), None)
            if inner is None:
                break
            sd = inner
    if not isinstance(sd, Mapping) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{p}: no tensor state dict found (top-level keys: {list(sd)[:10] if isinstance(sd, Mapping) else type(sd)})")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def strip_prefixes(key: str) -> str:
    """Drop wrapper prefixes (``module.`` from DDP, ``model.``, ``encoder.``, ...)."""
    changed = True
    while changed:
        changed = False
        for pre in STRIP_PREFIXES:
            if key.startswith(pre):
                key, changed = key[len(pre):], True
    return key


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
        from timm.layers import resample_abs_pos_embed

        return resample_abs_pos_embed(pos, list(dst_grid), list(src_grid), num_prefix_tokens=0)
    grid = pos.reshape(1, *src_grid, d).movedim(-1, 1).float()
    mode = {1: "linear", 2: "bicubic", 3: "trilinear"}[nd]
    out = F.interpolate(grid, size=tuple(dst_grid), mode=mode, align_corners=False)
    return out.movedim(1, -1).reshape(1, -1, d).to(pos.dtype)


def inflate_patch_weight(w: torch.Tensor, depth: int) -> torch.Tensor:
    """2D patch projection ``(O, C, ph, pw)`` → 3D ``(O, C, depth, ph, pw)``, I3D average inflation."""
    return w[:, :, None].repeat(1, 1, depth, 1, 1) / depth


def _adapt_patch_weight(w: torch.Tensor, target: torch.Tensor) -> Tuple[Optional[torch.Tensor], str]:
    from timm.models._manipulate import adapt_input_conv

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
            from timm.layers import resample_patch_embed

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
