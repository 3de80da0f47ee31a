"""A material the templates do not ship: new → validate → run --smoke, end to end, for real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hillwalker.engines.dataset import read_frames

HILLWALKER = str(Path(sys.executable).parent / "hillwalker")
DATA = Path(__file__).resolve().parents[1] / "data"


def hw(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HILLWALKER, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # new, validate and a smoke campaign
def test_new_material_validate_and_smoke_run(tmp_path):
    campaign = tmp_path / "mil53-cr"
    out = hw("new", str(campaign), "--structure", str(DATA / "MINVUA.cif"), "--primitive")
    assert out.returncode == 0, out.stderr
    out = hw("validate", str(campaign))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Å³" in out.stdout  # the volume CV, converted from PLUMED's nm³

    out = hw("run", str(campaign), "--smoke")
    assert out.returncode == 0, out.stdout + out.stderr
    smoke = campaign / ".hillwalker" / "smoke"
    status = json.loads(hw("status", str(smoke), "--json").stdout)
    assert status["generations_done"] == 2  # generation 0 and one walker generation
    assert all(Path(g["model"]).is_file() for g in status["generations"])
    frames = read_frames(smoke / "dataset.extxyz")
    assert status["single_points"]["done"] == len(frames) > 0
    assert {"Cr", "O", "C", "H"} <= set(frames[0].get_chemical_symbols())
    # the smoke run leaves the real campaign untouched
    assert not (campaign / "dataset.extxyz").exists()
    assert not (campaign / "generations").exists()
