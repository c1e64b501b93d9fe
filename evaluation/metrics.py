"""Moved to :mod:`medfm.metrics` (the engine's fine-tuning needs it, and the engine never imports
``evaluation/``). This re-export keeps ``medfm.finetune.trainer``'s one import working until that
import is switched to :mod:`medfm.metrics`; then this file goes."""
from medfm.metrics import (_binary_auc, _group_index, bootstrap_replicates, classification_metrics,  # noqa: F401
                           cluster_bootstrap, delong_test, fast_delong, metrics_with_ci, multiclass_metrics,
                           multilabel_metrics)
