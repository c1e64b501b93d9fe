"""Evaluation of medfm models: embeddings, zero-shot, retrieval and indexes, probes, metrics, reports.

Submodules (import what you need; none imports torch-heavy engine parts at import time
except :mod:`.embed`; the names below are imported on first use, :mod:`medfm.lazy`):

* :mod:`medfm.metrics` (the engine's) — classification metrics, patient cluster bootstrap CIs, DeLong.
* :mod:`.retrieval` — Recall@k / MRR / mAP / ranks with many-to-many ground truth; BIOSCAN accuracy.
* :mod:`.index` — persistent faiss index with the building model's fingerprint.
* :mod:`.zeroshot` — prompt sets, prompt ensembling, multi-class / multi-label / prototype zero-shot.
* :mod:`.probes` — linear probe, kNN, few-shot, patient-grouped splits with a leakage check.
* :mod:`.embed` — embed a manifest with a model; the on-disk embeddings format.
* :mod:`.report` — ``results.json`` + ``report.md`` + PNG plots.
* :mod:`.tasks` — the protocols on embeddings (:func:`run_retrieval`, :func:`run_zeroshot`,
  :func:`run_probe`, :func:`run_bioscan` → :class:`TaskResult`) that the CLI, the demo and the
  benchmarks call.
* :mod:`.runs` — the manifest-level evaluations the CLI commands run (model + manifest → files).
"""
from medfm.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".index": ["VectorIndex", "model_fingerprint"],
    "medfm.metrics": ["classification_metrics", "cluster_bootstrap", "delong_test", "metrics_with_ci"],
    ".retrieval": ["bioscan_accuracy", "cross_modal_retrieval", "ground_truth", "retrieval_metrics"],
    ".tasks": ["Baseline", "TaskResult", "run_bioscan", "run_probe", "run_retrieval", "run_zeroshot"],
})
