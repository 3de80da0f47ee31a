"""The walkers' temperature limit (``safety.max_temperature``) on a real MD run: the LJ trimer of
walker_job.py with the real PLUMED kernel (about a second)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from ase.io import read

from hillwalker.engines.walkers import Walker, run_segment

sys.path.insert(0, str(Path(__file__).parent))
from walker_job import PLUMED_INPUT, PausingLJ, lj_settings, trimer

LIMIT = 450.0  # K: the 300 K trimer's three atoms cross it within a few hundred steps


def test_max_temperature_blows_up_at_the_first_hot_step_and_resets(tmp_path: Path) -> None:
    settings = lj_settings(
        temperature=300.0, steps=2000, max_temperature=LIMIT, check_stride=1, trajectory_stride=1
    )
    segment = run_segment(
        trimer(), PausingLJ(), PLUMED_INPUT, tmp_path / "w", Walker(0, 1, 1, tmp_path / "bias"),
        settings, seed=5,
    )  # fmt: skip
    assert segment.status == "blown_up", "the trimer never got hotter than the limit"
    (event,) = segment.events
    assert event["kind"] == "blow_up"
    reported = float(event["reason"].split("temperature ")[1].split(" K")[0])
    assert event["reason"].endswith(f"K > max_temperature {LIMIT} K") and reported > LIMIT
    # every step before it was below the limit (computed here from the written momenta): the
    # check tripped at the first hot step, not later
    frames = read(tmp_path / "w" / "trajectory.traj", index=":")
    assert len(frames) == event["step"]  # steps 0 … step-1 passed and were written
    temperatures = np.array([f.get_temperature() for f in frames])
    assert np.all(temperatures <= LIMIT) and temperatures.max() > 300.0
    # reset to the last safe state (the step before), with fresh momenta
    assert event["reset_to_step"] == event["step"] - 1
    np.testing.assert_allclose(segment.final.positions, frames[-1].positions)
    # the configuration where it blew up is kept to be labeled (a sane geometry: only too hot),
    # one step after the reset state, with the walker's provenance
    failed = segment.failed
    assert failed is not None and event["failed_frame"] is True
    assert failed.info["step"] == event["step"] and failed.info["walker"] == 0
    assert not failed.get_momenta().any()  # a geometry, no momenta
    moved = np.linalg.norm(failed.positions - segment.final.positions, axis=1).max()
    assert 0 < moved < 0.5  # one MD step away from the last safe state
