"""A generation run again goes on from the bias it began with, not from the hills of itself and of
the generations after it (``hills_ledger.rewind``, called by the campaign before such a re-run).

Real PLUMED and MD on the Lennard-Jones trimer of walker_job.py: two walkers share one bias, a hill
every 5 steps; generations of 50 steps, a snapshot of the bias after each, as a campaign takes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hillwalker.engines.hills_ledger import WalkerError, rewind
from hillwalker.engines.plumed import count_hills, read_hills, snapshot_hills
from hillwalker.engines.walkers import Walker, run_segment

sys.path.insert(0, str(Path(__file__).parent))
from walker_job import PLUMED_INPUT, PausingLJ, lj_settings, trimer

STEPS, PACE = 50, 5


def _generation(root: Path, g: int, starts: dict[int, Path], tag: str = "") -> dict[int, Path]:
    """Both walkers' segments of generation g from ``starts``; the bias snapshotted after."""
    bias = root / "bias"
    states = {}
    for k, start in starts.items():
        out = run_segment(
            start, PausingLJ(), PLUMED_INPUT, root / f"g{g}{tag}-w{k}", Walker(k, g, 2, bias),
            lj_settings(steps=STEPS), seed=100 * g + k + (7 if tag else 0),
        )  # fmt: skip
        assert out.status == "done"
        states[k] = out.state_path
    snapshot_hills(bias, root / f"snap{g}{tag}")
    return states


def _campaign(root: Path, generations: int) -> list[dict[int, Path]]:
    states = [{0: root / "start.extxyz", 1: root / "start.extxyz"}]
    trimer().write(states[0][0])
    for g in range(1, generations + 1):
        states.append(_generation(root, g, states[-1]))
    return states


def test_a_generation_run_again_starts_from_the_bias_before_it(tmp_path: Path) -> None:
    states = _campaign(tmp_path, 3)
    bias = tmp_path / "bias"
    per_generation = 2 * STEPS // PACE
    assert count_hills(bias) == 3 * per_generation
    # generation 2 runs again (its model changed): both walkers back to generation 1's end
    removed = rewind(bias, 2, {0: False, 1: False}, {1: tmp_path / "snap1", 2: tmp_path / "snap2"})
    assert removed == {0: 2 * STEPS // PACE, 1: 2 * STEPS // PACE}
    for k in (0, 1):
        assert (bias / f"HILLS.{k}").read_bytes() == (tmp_path / f"snap1/HILLS.{k}").read_bytes()
    # the re-run deposits on that bias only; its hills come after every time seen before (the
    # step counter does not go back), and the ledger agrees with the files (no WalkerError)
    last_time = read_hills(tmp_path / "snap3").times.max()
    _generation(tmp_path, 2, states[1], tag="again")
    again = read_hills(bias)
    assert len(again.times) == 2 * per_generation
    new = again.times[again.times > read_hills(tmp_path / "snap1").times.max()]
    assert len(new) == per_generation and new.min() > last_time
    # generation 3 goes on from there as from any finished generation
    _generation(tmp_path, 3, states[2], tag="again")
    assert count_hills(bias) == 3 * per_generation


def test_a_walker_kept_as_recorded_keeps_its_hills(tmp_path: Path) -> None:
    """Walker 0's segment of generation 2 is replayed (its inputs did not change), walker 1's
    runs again: walker 0 goes back to the end of generation 2, walker 1 to generation 1's."""
    _campaign(tmp_path, 3)
    bias = tmp_path / "bias"
    rewind(bias, 2, {0: True, 1: False}, {1: tmp_path / "snap1", 2: tmp_path / "snap2"})
    assert (bias / "HILLS.0").read_bytes() == (tmp_path / "snap2/HILLS.0").read_bytes()
    assert (bias / "HILLS.1").read_bytes() == (tmp_path / "snap1/HILLS.1").read_bytes()


def test_a_first_generation_run_again_starts_without_hills(tmp_path: Path) -> None:
    states = _campaign(tmp_path, 2)
    bias = tmp_path / "bias"
    rewind(bias, 1, {0: False, 1: False}, {1: tmp_path / "snap1"})
    assert count_hills(bias) == 0
    _generation(tmp_path, 1, states[0], tag="again")
    assert count_hills(bias) == 2 * STEPS // PACE


def test_the_generation_running_now_is_cut_back_to_its_start(tmp_path: Path) -> None:
    """The last generation, finished, runs again (its walker settings changed): each walker's
    file loses that generation's hills before any walker of it starts (with a shared bias, a
    walker started first must not feel the stale hills of one started later)."""
    _campaign(tmp_path, 2)
    bias = tmp_path / "bias"
    rewind(bias, 2, {0: False, 1: False}, {1: tmp_path / "snap1", 2: tmp_path / "snap2"})
    for k in (0, 1):
        assert (bias / f"HILLS.{k}").read_bytes() == (tmp_path / f"snap1/HILLS.{k}").read_bytes()


def test_nothing_moves_when_no_later_generation_ran(tmp_path: Path) -> None:
    _campaign(tmp_path, 2)
    bias = tmp_path / "bias"
    before = {k: (bias / f"HILLS.{k}").read_bytes() for k in (0, 1)}
    assert rewind(bias, 3, {0: False, 1: False}, {2: tmp_path / "snap2"}) == {}
    assert rewind(bias, 2, {0: True, 1: True}, {1: tmp_path / "snap1"}) == {}
    assert {k: (bias / f"HILLS.{k}").read_bytes() for k in (0, 1)} == before


def test_a_damaged_snapshot_is_named(tmp_path: Path) -> None:
    _campaign(tmp_path, 3)
    snap = tmp_path / "snap1/HILLS.1"
    snap.write_bytes(snap.read_bytes()[:-40])
    bias = tmp_path / "bias"
    before = {k: (bias / f"HILLS.{k}").read_bytes() for k in (0, 1)}
    with pytest.raises(
        WalkerError, match=r"generation 1's hills: .*snap1/HILLS.1: content differs"
    ):
        rewind(
            tmp_path / "bias", 2, {0: False, 1: False},
            {1: tmp_path / "snap1", 2: tmp_path / "snap2"},
        )  # fmt: skip
    # nothing rewound half: walker 0's file (its snapshot intact) is untouched too
    assert {k: (bias / f"HILLS.{k}").read_bytes() for k in (0, 1)} == before
