"""Data plumbing: manifests, the multimodal dataset, collate, preprocessing cache.

Names are imported on first use (:mod:`medfm.lazy`): ``medfm.data.columns`` needs no pandas or torch.
"""
from medfm.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".cache": ["PreprocessCache", "content_hash"],
    ".dataset": ["ManifestDataset", "MultiModalCollate", "build_label_vocab", "manifest_loader", "move_batch"],
    ".manifest": ["read_manifest", "select_split", "validate_manifest"],
})

__all__ = ["read_manifest", "select_split", "validate_manifest", "ManifestDataset", "MultiModalCollate",
           "build_label_vocab", "manifest_loader", "move_batch", "PreprocessCache", "content_hash"]
