"""Manifests, the dataset's skip-and-count path, collate, the preprocessing cache."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from medfm.data import (ManifestDataset, MultiModalCollate, PreprocessCache, manifest_loader, read_manifest,
                        select_split)
from medfm.errors import DataError
from medfm.registry import get_modality
from toy_cohort import write_toy_manifest


def adapters():
    return {"toy": get_modality("toy"), "toyb": get_modality("toyb", channels=3)}


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_manifest_formats_read_the_same(tmp_path, suffix):
    ref = read_manifest(write_toy_manifest(tmp_path / "m.csv", n=10))
    df = read_manifest(write_toy_manifest(tmp_path / f"x{suffix}", n=10))
    assert list(df["id"]) == list(ref["id"])
    assert list(df["toy"]) == list(ref["toy"])
    assert df["toyb"].iloc[0] is None and df["toyb"].iloc[1] is not None
    assert df.attrs["base_dir"] == str(tmp_path)
    assert len(df.attrs["sha256"]) == 64


def test_manifest_errors_name_the_problem(tmp_path):
    p = tmp_path / "m.csv"
    pd.DataFrame({"id": ["a", "a"], "patient_id": ["p", "q"]}).to_csv(p, index=False)
    with pytest.raises(DataError, match="duplicate sample id"):
        read_manifest(p)
    pd.DataFrame({"id": ["a"]}).to_csv(p, index=False)
    with pytest.raises(DataError, match=r"required column\(s\) missing: \['patient_id'\]"):
        read_manifest(p)
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="unknown manifest format"):
        read_manifest(p.rename(tmp_path / "m.xyz"))


def test_split_selection(tmp_path):
    df = read_manifest(write_toy_manifest(tmp_path / "m.csv", n=16))
    assert set(select_split(df, "test")["id"]) == {"s000", "s008"}


def test_dataset_skips_and_counts_unreadable_samples(tmp_path, caplog):
    df = read_manifest(write_toy_manifest(tmp_path / "m.csv", n=12, corrupt=("s003", "s007")))
    ds = ManifestDataset(df, adapters(), label_columns=["label"])
    items = [ds[i] for i in range(len(ds))]
    batch = MultiModalCollate(ds.adapters)(items)
    # s003 and s007: both cells unreadable → skipped; s000 lacks toyb only
    assert batch["n_skipped"] == 2
    assert "s003" not in batch["id"] and "s007" not in batch["id"]
    assert {e[0] for e in batch["errors"]} == {"s003", "s007"}
    assert all("s003" in msg or "s007" in msg for _, _, msg in batch["errors"])
    assert "skipping toy of sample s003" in caplog.text
    present = batch["present"]["toyb"]
    assert present.tolist() == [sid not in ("s000", "s005", "s010") for sid in batch["id"]]
    assert batch["inputs"]["toyb"]["x"].shape == (int(present.sum()), 3, 32)
    assert batch["inputs"]["toy"]["x"].shape == (10, 2, 32)
    assert batch["labels"]["label"].tolist() == [int(df.set_index("id").loc[s, "label"][-1]) for s in batch["id"]]


def test_a_sample_with_nothing_readable_is_a_skipped_record_not_none(tmp_path):
    # what the ManifestDataset docstring promises: {"skipped": True, "id", "errors", "flags"}
    df = read_manifest(write_toy_manifest(tmp_path / "m.csv", n=12, corrupt=("s003",)))
    item = ManifestDataset(df, adapters())[3]
    assert item is not None and item["skipped"] is True and item["id"] == "s003"
    assert set(item) == {"skipped", "id", "errors", "flags"} and {e[1] for e in item["errors"]} == {"toy", "toyb"}


def test_manifest_loader_batches_as_a_hand_built_loader_and_keeps_the_global_rng(tmp_path):
    df = read_manifest(write_toy_manifest(tmp_path / "m.csv", n=12, corrupt=("s003",)))
    ds = ManifestDataset(df, adapters())
    hand = list(torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=MultiModalCollate(ds.adapters)))
    built = list(manifest_loader(ds, batch_size=5))
    assert [b["id"] for b in built] == [b["id"] for b in hand] and [b["n_skipped"] for b in built] == [1, 0, 0]
    assert all(torch.equal(a["inputs"]["toy"]["x"], b["inputs"]["toy"]["x"]) for a, b in zip(built, hand))
    # shuffled with its own seeded generator: the same order for the same seed, and the global RNG untouched
    torch.manual_seed(123)
    before = torch.get_rng_state()
    orders = [[i for b in manifest_loader(ds, batch_size=4, shuffle=True, seed=s) for i in b["id"]] for s in (7, 7, 8)]
    assert torch.equal(torch.get_rng_state(), before)
    assert orders[0] == orders[1] != orders[2] and sorted(orders[0]) == sorted(i for b in hand for i in b["id"])
    # a subset of adapters collates only those modalities
    only_toy = next(iter(manifest_loader(ds, batch_size=12, adapters={"toy": ds.adapters["toy"]})))
    assert set(only_toy["inputs"]) == {"toy"}


def test_train_augmentation_depends_on_epoch_and_index_only(tmp_path):
    df = read_manifest(write_toy_manifest(tmp_path / "m.csv", n=4))
    ds = ManifestDataset(df, adapters(), train=True, seed=3)
    a = ds[1]["inputs"]["toy"]["x"]
    assert torch.equal(a, ds[1]["inputs"]["toy"]["x"])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[1]["inputs"]["toy"]["x"])
    assert not torch.equal(a, ManifestDataset(df, adapters())[1]["inputs"]["toy"]["x"])


def test_preprocess_cache_hits_and_matches(tmp_path):
    df = read_manifest(write_toy_manifest(tmp_path / "m.csv", n=6))
    plain = ManifestDataset(df, adapters())
    cached = ManifestDataset(df, adapters(), cache_dir=tmp_path / "cache")
    first = [cached[i] for i in range(6)]
    assert cached.cache.misses == 10 and cached.cache.hits == 0  # 6 toy + 4 toyb (s000, s005 lack it)
    again = [cached[i] for i in range(6)]
    assert cached.cache.hits == 10
    for i in range(6):
        assert torch.equal(again[i]["inputs"]["toy"]["x"], plain[i]["inputs"]["toy"]["x"])
        assert torch.equal(first[i]["inputs"]["toy"]["x"], again[i]["inputs"]["toy"]["x"])
    # another preprocessing option is another key
    other = ManifestDataset(df, {"toy": get_modality("toy", noise=0.5)}, cache_dir=tmp_path / "cache")
    other[0]
    assert other.cache.misses == 1


def test_cache_key_follows_file_content(tmp_path):
    cache = PreprocessCache(tmp_path / "c")
    f = tmp_path / "a.bin"
    f.write_bytes(b"one")
    k1 = cache.key(str(f), {"o": 1})
    f.write_bytes(b"two")
    assert cache.key(str(f), {"o": 1}) != k1
    assert cache.key(str(f), {"o": 2}) != cache.key(str(f), {"o": 1})


def test_cached_training_items_still_get_fresh_augmentation(tmp_path):
    """With a cache, the eval-mode tensor is stored and the adapter's ``augment`` re-draws views each epoch."""
    import numpy as np
    from PIL import Image

    img = (np.add.outer(np.arange(48), np.arange(64)) % 256).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    df = pd.DataFrame({"id": ["a"], "patient_id": ["p"], "xray": ["a.png"]})
    from medfm.data import validate_manifest

    df = validate_manifest(df, base_dir=tmp_path)
    xray = get_modality("xray", size=32, hflip=1.0, jitter=0.2)
    plain_eval = ManifestDataset(df, {"xray": xray})[0]["inputs"]["xray"]["x"]
    ds = ManifestDataset(df, {"xray": xray}, train=True, cache_dir=tmp_path / "c", seed=1)
    e0 = ds[0]["inputs"]["xray"]["x"]
    ds.set_epoch(1)
    e1 = ds[0]["inputs"]["xray"]["x"]
    assert ds.cache.misses == 1 and ds.cache.hits == 1
    assert not torch.equal(e0, e1)
    # hflip=1.0: every view is the flipped eval tensor up to an affine intensity jitter
    flipped = torch.flip(plain_eval, [2])
    for view in (e0, e1):
        a = torch.linalg.lstsq(torch.stack([flipped.flatten(), torch.ones(flipped.numel())], 1),
                               view.flatten()[:, None]).solution
        recon = flipped * a[0] + a[1]
        assert torch.allclose(recon, view, atol=1e-4)


def test_cache_key_covers_a_records_sibling_files(tmp_path):
    """A WFDB header's signal file is part of the record: editing it makes a new cache key."""
    cache = PreprocessCache(tmp_path / "c")
    (tmp_path / "r1.hea").write_text("r1 1 500 10\n")
    (tmp_path / "r1.mat").write_bytes(b"\x00\x01")
    (tmp_path / "r10.mat").write_bytes(b"other record")
    k1 = cache.key(str(tmp_path / "r1.hea"), {})
    (tmp_path / "r10.mat").write_bytes(b"changed other record")
    assert cache.key(str(tmp_path / "r1.hea"), {}) == k1
    (tmp_path / "r1.mat").write_bytes(b"\x00\x02")
    assert cache.key(str(tmp_path / "r1.hea"), {}) != k1
