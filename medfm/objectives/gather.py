"""Gathering features across ranks for contrastive losses (open_clip's local loss).

In a ``torch.distributed`` run every rank holds ``B`` local rows. Contrastive losses
need every other rank's rows as *columns* of the logits, so features are
all-gathered **with gradient** (``torch.distributed.nn.functional.all_gather``,
whose backward sums the column gradients of every rank back onto the owner), while
presence masks and labels are gathered without gradient. Each rank then computes
only its own rows of the logits (local rows × global columns), as open_clip does
with ``local_loss=True, gather_with_grad=True``.

Loss normalisation: a rank's loss is ``sum(local row losses) * world_size / n_global``
so that the mean over ranks (what DDP's gradient averaging optimises) is exactly the
single-process mean over the concatenated batch. Ranks whose batch is smaller (samples
skipped as unreadable) are padded with absent rows to the largest local batch.

Outside a distributed run (or with ``world_size == 1``) everything is the identity.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather

__all__ = [
    "world_info",
    "is_distributed",
    "gather_features",
    "gather_nograd",
    "GlobalView",
    "gather_view",
    "union_names",
]


def world_info() -> Tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    """True when ``torch.distributed`` is initialised with more than one rank."""
    return world_info()[1] > 1


def gather_nograd(t: torch.Tensor) -> torch.Tensor:
    """All-gather ``t`` (``(B, ...)``) without gradient → ``(world_size * B, ...)``.

    Booleans travel as int32 (not every backend reduces/gathers bool) and come back
    as bool. Identity outside a distributed run.
    """
    if not is_distributed():
        return t
    src = t.detach()
    was_bool = src.dtype == torch.bool
    if was_bool:
        src = src.to(torch.int32)
    src = src.contiguous()
    out = [torch.empty_like(src) for _ in range(dist.get_world_size())]
    dist.all_gather(out, src)
    full = torch.cat(out, 0)
    return full.bool() if was_bool else full


def gather_features(
    z: torch.Tensor, present: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """All-gather features with gradient, and their presence mask without.

    Args:
        z: ``(B, D)`` local features.
        present: optional ``(B,)`` bool mask of the rows that hold a real sample.

    Returns:
        ``(z_all (world_size*B, D), present_all (world_size*B,) or None)``, rank-major
        (rank 0's rows first). Both are the inputs themselves outside a distributed run.
    """
    if not is_distributed():
        return z, present
    with warnings.catch_warnings():  # deprecated in favour of a private API; still the public one
        warnings.simplefilter("ignore", FutureWarning)
        z_all = torch.cat(all_gather(z.contiguous()), 0)
    present_all = None if present is None else gather_nograd(present)
    return z_all, present_all


def union_names(names: Iterable[str]) -> List[str]:
    """Union of a list of names over all ranks, in first-seen order (identity when local).

    Used so that every rank gathers the same modalities in the same order even when a
    modality happens to be absent from one rank's batch.
    """
    names = list(dict.fromkeys(names))
    if not is_distributed():
        return names
    gathered: List[Optional[List[str]]] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, names)
    out: Dict[str, None] = {}
    for part in gathered:
        for n in part or []:
            out.setdefault(n, None)
    return list(out)


@dataclass
class GlobalView:
    """Local and gathered embeddings of one step, shared by the pair losses.

    Attributes:
        local: ``{modality: (B, D)}`` this rank's embeddings (rows of the logits).
        full: ``{modality: (W*B, D)}`` gathered with gradient (columns of the logits).
        present: ``{modality: (B,) bool}`` local presence.
        present_full: ``{modality: (W*B,) bool}`` gathered presence.
        labels: optional ``(B,)`` long labels, -1 = unlabelled.
        labels_full: optional ``(W*B,)`` gathered labels.
        offset: global index of this rank's first row (``rank * B``).
        world_size: number of ranks W.
        keys: ``{modality: (B,) long}`` content keys (equal key = identical content, e.g. the
            same normalised report text), -1 = none; only modalities that have keys.
        keys_full: ``{modality: (W*B,) long}`` gathered keys.
    """

    local: Dict[str, torch.Tensor]
    full: Dict[str, torch.Tensor]
    present: Dict[str, torch.Tensor]
    present_full: Dict[str, torch.Tensor]
    labels: Optional[torch.Tensor]
    labels_full: Optional[torch.Tensor]
    offset: int
    world_size: int
    keys: Dict[str, torch.Tensor] = field(default_factory=dict)
    keys_full: Dict[str, torch.Tensor] = field(default_factory=dict)


def gather_view(
    embeddings: Dict[str, torch.Tensor],
    present: Optional[Dict[str, torch.Tensor]] = None,
    labels: Optional[torch.Tensor] = None,
    keys: Optional[Dict[str, torch.Tensor]] = None,
) -> GlobalView:
    """Gather every modality's embeddings (with gradient), presence, labels and content keys once.

    Args:
        embeddings: ``{modality: (B, D)}``; all ranks must pass the same keys in the
            same order and the same ``B``.
        present: ``{modality: (B,) bool}``; a missing entry means all rows present.
        labels: optional ``(B,)`` long, -1 = unlabelled.
        keys: optional ``{modality: (B,) long}`` content keys, -1 = none (see :class:`GlobalView`).
    """
    rank, world = world_info()
    local, full, pres, pres_full = {}, {}, {}, {}
    b_local = next(iter(embeddings.values())).shape[0] if embeddings else 0
    b_max = _max_over_ranks(b_local)
    for name, z in embeddings.items():
        p = None if present is None else present.get(name)
        if p is None:
            p = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
        p = p.to(device=z.device, dtype=torch.bool)
        if p.shape != z.shape[:1]:
            raise ValueError(f"presence mask of {name!r} has shape {tuple(p.shape)}, expected ({z.shape[0]},)")
        if z.shape[0] < b_max:  # a rank that skipped unreadable samples: pad with absent rows
            z = torch.cat([z, z.new_zeros(b_max - z.shape[0], z.shape[1])], 0)
            p = torch.cat([p, p.new_zeros(b_max - p.shape[0])], 0)
        z_all, p_all = gather_features(z, p)
        local[name], full[name], pres[name], pres_full[name] = z, z_all, p, p_all
    labels, labels_full = _gather_ids(labels, embeddings, b_max)
    keys_local, keys_full = {}, {}
    for name in sorted(keys or {}):  # the same order on every rank
        if name in embeddings and keys[name] is not None:
            keys_local[name], keys_full[name] = _gather_ids(keys[name], embeddings, b_max)
    return GlobalView(local, full, pres, pres_full, labels, labels_full, rank * b_max, world,
                      keys_local, keys_full)


def _gather_ids(ids: Optional[torch.Tensor], embeddings: Dict[str, torch.Tensor], b_max: int):
    """``(B,)`` long ids (labels, content keys) padded with -1 to ``b_max`` → ``(local, gathered)``."""
    if ids is None:
        return None, None
    device = next(iter(embeddings.values())).device if embeddings else ids.device
    ids = ids.to(device=device, dtype=torch.long)
    if ids.shape[0] < b_max:
        ids = torch.cat([ids, ids.new_full((b_max - ids.shape[0],), -1)], 0)
    return ids, gather_nograd(ids)


def _max_over_ranks(n: int) -> int:
    """Largest local batch size over ranks (``n`` itself outside a distributed run)."""
    if not is_distributed():
        return n
    t = torch.tensor([n], dtype=torch.long)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())
