"""Shared test fixtures: a tiny registered modality and helpers to find real data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medfm.errors import DataError
from medfm.modality import ModalityAdapter, Record
from medfm.registry import MODALITIES, register_modality

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """Path under ``../shared/data``; skips the test when the folder is absent (a user's machine)."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not found at {p} (../shared/data is only present on the team's machines)")
    return p


class ToySignal(ModalityAdapter):
    """Test-only modality: a 1D multichannel signal, given inline as ``"c0v0 c0v1 ...;c1v0 ..."``
    or as a ``.npy`` file of shape ``(C, T)``."""

    name = "toy"
    input_kind = "value"
    defaults = {"channels": 2, "length": 32, "patch": 8, "noise": 0.1}

    def read(self, source, *, sample_id=None, row=None):
        if isinstance(source, str) and source.endswith(".npy"):
            arr = np.load(source)
        else:
            try:
                arr = np.array([[float(v) for v in ch.split()] for ch in str(source).split(";")], dtype=np.float32)
            except ValueError as e:
                raise DataError(f"not a number list: {e}", source=sample_id) from e
        return Record(arr.astype(np.float32), {})

    def preprocess(self, record, *, train=False, rng=None):
        x = torch.from_numpy(np.ascontiguousarray(record.data, dtype=np.float32))
        if x.shape != (self.options["channels"], self.options["length"]):
            raise DataError(f"expected shape {(self.options['channels'], self.options['length'])}, got {tuple(x.shape)}")
        if train and rng is not None:
            x = x + torch.from_numpy(rng.normal(0, self.options["noise"], size=x.shape).astype(np.float32))
        return {"x": x}

    def tower_config(self):
        o = self.options
        return {"type": "vit", "pool": "mean",
                "embedder": {"type": "patch1d", "in_chans": o["channels"], "input_size": o["length"],
                             "patch_size": o["patch"]},
                "masked": {"kind": "mae", "mask_ratio": 0.5}}


class ToySignalB(ToySignal):
    name = "toyb"


if "toy" not in MODALITIES._items:
    register_modality("toy")(ToySignal)
    register_modality("toyb")(ToySignalB)


def dicom_as(src: str, modality: str, folder: Path, name: str = None) -> Path:
    """A copy of the DICOM file ``src`` (a pydicom test file) whose Modality tag says ``modality``:
    the readers refuse an object of another modality, so a CT test slice read as an X-ray needs one."""
    import pydicom

    ds = pydicom.dcmread(src)
    ds.Modality = modality
    out = Path(folder) / (name or f"{Path(src).stem}_{modality}.dcm")
    ds.save_as(out, enforce_file_format=False)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and tensors: one intra-op thread avoids oversubscription on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield

