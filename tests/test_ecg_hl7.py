"""HL7 aECG reader: files written here to the urn:hl7-org:v3 AnnotatedECG schema.

One carries a real 12-lead record (CinC 2021, read by wfdb) as ``SLIST_PQ`` digits, so the
decoded millivolts are checked against wfdb; one has a non-zero origin, mixed units and a
relative time axis in ms, checked against values computed by hand.
"""
from pathlib import Path

import numpy as np
import pytest

from medfm.errors import DataError
from medfm.modalities import ecg as E

ECG_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ecg" / "cinc2021_12lead"
MDC = {"I": "I", "II": "II", "III": "III", "aVR": "AVR", "aVL": "AVL", "aVF": "AVF",
       **{f"V{i}": f"V{i}" for i in range(1, 7)}}


def _sequence(code, value):
    return f'<component><sequence><code code="{code}" codeSystem="2.16.840.1.113883.6.24"/>{value}</sequence></component>'


def _lead(name, digits, origin=("0", "uV"), scale=("1", "uV")):
    value = (f'<value xsi:type="SLIST_PQ"><origin value="{origin[0]}" unit="{origin[1]}"/>'
             f'<scale value="{scale[0]}" unit="{scale[1]}"/><digits>{" ".join(str(int(d)) for d in digits)}</digits></value>')
    return _sequence(f"MDC_ECG_LEAD_{name}", value)


def _aecg(time_seq: str, leads: str, *, extra_series: str = "") -> str:
    """An AnnotatedECG document as the HL7 aECG implementation guide lays it out."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<AnnotatedECG xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <id root="61d1a24f-b47e-41aa-ae95-f8ac302f4eeb"/>
  <code code="93000" codeSystem="2.16.840.1.113883.6.12"/>
  <effectiveTime><low value="20020509094500"/><high value="20020509094510"/></effectiveTime>
  <componentOf><timepointEvent><componentOf><subjectAssignment><subject><trialSubject>
    <id root="2.16.840.1.113883.3.5" extension="SUBJ-7734-XQ"/>
    <subjectDemographicPerson><name>Doe^Janet</name>
      <administrativeGenderCode code="F" codeSystem="2.16.840.1.113883.5.1"/>
      <birthTime value="19510203"/></subjectDemographicPerson>
  </trialSubject></subject></subjectAssignment></componentOf></timepointEvent></componentOf>
  {extra_series}
  <component><series>
    <id root="a5d8c3bf-2c1b-4d43-9f57-b0f0f3a0f6b2"/>
    <code code="RHYTHM" codeSystem="2.16.840.1.113883.5.4"/>
    <effectiveTime><low value="20020509094500"/><high value="20020509094510"/></effectiveTime>
    <component><sequenceSet>
      {time_seq}
      {leads}
    </sequenceSet></component>
  </series></component>
</AnnotatedECG>"""


ABS_500HZ = _sequence("TIME_ABSOLUTE", '<value xsi:type="GLIST_TS"><head value="20020509094500.000"/>'
                                       '<increment value="0.002" unit="s"/></value>')


@pytest.mark.skipif(not ECG_DIR.is_dir(), reason="shared real data (../shared/data/ecg) not present")
def test_real_record_as_aecg_matches_wfdb(tmp_path):
    import wfdb

    rec = wfdb.rdrecord(str(ECG_DIR / "E07500"), physical=False)
    assert rec.fs == 500 and all(u == "mV" for u in rec.units) and set(rec.adc_gain) == {1000.0}
    digits = rec.d_signal.T  # (12, T) ADC units; gain 1000/mV = 1 uV per digit, baseline 0
    leads = "".join(_lead(MDC[n], digits[i]) for i, n in enumerate(rec.sig_name))
    # a representative-beat series before the rhythm series must not be the one read
    beat = _aecg(ABS_500HZ, _lead("I", [999] * 10)).split("<component><series>")[1].split("</series></component>")[0]
    path = tmp_path / "real.xml"
    path.write_text(_aecg(ABS_500HZ, leads, extra_series=f"<component><series>{beat.replace('RHYTHM', 'REPRESENTATIVE_BEAT')}</series></component>"))
    out = E.ECGAdapter().read(path)
    ref = wfdb.rdrecord(str(ECG_DIR / "E07500")).p_signal.T  # (12, T) mV
    assert out.meta["fs"] == pytest.approx(500.0)
    for i, n in enumerate(rec.sig_name):
        np.testing.assert_allclose(out.data[E.LEADS.index(n)], ref[i], atol=1e-12)
    assert out.meta["lead_mask"].all() and not out.meta["derived_mask"].any()
    assert "SUBJ-7734" not in repr(out.meta) and "Janet" not in repr(out.meta)
    assert E.ECGAdapter(fs=100, duration=10).load(path)["x"].shape == (12, 1000)


