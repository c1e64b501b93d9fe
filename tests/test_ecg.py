"""ECG adapter: real DICOM/WFDB records, lead canonicalisation, units, resampling, filtering, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import signal as sps

wfdb = pytest.importorskip("wfdb")
pydicom = pytest.importorskip("pydicom")

from medfm.errors import DataError  # noqa: E402
from medfm.modalities import ecg as E  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CINC = DATA / "ecg" / "cinc2021_12lead"
RAW = dict(bandpass=None, normalize="none", derive_limb_leads=False)


def _write(tmp_path, name, sig, fs, names, units=None):
    """wfdb.wrsamp a (T, C) array; returns the .hea path."""
    units = units or ["mV"] * sig.shape[1]
    wfdb.wrsamp(name, fs=fs, units=units, sig_name=names, p_signal=sig, fmt=["16"] * sig.shape[1],
                write_dir=str(tmp_path))
    return tmp_path / f"{name}.hea"


def _adc_tol(sig):
    return (sig.max() - sig.min()) / 2 ** 15 * 2 + 1e-9


# ------------------------------------------------------------------- DICOM
def test_dicom_waveform_lead_order_units_and_resampled_length():
    path = pydicom.data.get_testdata_file("waveform_ecg.dcm")
    ds = pydicom.dcmread(path)
    g = ds.WaveformSequence[0]  # the RHYTHM group: 12 leads, 10000 samples at 1 kHz
    raw = np.frombuffer(g.WaveformData, dtype="<i2").reshape(int(g.NumberOfWaveformSamples), -1).T
    ref = np.stack([raw[c] * float(ch.ChannelSensitivity) * float(ch.ChannelSensitivityCorrectionFactor)
                    + float(ch.ChannelBaseline) for c, ch in enumerate(g.ChannelDefinitionSequence)])
    assert all(ch.ChannelSensitivityUnitsSequence[0].CodeValue == "uV" for ch in g.ChannelDefinitionSequence)
    ref_mv = ref / 1000.0  # microvolt → millivolt

    a = E.ECGAdapter(**RAW)
    rec = a.read(path)
    assert rec.meta["fs"] == 1000.0
    meanings = [ch.ChannelSourceSequence[0].CodeMeaning for ch in g.ChannelDefinitionSequence]
    order = [E.LEADS.index(E.normalize_lead_name(m)) for m in meanings]
    assert sorted(order) == list(range(12))
    np.testing.assert_allclose(rec.data[order], ref_mv, atol=1e-9)
    assert E.normalize_lead_name(meanings[0]) == "I" and meanings[0] == "Lead I (Einthoven)"

    out = a.preprocess(rec)
    assert out["x"].shape == (12, 5000) and out["x"].dtype == torch.float32
    expect = sps.resample_poly(rec.data, 1, 2, axis=-1)
    np.testing.assert_allclose(out["x"].numpy(), expect, atol=1e-5)
    assert out["lead_mask"].all()


# -------------------------------------------------------------------- WFDB
def test_wfdb_roundtrip_renaming_units_and_missing_leads(tmp_path):
    rng = np.random.default_rng(0)
    T, fs = 3000, 500
    sig = rng.normal(0, 0.5, (T, 4))
    sig[:, 3] *= 1000  # stored in microvolts
    names = ["v1", "MLII", "Lead I (Einthoven)", "AVL"]
    hea = _write(tmp_path, "rec", sig, fs, names, ["mV", "mV", "mV", "uV"])
    a = E.ECGAdapter(**RAW)
    rec = a.read(hea)
    idx = {n: E.LEADS.index(n) for n in ("V1", "II", "I", "aVL")}
    for c, lead in enumerate(["V1", "II", "I", "aVL"]):
        scale = 1e-3 if lead == "aVL" else 1.0
        np.testing.assert_allclose(rec.data[idx[lead]], sig[:, c] * scale, atol=_adc_tol(sig[:, c]) * scale)
    mask = rec.meta["lead_mask"]
    assert mask.sum() == 4 and all(mask[i] for i in idx.values())
    assert not rec.meta["derived_mask"].any()
    assert np.all(rec.data[~mask] == 0)
    out = a.preprocess(rec)
    assert torch.equal(out["lead_mask"], torch.from_numpy(mask))
    assert torch.all(out["x"][~out["lead_mask"]] == 0)


def test_limb_leads_derived_from_I_and_II(tmp_path):
    rng = np.random.default_rng(1)
    sig = rng.normal(0, 1, (2000, 2))
    hea = _write(tmp_path, "limb", sig, 500, ["I", "II"])
    rec = E.ECGAdapter().read(hea)
    x, L = rec.data, E.LEADS.index
    I, II = x[L("I")], x[L("II")]
    np.testing.assert_allclose(x[L("III")], II - I)
    np.testing.assert_allclose(x[L("aVR")], -(I + II) / 2)
    np.testing.assert_allclose(x[L("aVL")], I - II / 2)
    np.testing.assert_allclose(x[L("aVF")], II - I / 2)
    assert [E.LEADS[i] for i in np.nonzero(rec.meta["derived_mask"])[0]] == ["III", "aVR", "aVL", "aVF"]
    assert rec.meta["lead_mask"].sum() == 6
    with pytest.raises(DataError, match="2 standard lead") as e:
        E.ECGAdapter(min_leads=12).read(hea)
    assert e.value.field == "leads"


def test_resampling_250_to_500_matches_analytic_sine(tmp_path):
    fs_in, f0, dur = 250, 5.0, 10
    t = np.arange(fs_in * dur) / fs_in
    sig = np.stack([np.sin(2 * np.pi * f0 * t)] * 12, 1)
    hea = _write(tmp_path, "sine", sig, fs_in, list(E.LEADS))
    out = E.ECGAdapter(**RAW).load(hea)
    assert out["x"].shape == (12, 5000)
    t2 = np.arange(5000) / 500
    np.testing.assert_allclose(out["x"][0, 200:-200].numpy(), np.sin(2 * np.pi * f0 * t2)[200:-200], atol=5e-3)


def test_multi_segment_record(tmp_path):
    rng = np.random.default_rng(2)
    segs = [rng.normal(0, 1, (1500, 2)), rng.normal(0, 1, (1000, 2))]
    for i, s in enumerate(segs):
        _write(tmp_path, f"seg{i}", s, 500, ["I", "V2"])
    # a fixed-layout multi-segment header, as the WFDB spec writes it
    (tmp_path / "multi.hea").write_text("multi/2 2 500 2500\nseg0 1500\nseg1 1000\n")
    rec = E.ECGAdapter(derive_limb_leads=False).read(tmp_path / "multi.hea")
    both = np.concatenate(segs)
    assert rec.data.shape == (12, 2500)
    np.testing.assert_allclose(rec.data[E.LEADS.index("V2")], both[:, 1], atol=_adc_tol(both))
    (tmp_path / "seg1.hea").unlink()
    with pytest.raises(DataError, match="segment header seg1.hea") as e:
        E.ECGAdapter().load(tmp_path / "multi.hea")
    assert e.value.field == "signal file"


def test_npy_sidecar_and_csv_agree_with_source(tmp_path):
    rng = np.random.default_rng(3)
    sig = rng.normal(0, 1, (12, 2500))
    np.save(tmp_path / "a.npy", sig.T)  # (T, C) on disk: the reader transposes
    (tmp_path / "a.json").write_text(json.dumps({"fs": 250, "units": "mV",
                                                  "leads": [f"{n} " if n[0] == "V" else n.upper() for n in E.LEADS]}))
    cols = ["time"] + [f"Lead {n}" for n in E.LEADS[::-1]]
    data = np.concatenate([np.arange(2500)[:, None] / 250, sig[::-1].T], 1)
    np.savetxt(tmp_path / "b.csv", data, delimiter=",", header=",".join(cols), comments="")
    a = E.ECGAdapter(**RAW)
    r1 = a.read(tmp_path / "a.npy")
    r2 = a.read(tmp_path / "b.csv", row={"ecg_fs": 250})
    assert r1.meta["fs"] == r2.meta["fs"] == 250.0
    np.testing.assert_allclose(r1.data, sig)
    np.testing.assert_allclose(r2.data, sig, atol=1e-12)
    np.savez(tmp_path / "c.npz", signal=sig * 1000, fs=250, units="uV")
    np.testing.assert_allclose(a.read(tmp_path / "c.npz").data, sig)


# -------------------------------------------------------------- filtering
def test_bandpass_removes_baseline_wander_and_flat_lead_is_zero(tmp_path):
    fs, T = 500, 5000
    t = np.arange(T) / fs
    qrs_like = np.sin(2 * np.pi * 10 * t)
    drift = 2.0 * np.sin(2 * np.pi * 0.1 * t)
    x = np.zeros((12, T))
    x[0] = qrs_like + drift
    x[1] = 0.7  # flat lead
    x[2] = qrs_like
    x[2, 1000:1010] = np.nan  # a short gap
    rec = E.Record(x, {"fs": fs, "lead_mask": np.ones(12, bool)})
    out = E.ECGAdapter(normalize="none").preprocess(rec)["x"].numpy()
    inner = slice(500, -500)
    assert np.corrcoef(out[0, inner], qrs_like[inner])[0, 1] > 0.99
    assert np.abs(out[0, inner] - qrs_like[inner]).max() < 0.1
    assert np.isfinite(out).all()
    std = E.ECGAdapter().preprocess(rec)["x"].numpy()
    assert np.all(std[1] == 0)
    np.testing.assert_allclose(std[0].mean(), 0, atol=1e-5)
    np.testing.assert_allclose(std[0].std(), 1, atol=1e-4)


def test_notch_removes_mains(tmp_path):
    fs, T = 500, 5000
    t = np.arange(T) / fs
    x = np.tile(np.sin(2 * np.pi * 5 * t) + np.sin(2 * np.pi * 50 * t), (12, 1))
    rec = E.Record(x, {"fs": fs, "lead_mask": np.ones(12, bool)})
    out = E.ECGAdapter(normalize="none", bandpass=None, notch=50).preprocess(rec)["x"].numpy()[0]
    spec = np.abs(np.fft.rfft(out[1000:4000]))
    freqs = np.fft.rfftfreq(3000, 1 / fs)
    assert spec[np.argmin(abs(freqs - 50))] < 0.05 * spec[np.argmin(abs(freqs - 5))]


def test_random_crop_is_a_window_of_the_record():
    fs, T = 500, 500 * 30
    x = np.tile(np.arange(T, dtype=float), (12, 1))
    rec = E.Record(x, {"fs": fs, "lead_mask": np.ones(12, bool)})
    a = E.ECGAdapter(**RAW)
    starts = set()
    for seed in range(5):
        out = a.preprocess(rec, train=True, rng=np.random.default_rng(seed))["x"][0].numpy()
        assert out.shape == (5000,)
        np.testing.assert_allclose(np.diff(out), 1.0)
        starts.add(int(out[0]))
    assert len(starts) > 1
    assert a.preprocess(rec)["x"][0, 0] == 0  # eval: the first window


def test_short_record_is_padded(tmp_path):
    sig = np.random.default_rng(4).normal(0, 1, (1500, 12))
    out = E.ECGAdapter(**RAW).load(_write(tmp_path, "short", sig, 500, list(E.LEADS)))
    assert out["x"].shape == (12, 5000)
    assert torch.all(out["x"][:, 1500:] == 0)


# ----------------------------------------------------------------- errors
def test_errors_name_the_record(tmp_path):
    a = E.ECGAdapter()
    sig = np.random.default_rng(5).normal(0, 1, (2000, 12))
    hea = _write(tmp_path, "nodat", sig, 500, list(E.LEADS))
    (tmp_path / "nodat.dat").unlink()
    with pytest.raises(DataError, match="nodat.dat") as e:
        a.load(hea, sample_id="s1")
    assert e.value.field == "signal file"

    with pytest.raises(DataError, match="min_duration") as e:
        a.load(_write(tmp_path, "tiny", sig[:500], 500, list(E.LEADS)), sample_id="s2")
    assert e.value.source == "s2" and e.value.field == "duration"

    bad = sig.T.copy()
    bad[4] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DataError, match="all NaN") as e:
        a.load(tmp_path / "nan.npy", row={"ecg_fs": 500})
    assert e.value.field == "aVL" and "nan.npy" in str(e.value)

    np.save(tmp_path / "z.npy", sig.T)
    (tmp_path / "z.json").write_text(json.dumps({"fs": 0}))
    with pytest.raises(DataError) as e:
        a.load(tmp_path / "z.npy")
    assert e.value.field == "sampling_rate"

    good = _write(tmp_path, "fs0", sig, 500, list(E.LEADS))
    lines = good.read_text().splitlines()
    first = lines[0].split()
    first[2] = "0"
    good.write_text("\n".join([" ".join(first)] + lines[1:]) + "\n")
    with pytest.raises(DataError, match="sampling rate is 0") as e:
        a.load(good)
    assert e.value.field == "sampling_rate"

    with pytest.raises(DataError, match="no standard ECG lead"):
        a.load(_write(tmp_path, "resp", sig[:, :2], 500, ["RESP", "PLETH"]))
    with pytest.raises(DataError, match="not found"):
        a.load(tmp_path / "missing.hea")


# ------------------------------------------------------ real CinC records
def test_real_cinc_records():
    if not CINC.is_dir():
        pytest.skip(f"real ECG data not found at {CINC}")
    heads = sorted(CINC.glob("*.hea"))
    assert len(heads) >= 10
    a = E.ECGAdapter()
    n_flagged = 0
    for h in heads:
        out = a.load(h)
        ref = wfdb.rdrecord(str(h.with_suffix("")))
        flat = {E.normalize_lead_name(n) for n, r in zip(ref.sig_name, np.ptp(ref.p_signal, axis=0)) if r == 0}
        # leads recorded as a constant line (some CinC records have all-zero V2/V4/V6) are
        # flagged and treated as absent; every other lead is present
        assert out["x"].shape == (12, 5000)
        assert out["lead_mask"].tolist() == [n not in flat for n in E.LEADS], h.name
        assert ("flags" in out) == bool(flat)
        n_flagged += bool(flat)
        assert torch.isfinite(out["x"]).all()
    ref = wfdb.rdrecord(str(heads[0].with_suffix("")))
    rec = E.ECGAdapter(**RAW).read(heads[0])
    order = [E.LEADS.index(E.normalize_lead_name(n)) for n in ref.sig_name]
    np.testing.assert_allclose(rec.data[order], ref.p_signal.T)


def test_tower_config_builds_and_encodes():
    import medfm

    torch.manual_seed(0)
    a = E.ECGAdapter(fs=100, patch_size=50)
    cfg = a.tower_config()
    assert cfg["embedder"]["input_size"] == 1000 and cfg["masked"]["kind"] == "mae"
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {"ecg": a.config()}})
    x = torch.randn(2, 12, 1000)
    z = model.encode("ecg", x)
    assert z.shape == (2, model.embed_dim)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2))
    assert torch.isfinite(model.masked_loss("ecg", x)["loss"])


def test_muse_xml_with_derived_limb_leads(tmp_path):
    import base64

    rng = np.random.default_rng(6)
    names = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
    raw = rng.integers(-2000, 2000, (8, 5000)).astype("<i2")
    leads = "".join(
        f"<LeadData><LeadID>{n}</LeadID><LeadAmplitudeUnitsPerBit>4.88</LeadAmplitudeUnitsPerBit>"
        f"<LeadAmplitudeUnits>MICROVOLTS</LeadAmplitudeUnits>"
        f"<WaveFormData>{base64.b64encode(raw[i].tobytes()).decode()}</WaveFormData></LeadData>"
        for i, n in enumerate(names))
    xml = (f"<RestingECG><Waveform><WaveformType>Median</WaveformType><SampleBase>500</SampleBase></Waveform>"
           f"<Waveform><WaveformType>Rhythm</WaveformType><SampleBase>500</SampleBase>{leads}</Waveform></RestingECG>")
    (tmp_path / "m.xml").write_text(xml)
    rec = E.ECGAdapter().read(tmp_path / "m.xml")
    mv = raw * 4.88 / 1000
    for i, n in enumerate(names):
        np.testing.assert_allclose(rec.data[E.LEADS.index(n)], mv[i])
    np.testing.assert_allclose(rec.data[E.LEADS.index("III")], mv[1] - mv[0])
    assert rec.meta["lead_mask"].all() and rec.meta["derived_mask"].sum() == 4
    (tmp_path / "bad.xml").write_text("<RestingECG><Waveform></RestingECG>")
    with pytest.raises(DataError, match="XML"):
        E.ECGAdapter().load(tmp_path / "bad.xml")
