"""A plug-in modality takes part everywhere a built-in one does: ``medfm manifest`` and ``medfm inspect``
choose it from the facts it declares (DICOM Modality values), with no shared table to edit.

The plug-in is a throw-away module registered through the documented route: an installed
distribution's ``medfm.modalities`` entry point (a ``.dist-info`` folder on ``sys.path``), loaded
by the registry's own loader.
"""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

from medfm import plugins, registry  # noqa: E402
from medfm.cli import main  # noqa: E402
from medfm.errors import DataError  # noqa: E402

PLUGIN = '''
"""A throw-away MR adapter: the CT machinery without HU windows, for DICOM Modality MR."""
from medfm.modalities.ct import CTAdapter
from medfm.registry import register_modality


@register_modality("mr")
class MRAdapter(CTAdapter):
    name = "mr"
    dicom_modalities = ("MR",)
    suffix_priority = 90
    defaults = {**CTAdapter.defaults, "windows": [], "size": [4, 32, 32], "target_spacing": None}
'''


@pytest.fixture
def mr_plugin(tmp_path, monkeypatch):
    """Install the plug-in as a distribution with a ``medfm.modalities`` entry point; unregister it after."""
    site = tmp_path / "site"
    (site / "medfm_mr_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "medfm_mr_plugin.py").write_text(textwrap.dedent(PLUGIN))
    (site / "medfm_mr_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: medfm-mr-plugin\nVersion: 0.1\n")
    (site / "medfm_mr_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[medfm.modalities]\nmr = medfm_mr_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    registry.MODALITIES.names()  # the built-ins are loaded first, as in any process
    assert "mr" not in registry.MODALITIES
    plugins.load_modalities()  # what the registry runs on first use: built-ins + entry points
    try:
        yield
    finally:
        registry.MODALITIES._items.pop("mr", None)
        sys.modules.pop("medfm_mr_plugin", None)


def test_without_the_plugin_an_mr_file_is_refused(tmp_path, capsys):
    mr = get_testdata_file("MR_small.dcm")
    assert main(["inspect", mr, "--out", str(tmp_path / "p.png")]) == 1
    err = capsys.readouterr().err
    assert "DICOM Modality 'MR' has no medfm modality" in err and "(mr)" not in err


def test_inspect_and_manifest_use_a_plugin_modality(tmp_path, capsys, mr_plugin):
    mr = get_testdata_file("MR_small.dcm")
    # inspect: the MR file goes to the plug-in's adapter, chosen by its declared Modality
    assert main(["inspect", mr, "--out", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"mr: {mr}"
    assert "meta.Modality: MR" in out and (tmp_path / "p.png").is_file()
    # manifest: a folder of MR and CT files gets an mr column beside the ct one
    src = tmp_path / "scans"
    for sub, name in (("a", "MR_small.dcm"), ("b", "CT_small.dcm")):
        (src / sub).mkdir(parents=True)
        (src / sub / name).write_bytes(Path(get_testdata_file(name)).read_bytes())
    csv = tmp_path / "cohort" / "m.csv"
    assert main(["manifest", str(src), "--out", str(csv), "--verify"]) == 0
    df = pd.read_csv(csv)
    assert df["mr"].dropna().str.endswith("MR_small.dcm").tolist() == [True]
    assert df["ct"].dropna().str.endswith("CT_small.dcm").tolist() == [True]
    # the built-in readers' refusal lists what the plug-in reads
    from medfm.registry import get_modality

    with pytest.raises(DataError, match=r"'MR' is not read by the ct adapter; medfm reads .*MR \(mr\)"):
        get_modality("ct").read(mr)
