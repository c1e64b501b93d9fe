"""Real-data benchmark suite: ``python -m benchmarks.real --data ../shared/data --out DIR [--quick]``.

One module per block (:mod:`.dna`, :mod:`.ecg`, :mod:`.imaging`, :mod:`.reports`), the
non-learned baselines in :mod:`.baselines` and the ``results.json`` + Markdown writer in
:mod:`.report`. This module holds what the blocks share: the fixed budgets of the full
and quick runs, a thin wrapper over :class:`medfm.train.Trainer` that also keeps the
random initialisation (the "random-weights encoder" baseline), and bootstrap intervals.

Every block's ``run(data_dir, out_dir, budget, seed) -> dict`` returns
``{"metrics": {...}, "ci": {...}, "baselines": [...], "tables": {...}, "plots": [...],
"notes": [...], "budget": {...}, "timing_s": {...}}``.
"""
from __future__ import annotations

import copy
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from medfm.evaluation.vectors import l2_normalize

SEED = 0

#: fixed budgets: full run (≤ 30 min on a 2-core CPU) and the CI's quick run.
BUDGETS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "full": {
        "dna": {"n_species": None, "n_per_species": None, "n_unseen": 20, "n_test_per_species": 10,
                "n_val_per_species": 5, "ssl_steps": 90, "curve_steps": [10, 30, 60], "clibd_steps": 150,
                "batch_size": 64, "n_boot": 500},
        "ecg": {"max_per_source": None, "mae_steps": 450, "batch_size": 8, "top_codes": 4, "n_boot": 1000,
                "curve_points": 3},
        "imaging": {"ct_size": [32, 128, 128]},
        "reports": {"n_reports": None, "clip_steps": 150, "batch_size": 64, "max_length": 64, "lr": 1e-3,
                    "n_boot": 1000},
    },
    "quick": {
        "dna": {"n_species": 8, "n_per_species": 10, "n_unseen": 2, "n_test_per_species": 3,
                "n_val_per_species": 2, "ssl_steps": 2, "curve_steps": [], "clibd_steps": 2, "batch_size": 16,
                "n_boot": 50},
        "ecg": {"max_per_source": 6, "mae_steps": 1, "batch_size": 8, "top_codes": 3, "n_boot": 50},
        "imaging": {"ct_size": [16, 64, 64]},
        "reports": {"n_reports": 200, "clip_steps": 2, "batch_size": 16, "max_length": 48, "lr": 1e-3, "n_boot": 50},
    },
}

#: the small trunk every learned tower of the suite uses (CPU budget), fixed a priori.
TRUNK = {"embed_dim": 128, "trunk": {"width": 128, "depth": 4, "heads": 4, "shared": False},
         "decoder": {"width": 64, "depth": 1, "heads": 2}}
