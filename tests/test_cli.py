"""The command line entry point: info, usage errors, python -m medfm."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from medfm.cli import main


def test_info_json_lists_the_registries(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for name in ("ct", "xray", "oct", "fundus", "ecg", "dna", "text"):
        assert name in info["modalities"]
    assert {"clip", "siglip", "gram", "masked"} <= set(info["objectives"])
    assert {"medfm-tiny", "medfm-small", "medfm-base"} <= set(info["models"])
    assert any(c.endswith(".yaml") for c in info["configs"])


def test_info_text(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "modalities:" in out and "ecg" in out and "objectives:" in out


def test_unknown_command_and_missing_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code == 2
    assert main([]) == 2


def test_python_dash_m_medfm():
    proc = subprocess.run([sys.executable, "-m", "medfm", "info", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ecg" in json.loads(proc.stdout)["modalities"]
