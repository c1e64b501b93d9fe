"""Topcon .fda/.fds under numpy 2 and Heidelberg .E2E without directory chunks, on the shared real files.

Each expected array is decoded here by hand from the file's bytes (struct + numpy, PIL for the
JPEG 2000 B-scan), not by the reader under test.
"""
import io
import struct
from pathlib import Path

import numpy as np
import pytest

from medfm.errors import DataError
from medfm.registry import get_modality

DEVICE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "oct" / "device_files"
pytestmark = [pytest.mark.skipif(not DEVICE.is_dir(), reason="shared real data (../shared/data/oct) not present")]


def _topcon_chunk(data: bytes, name: bytes) -> int:
    """Offset of a Topcon chunk's payload (1-byte name length, name, uint32 size, payload)."""
    i = data.index(name) + len(name)
    return i + 4


def test_fds_reads_under_numpy2_and_matches_hand_decode():
    pytest.importorskip("oct_converter")
    path = DEVICE / "fds_minimized.fds"
    data = path.read_bytes()
    loc = _topcon_chunk(data, b"@IMG_SCAN_03")
    _mode, w, h, _bpp, n, _fmt, _size = struct.unpack("<BIIIIBI", data[loc:loc + 22])
    raw = np.frombuffer(data[loc + 22:loc + 22 + w * h * n * 2], "<u2")
    expected = raw.reshape(w, h, n, order="F").transpose(2, 1, 0)  # (slices, height, width)
    rec = get_modality("oct").read(path)
    assert rec.data.shape == (n, h, w) == (4, 3, 2)
    np.testing.assert_array_equal(rec.data, expected.astype(np.float32))


def test_fda_reads_jpeg2000_bscan_under_numpy2():
    pytest.importorskip("oct_converter")
    from PIL import Image

    path = DEVICE / "fda_minimized.fda"
    data = path.read_bytes()
    loc = _topcon_chunk(data, b"@IMG_JPEG") + 25  # 25-byte OCT header, then int32 size + codestream
    size = struct.unpack("<i", data[loc:loc + 4])[0]
    expected = np.asarray(Image.open(io.BytesIO(data[loc + 4:loc + 4 + size])), dtype=np.float32)
    rec = get_modality("oct").read(path)
    assert rec.data.shape == (1,) + expected.shape == (1, 650, 512)
    np.testing.assert_array_equal(rec.data[0], expected)
    fundus = get_modality("fundus").read(path)
    assert fundus.data.ndim == 3 and fundus.meta["format"] == "topcon-fda-fundus"


def test_compat_layer_touches_only_the_topcon_modules():
    pytest.importorskip("oct_converter")
    from medfm.modalities.vendor_oct import topcon_readers

    topcon_readers(DEVICE / "fds_minimized.fds")
    import oct_converter.readers.fds as fds
    import oct_converter.readers.img as img

    assert fds.np is not np and fds.np.uint16 is np.uint16
    assert img.np is np  # other reader modules keep numpy itself
    assert not hasattr(np, "_medfm_patched") and np.fromstring is not fds.np.fromstring
    b = np.arange(3, dtype=np.uint16).tobytes()
    out = fds.np.fromstring(b, dtype=np.uint16)
    assert out.tolist() == [0, 1, 2] and out.flags.writeable  # a copy, as numpy 1 gave
    assert fds.np.fromstring("1 2", dtype=int, sep=" ").tolist() == [1, 2]  # text mode unchanged


def _ufloat16(u: np.ndarray) -> np.ndarray:
    """Heidelberg's unsigned 16-bit float as eyepy decodes it: exponent = the high 6 bits (bias 63),
    mantissa = the low 10 bits read least-significant bit first (eyepy reverses the bit string)."""
    reversed10 = np.array([int(f"{i:010b}"[::-1], 2) for i in range(1024)], dtype=np.float64)
    e = (u >> 10).astype(np.float64)
    return (1 + reversed10[u & 0x3FF] / 1024) * 2.0 ** (e - 63)


def test_e2e_without_directory_reads_its_bscan_and_names_the_lost_localizer():
    pytest.importorskip("eyepy")
    import eyepy

    path = DEVICE / "e2e_minimized.E2E"
    with pytest.raises(ValueError, match="No Series"):  # what eyepy's high-level reader says
        eyepy.import_heyex_e2e(str(path))
    data = path.read_bytes()
    bscan_at = data.rindex(b"MDbData")
    hdr = bscan_at + 60
    _size, kind, n_values, height, width = struct.unpack("<5I", data[hdr:hdr + 20])
    assert kind == 35652097 and n_values == height * width
    raw = np.frombuffer(data[hdr + 20:hdr + 20 + 2 * n_values], "<u2").reshape(height, width)
    rec = get_modality("oct").read(path)
    assert rec.data.shape == (1, 496, 512)
    np.testing.assert_allclose(rec.data[0], _ufloat16(raw), rtol=1e-6, atol=0)
    assert rec.meta["laterality"] == "L" and rec.meta["series_read"] == 557160
    lost = rec.meta["unreadable"]
    assert [u["kind"] for u in lost] == ["localizer"] and lost[0]["declared"] == 768 * 768 + 20
    with pytest.raises(DataError, match="no readable localizer.*e2e_minimized|e2e_minimized.*no readable localizer"):
        get_modality("fundus").read(path)


def test_e2e_rejects_a_non_e2e_file(tmp_path):
    pytest.importorskip("eyepy")
    bad = tmp_path / "x.e2e"
    bad.write_bytes(b"not an e2e" * 20)
    with pytest.raises(DataError, match="x.e2e"):
        get_modality("oct").read(bad)
