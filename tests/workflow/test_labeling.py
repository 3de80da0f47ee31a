"""``hillwalker label``: real CP2K single points in parallel through the execution layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hillwalker import settings, tasks
from hillwalker.cli import app
from hillwalker.config import Safety, load_campaign
from hillwalker.engines.dataset import has_labels, read_frames, write_frames
from hillwalker.engines.geometry import DEFAULT_MIN_DISTANCE

DATA = Path(__file__).resolve().parent.parent / "data"
ROOT = Path(__file__).resolve().parents[2]
XTB = ROOT / "templates" / "mil53-al" / "levels" / "xtb.inp"
PBE_D3 = ROOT / "templates" / "mil53-al" / "levels" / "pbe-d3.inp"

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_label_frames_in_parallel_keeping_failed_ones(tmp_path: Path) -> None:
    reference = read_frames(DATA / "mil53_xtb_frames.extxyz")
    np_frame, lp_frame = reference[0], reference[40]
    squeezed = reference[1].copy()
    squeezed.positions[5] = squeezed.positions[4] + [0.1, 0.0, 0.0]
    frames_file = tmp_path / "frames.extxyz"
    write_frames(frames_file, [np_frame, squeezed, lp_frame])
    out = tmp_path / "labeled.extxyz"

    result = runner.invoke(app, ["label", str(XTB), str(frames_file), "-o", str(out),
                                 "--cores", "2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 done, 1 failed (bad_geometry 1) of 3 frames" in result.stdout
    assert "[3/3]" in result.stderr and "failed (bad_geometry)" in result.stderr

    labeled = read_frames(out)
    assert [f.info["status"] for f in labeled] == ["done", "failed", "done"]
    # The stored labels come from the same engine and level: the same numbers, in input order.
    for got, want in ((labeled[0], np_frame), (labeled[2], lp_frame)):
        assert has_labels(got, stress=True)
        assert got.get_potential_energy() == pytest.approx(want.get_potential_energy(), abs=1e-5)
        np.testing.assert_allclose(got.get_forces(), want.get_forces(), atol=1e-4)
        np.testing.assert_allclose(got.get_stress(), want.get_stress(), atol=1e-6)
        assert got.info["level"] == "xtb" and got.info["generation"] == 0
    failed = labeled[1]
    assert failed.calc is None and failed.info["failure"] == "bad_geometry"
    assert "0.100 Å apart" in failed.info["failure_message"]

    # Again: every frame is taken from its finished task directory, CP2K does not run.
    outputs = sorted((tmp_path / "labeled.extxyz.work").glob("*/attempt-1.out"))
    assert len(outputs) == 2
    stamps = [p.stat().st_mtime_ns for p in outputs]
    again = runner.invoke(app, ["label", str(XTB), str(frames_file), "-o", str(out)])
    assert again.exit_code == 0, again.output
    assert "3 from an earlier run" in again.stdout
    assert [p.stat().st_mtime_ns for p in outputs] == stamps
    assert [f.info["status"] for f in read_frames(out)] == ["done", "failed", "done"]


def test_label_refuses_a_level_without_the_frames_elements(tmp_path: Path) -> None:
    frames_file = tmp_path / "frames.extxyz"
    frame = read_frames(DATA / "mil53_xtb_frames.extxyz", index=0)[0]
    frame[0].symbol = "Xe"
    write_frames(frames_file, [frame])
    out = tmp_path / "out.extxyz"
    result = runner.invoke(app, ["label", str(PBE_D3), str(frames_file), "-o", str(out)])
    assert result.exit_code == 1
    assert "pbe-d3.inp" in result.stderr and "Xe" in result.stderr
    assert not out.exists() and not (tmp_path / "out.extxyz.work").exists()


def test_label_reports_bad_files(tmp_path: Path) -> None:
    bad_level = tmp_path / "bad.inp"
    bad_level.write_text(XTB.read_text().replace("MAX_SCF 400", "MAX_SCFX 400"))
    frames = DATA / "mil53_xtb_frames.extxyz"
    result = runner.invoke(app, ["label", str(bad_level), str(frames), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "bad.inp" in result.stderr and "MAX_SCFX" in result.stderr

    missing = tmp_path / "nothing.extxyz"
    result = runner.invoke(app, ["label", str(XTB), str(missing), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "nothing.extxyz" in result.stderr


def test_label_and_run_refuse_the_same_too_close_geometry(tmp_path: Path) -> None:
    # 0.55 Å: refused by both at the one threshold (label's own default was 0.5 Å once, run's 0.6)
    frame = read_frames(DATA / "mil53_xtb_frames.extxyz", index=1)[0]
    frame.positions[5] = frame.positions[4] + [0.55, 0.0, 0.0]
    frames_file = tmp_path / "frames.extxyz"
    write_frames(frames_file, [frame])
    out = tmp_path / "labeled.extxyz"
    result = runner.invoke(app, ["label", str(XTB), str(frames_file), "-o", str(out),
                                 "--cores", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    labeled = read_frames(out)[0]
    assert labeled.info["status"] == "failed" and labeled.info["failure"] == "bad_geometry"
    message = labeled.info["failure_message"]
    assert "0.550 Å apart" in message and f"min_distance {DEFAULT_MIN_DISTANCE} Å" in message

    # `run`: campaign.yaml's default, the options the campaign gives each single point, and the
    # task it submits refuse the frame with the same check and the same words
    assert Safety().min_distance == DEFAULT_MIN_DISTANCE
    options = settings.single_point_options(
        load_campaign(ROOT / "templates" / "mil53-al"), cores=1, command=None
    )
    assert options.min_distance == DEFAULT_MIN_DISTANCE
    timed = tasks.label_frame(frame, str(XTB), str(tmp_path / "run-sp"), options)
    assert timed.result.failure == "bad_geometry" and timed.result.message == message
    assert not (tmp_path / "run-sp" / "attempt-1.inp").exists()  # CP2K was not started
