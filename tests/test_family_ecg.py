"""HuBERT-ECG-style family: the published input spec written here as an independent reference
(wfdb + SciPy, from the paper's methods: 12 leads, 100 Hz, 5 s, band-pass 0.05–47 Hz, per-lead
[-1, 1] scaling, leads concatenated) and transformers' ``HubertModel`` at random init, against
medfm's ``ecg_spec`` adapter + ``hf_encoder`` tower, on the shared CinC 2021 records.

HuBERT-ECG ships no preprocessing function on PyPI, so the reference is the spec itself (the filter
order and resampling method, which the paper does not state, are medfm's documented choices).
"""
from pathlib import Path

import numpy as np
import pytest
import torch

import medfm  # noqa: E402

CINC = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ecg" / "cinc2021_12lead"
LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def reference_input(record: Path) -> np.ndarray:
    import scipy.signal as sps
    import wfdb

    rec = wfdb.rdrecord(str(record.with_suffix("")))
    sig = rec.p_signal.T[[rec.sig_name.index(n) for n in LEADS]]  # (12, T) mV, the family's lead order
    fs = float(rec.fs)
    sig = sig[:, : int(round(fs * 5.0))]
    sig = sps.sosfiltfilt(sps.butter(4, [0.05, 47.0], btype="bandpass", fs=fs, output="sos"), sig, axis=-1)
    sig = sps.resample_poly(sig, 1, int(fs // 100), axis=-1)[:, :500]
    lo, hi = sig.min(1, keepdims=True), sig.max(1, keepdims=True)
    return (2 * (sig - lo) / (hi - lo) - 1).reshape(-1)


@pytest.fixture(scope="module")
def hubert_folder(tmp_path_factory):
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(32, 32), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16,
                       num_conv_pos_embedding_groups=2, vocab_size=16)
    folder = tmp_path_factory.mktemp("hubert") / "hubert-ecg"
    HubertModel(cfg).save_pretrained(str(folder))
    return folder


def test_hubert_ecg_embedding_matches_the_published_spec_and_transformers(hubert_folder):
    from transformers import HubertModel

    records = sorted(CINC.glob("*.hea"))[:3]
    if not records:
        pytest.skip("the shared CinC ECGs are not here (../shared/data)")
    torch.set_num_threads(1)
    ref = HubertModel.from_pretrained(str(hubert_folder)).eval()
    model = medfm.create_model({"name": "hubert-ecg", "modalities": {
        "ecg": {"init": {"path": str(hubert_folder), "format": "hf_encoder_dir", "strict": True}}}}).eval()
    worst_x, worst_z = 0.0, 0.0
    for rec in records:
        x_ref = torch.from_numpy(reference_input(rec)).float()
        item = model.adapters["ecg"].load(str(rec))
        assert item["x"].shape == (12 * 500,)
        worst_x = max(worst_x, float((item["x"] - x_ref).abs().max()))
        with torch.no_grad():
            z_ref = ref(input_values=x_ref[None]).last_hidden_state.mean(1)
            z = model.encode("ecg", item["x"][None], normalize=False)
        worst_z = max(worst_z, float((z - z_ref).abs().max()))
    print(f"hubert-ecg: input max abs diff {worst_x:.2e}, embedding {worst_z:.2e}")
    assert worst_x <= 1e-4 and worst_z <= 1e-4


def test_a_departure_from_the_ecg_spec_is_named_and_refused_under_strict(hubert_folder):
    model = medfm.create_model({"name": "hubert-ecg", "modalities": {
        "ecg": {"fs": 500.0, "init": {"path": str(hubert_folder), "format": "hf_encoder_dir"}}}})
    assert any("fs=500.0" in n for n in model.init_reports["ecg"]["notes"])
    with pytest.raises(medfm.errors.ConfigError, match="fs=500.0"):
        medfm.get_modality("ecg", adapter="ecg_spec", family="hubert-ecg", fs=500.0, strict=True)
