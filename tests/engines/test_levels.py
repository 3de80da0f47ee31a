"""The reference-level interface: loading a level by its file, provenance, refusing frames."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ase.build import molecule

from hillwalker.engines.cp2k import Level
from hillwalker.engines.levels import (
    RESULT_FILE,
    LevelError,
    RunOptions,
    SinglePointResult,
    load_level,
)

ROOT = Path(__file__).resolve().parents[2]
XTB = ROOT / "templates" / "mil53-al" / "levels" / "xtb.inp"


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_a_cp2k_input_is_a_cp2k_level() -> None:
    level = load_level(XTB)
    assert isinstance(level, Level)
    assert (level.name, level.path, level.code) == ("xtb", XTB, "cp2k")
    assert level.digest() == Level.from_file(XTB).digest()


def test_an_unknown_level_file_is_refused_by_name(tmp_path: Path) -> None:
    other = tmp_path / "level.toml"
    other.write_text("method = 'gfn2'\n")
    with pytest.raises(LevelError, match=r"level\.toml: not a level file .*\*\.inp.*\*\.yaml"):
        load_level(other)
    no_code = tmp_path / "level.yaml"
    no_code.write_text("method: gfn2\n")
    with pytest.raises(
        LevelError, match=r"level\.yaml: code: missing \(one of pyscf, stillinger-weber, tblite\)"
    ):
        load_level(no_code)
    with pytest.raises(LevelError, match=r"missing\.inp: cannot read the level file"):
        load_level(tmp_path / "missing.inp")


def test_single_point_through_the_interface_carries_provenance(tmp_path: Path) -> None:
    level = load_level(XTB)
    water = molecule("H2O")
    result = level.single_point(water, tmp_path / "sp", RunOptions(cores=1, timeout=120))
    assert result.status == "done", result.message
    assert (result.level, result.level_digest, result.code) == ("xtb", level.digest(), "cp2k")
    assert 0 < result.code_seconds <= result.process_seconds < result.wall_seconds
    record = json.loads((tmp_path / "sp" / RESULT_FILE).read_text())
    assert record["level_digest"] == level.digest() and record["code"] == "cp2k"
    assert record["code_seconds"] == result.code_seconds


def test_every_level_refuses_a_frame_before_its_code_starts(tmp_path: Path) -> None:
    level = load_level(XTB)
    water = molecule("H2O")
    water.positions[1] = water.positions[0] + [0.7, 0.0, 0.0]
    # the campaign's threshold travels in the options: 0.7 Å passes the default, not 0.8 Å
    refused = level.single_point(water, tmp_path / "strict", RunOptions(min_distance=0.8))
    assert refused.failure == "bad_geometry" and refused.attempts == 0
    assert "min_distance 0.8 Å" in (refused.message or "")
    assert not (tmp_path / "strict" / "attempt-1.inp").exists()
    water[0].symbol = "Og"
    missing = level.single_point(water, tmp_path / "og", RunOptions())
    assert missing.failure == "missing_kind" and "Og" in (missing.message or "")


def test_a_result_pickles_as_itself(tmp_path: Path) -> None:
    import pickle

    import numpy as np

    result = SinglePointResult(
        status="done", energy=-1.0, forces=np.zeros((1, 3)), stress=None, failure=None,
        corrections=[], attempts=1, code_seconds=0.5, wall_seconds=1.0, workdir=tmp_path,
        level="xtb", level_digest="abc", code="cp2k",
    )  # fmt: skip
    again = pickle.loads(pickle.dumps(result))
    assert isinstance(again, SinglePointResult) and again.as_record() == result.as_record()


def test_a_result_on_disk_reads_back_as_itself(tmp_path: Path) -> None:
    import numpy as np

    from hillwalker.engines.files import atomic_write_json
    from hillwalker.engines.levels import RESULT_FILE

    result = SinglePointResult(
        status="done", energy=-1.5, forces=np.arange(6.0).reshape(2, 3), stress=np.ones(6),
        failure=None, corrections=[{"name": "more_scf_steps"}], attempts=2, code_seconds=0.5,
        wall_seconds=1.0, workdir=tmp_path, level="xtb", level_digest="abc", code="cp2k",
    )  # fmt: skip
    assert SinglePointResult.read(tmp_path) is None  # nothing written yet
    atomic_write_json(tmp_path / RESULT_FILE, result.as_record())
    again = SinglePointResult.read(tmp_path)
    assert again is not None and again.as_record() == result.as_record()
    (tmp_path / RESULT_FILE).write_text('{"status": "done", "energy_eV"')  # cut short
    assert SinglePointResult.read(tmp_path) is None