def test_origin_scale_units_and_relative_time_by_hand(tmp_path):
    time_ms = _sequence("TIME_RELATIVE", '<value xsi:type="GLIST_PQ"><head value="0" unit="ms"/>'
                                         '<increment value="4" unit="ms"/></value>')
    d1 = np.array([0, 10, -20, 30] * 250)
    d2 = np.array([5, -5, 7, 1] * 250)
    leads = (_lead("I", d1, origin=("100", "uV"), scale=("2.5", "uV"))
             + _lead("V2", d2, origin=("-0.05", "mV"), scale=("0.01", "mV"))
             + _lead("V7", d2))  # not one of the 12: ignored
    path = tmp_path / "hand.xml"
    path.write_text(_aecg(time_ms, leads))
    out = E.ECGAdapter(derive_limb_leads=False, min_leads=1).read(path)
    assert out.meta["fs"] == pytest.approx(250.0)
    np.testing.assert_allclose(out.data[0, :4], [0.1, 0.125, 0.05, 0.175])  # (100 + 2.5 d) uV in mV
    np.testing.assert_allclose(out.data[E.LEADS.index("V2"), :4], [0.0, -0.1, 0.02, -0.04])
    assert out.meta["lead_mask"].sum() == 2 and out.meta["ignored_channels"] == ["V7"]


@pytest.mark.parametrize("body, match", [
    (_aecg("", _lead("I", [1, 2, 3])), "sampling rate unknown"),
    (_aecg(ABS_500HZ, _lead("I", [1, 2, 3], scale=("1", "furlong"))), "unit 'furlong'"),
    (_aecg(ABS_500HZ, _lead("I", [1, 2, 3]) + _lead("II", [1, 2])), "differ in length"),
    (_aecg(_sequence("TIME_ABSOLUTE", '<value xsi:type="SLIST_TS"><digits>0 1</digits></value>'),
           _lead("I", [1, 2, 3])), "SLIST_TS"),
])
def test_bad_aecg_names_file_and_fault(tmp_path, body, match):
    path = tmp_path / "bad_aecg.xml"
    path.write_text(body)
    with pytest.raises(DataError, match=match) as e:
        E.ECGAdapter().read(path)
    assert "bad_aecg.xml" in str(e.value)


def test_muse_xml_still_goes_to_the_muse_reader(tmp_path):
    (tmp_path / "m.xml").write_text("<RestingECG><Waveform></Waveform></RestingECG>")
    with pytest.raises(DataError, match="LeadData"):
        E.ECGAdapter().read(tmp_path / "m.xml")


def test_info_lists_each_new_format_with_its_reader_and_gaps(capsys):
    import json

    from medfm.cli import main

    assert main(["info", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["format_readers"]
    by_format = {r["format"].split(" ")[0] + " " + r["format"].split(" ")[1]: r for r in rows}
    for fmt in ("Topcon .fda/.fds", "Heidelberg .e2e", "HL7 aECG", "DICOM folder"):
        assert fmt in by_format and by_format[fmt]["reader"] and by_format[fmt]["not_supported"], fmt
    assert "tabular" in {r["modality"] for r in rows}
