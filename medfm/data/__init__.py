"""Data plumbing: manifests, the multimodal dataset, collate, preprocessing cache."""
from .cache import PreprocessCache, content_hash
from .dataset import ManifestDataset, MultiModalCollate, build_label_vocab, move_batch
from .manifest import read_manifest, select_split, validate_manifest

__all__ = ["read_manifest", "select_split", "validate_manifest", "ManifestDataset", "MultiModalCollate",
           "build_label_vocab", "move_batch", "PreprocessCache", "content_hash"]