#: the small Hugging Face BERT used for text towers.
TEXT_HF = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256}
#: the findings ↔ impression towers: no dropout (a few hundred steps on 3k pairs; 20 % of CPU time was dropout)
TEXT_HF_NODROP = {**TEXT_HF, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


class Stopwatch:
    """``with sw("name"): ...`` records wall seconds per name in ``sw.times``."""

    def __init__(self):
        self.times: Dict[str, float] = {}

    def __call__(self, name: str):
        sw = self

        class _Ctx:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                sw.times[name] = round(sw.times.get(name, 0.0) + time.perf_counter() - self.t0, 2)
        return _Ctx()


def pretrain(run_config: Dict[str, Any], manifest: pd.DataFrame, out_dir: Path,
             init: Optional[Callable[[Any], None]] = None,
             checkpoint_every: int = 0) -> Tuple[Any, Any, Dict[str, Any]]:
    """Train with :class:`medfm.train.Trainer` on ``manifest`` (written to ``out_dir/manifest.csv``).

    Args:
        run_config: a run config (``model``, ``data``, ``objectives``, ``optim``, ``train``);
            ``data.manifest`` is filled in here.
        init: called with the freshly built model before training (e.g. to copy in a
            pretrained tower); the random-weights copy is taken *after* it.
        checkpoint_every: keep a checkpoint every N steps (``info["checkpoints"]``: step → dir),
            e.g. for a learning curve; 0 = none.
    Returns:
        ``(trained model in eval mode, the same model at initialisation in eval mode,
        {"steps", "seconds", "loss_first", "loss_last", "losses": [...]})``.
    """
    from medfm.train import Trainer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "manifest.csv"
    manifest.to_csv(path, index=False)
    cfg = copy.deepcopy(run_config)
    cfg.setdefault("data", {})["manifest"] = str(path)
    cfg.setdefault("train", {}).update({"progress": False, "tensorboard": False, "checkpoint_every": int(checkpoint_every),
                                        "keep_checkpoints": 1000 if checkpoint_every else 1, "device": "cpu",
                                        "precision": "fp32"})
    run_dir = out_dir / "run"
    if run_dir.exists():  # a previous run's checkpoints would make the Trainer resume (and skip training)
        shutil.rmtree(run_dir)
    trainer = Trainer(cfg, run_dir)
    if init is not None:
        init(trainer.model)
    initial = copy.deepcopy(trainer.model).eval()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit()
    seconds = time.perf_counter() - t0
    losses = []
    mpath = out_dir / "run" / "metrics.jsonl"
    if mpath.is_file():
        losses = [float(json.loads(line).get("loss", float("nan"))) for line in mpath.read_text().splitlines() if line]
    info = {"steps": trainer.step, "seconds": round(seconds, 1), "losses": losses,
            "loss_first": losses[0] if losses else None, "loss_last": float(np.mean(losses[-10:])) if losses else None,
            "n_train_rows": len(trainer.df), "n_skipped": trainer.n_skipped,
            "checkpoints": {int(p.name.split("_")[1]): str(p) for p in sorted((run_dir / "checkpoints").glob("step_*"))}}
    return trainer.model.eval(), initial, info


def accuracy_ci(y_true: Sequence[Any], y_pred: Sequence[Any], *, n_boot: int, seed: int = SEED,
                groups: Optional[Sequence[Any]] = None) -> Dict[str, Any]:
    """Top-1 accuracy with a percentile bootstrap 95% interval (resampling rows or ``groups``).

    Uses :func:`medfm.metrics.cluster_bootstrap`. Returns ``{"value", "ci", "n"}``.
    """
    from medfm.metrics import cluster_bootstrap

    y = np.asarray([str(v) for v in y_true])
    p = np.asarray([str(v) for v in y_pred])
    if y.size == 0:
        return {"value": float("nan"), "ci": [float("nan"), float("nan")], "n": 0}
    correct = (y == p).astype(np.float64)
    fn = lambda yy, ss: {"acc": float(np.mean(ss))}  # noqa: E731  (ss = correctness of the drawn rows)
    ci = cluster_bootstrap(fn, correct, correct, groups, n_boot=n_boot, seed=seed)["acc"] if n_boot else (np.nan, np.nan)
    return {"value": float(correct.mean()), "ci": [float(ci[0]), float(ci[1])], "n": int(y.size)}


def cosine_1nn(query: np.ndarray, keys: np.ndarray, block: int = 2048) -> np.ndarray:
    """Index of each query's nearest key by cosine similarity: ``(Q, D), (K, D) -> (Q,)``."""
    q, k = l2_normalize(query, axis=1), l2_normalize(keys, axis=1)
    out = np.empty(len(q), dtype=np.int64)
    for s in range(0, len(q), block):
        out[s:s + block] = (q[s:s + block] @ k.T).argmax(1)
    return out


def verdict(ours: Mapping[str, Any], base: Mapping[str, Any]) -> str:
    """``wins`` / ``loses`` when the 95% intervals are disjoint, else ``tie (CIs overlap)``."""
    a, b = ours.get("value"), base.get("value")
    if a is None or b is None or not np.isfinite(a) or not np.isfinite(b):
        return "n/a"
    (alo, ahi), (blo, bhi) = ours.get("ci", [np.nan] * 2), base.get("ci", [np.nan] * 2)
    if np.isfinite([alo, ahi, blo, bhi]).all():
        if alo > bhi:
            return "wins"
        if ahi < blo:
            return "loses"
        return "tie (CIs overlap; " + ("higher" if a > b else "lower" if a < b else "equal") + ")"
    return "higher" if a > b else "lower" if a < b else "equal"


def block_result(**kw: Any) -> Dict[str, Any]:
    """An empty block record with the standard keys, updated with ``kw``."""
    rec: Dict[str, Any] = {"metrics": {}, "baselines": [], "tables": {}, "plots": [], "notes": [], "budget": {},
                           "timing_s": {}, "comparisons": []}
    rec.update(kw)
    return rec
