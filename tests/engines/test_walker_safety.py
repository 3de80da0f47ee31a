"""The walkers' safety limits on real MD runs with the real PLUMED kernel (about a second each):
the temperature limit (``safety.max_temperature``) on the LJ trimer of walker_job.py, and kept
covalent bonds (``safety.keep_bonds``) on a carbon trimer whose bias pulls a bond apart."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.lj import LennardJones
from ase.io import read

from hillwalker.engines.geometry import bond_change, bond_graph
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


#: a metadynamics bias on the C1-C2 distance, hills of 5 kJ/mol: it pulls that bond apart
PULL_APART = """
d: DISTANCE ATOMS=1,2
metad: METAD ARG=d SIGMA=0.01 HEIGHT=5 PACE=5
PRINT ARG=d,metad.bias STRIDE=1 FILE=COLVAR FMT=%24.14f
"""


def carbon_trimer() -> Atoms:
    """Three C atoms 1.4 Å apart: three C-C bonds (< 1.2 x 1.52 Å)."""
    return Atoms("C3", positions=[[0.0, 0.0, 0.0], [1.4, 0.0, 0.0], [0.7, 1.212, 0.0]])


def _pulled(tmp_path: Path, name: str, start: Atoms, keep: bool):  # type: ignore[no-untyped-def]
    settings = lj_settings(
        temperature=300.0, timestep_fs=1.0, steps=600, check_stride=1, trajectory_stride=1
    )
    return run_segment(
        start, LennardJones(sigma=1.247, epsilon=0.1, rc=6.0), PULL_APART, tmp_path / name,
        Walker(0, 1, 1, tmp_path / f"bias-{name}"), settings, seed=3,
        bonds=bond_graph(carbon_trimer()) if keep else None,
    )  # fmt: skip


def test_a_walker_stops_where_a_kept_bond_breaks_and_goes_back_to_its_last_intact_state(
    tmp_path: Path,
) -> None:
    graph = bond_graph(carbon_trimer())
    assert graph.bonds.tolist() == [[0, 1], [0, 2], [1, 2]]
    # without the check the walker runs on through the broken bond, to the end
    free = _pulled(tmp_path, "free", carbon_trimer(), keep=False)
    assert free.status == "done" and not free.events
    frames = read(tmp_path / "free" / "trajectory.traj", index=":")
    broken = [k for k, f in enumerate(frames) if bond_change(f, graph) is not None]
    assert broken and broken[-1] == len(frames) - 1, "the bias never broke the bond"
    first = broken[0]
    assert bond_change(free.final, graph) is not None  # and a next segment would start there
    # with it: the same segment (same seed) stops at that very step, named by its bond
    kept = _pulled(tmp_path, "kept", carbon_trimer(), keep=True)
    assert kept.status == "blown_up"
    (event,) = kept.events
    assert event["step"] == first
    assert event["reason"].startswith("bond 0 (C)–1 (C) broke: ")
    assert event["reason"].endswith(" > 2.28 Å (1.5 × the covalent radii)")
    # back to the step before, intact; the broken configuration is the frame to label
    assert event["reset_to_step"] == first - 1
    assert bond_change(kept.final, graph) is None
    np.testing.assert_allclose(kept.final.positions, frames[first - 1].positions, atol=1e-10)
    assert kept.failed is not None and bond_change(kept.failed, graph) is not None
    np.testing.assert_allclose(kept.failed.positions, frames[first].positions, atol=1e-10)


def test_a_walker_whose_start_is_broken_goes_back_to_the_bond_reference(tmp_path: Path) -> None:
    start = carbon_trimer()
    start.positions[1] = [2.6, 0.0, 0.0]  # C1-C2 at 2.6 Å > 2.28 Å
    segment = _pulled(tmp_path, "w", start, keep=True)
    (event,) = segment.events
    assert segment.status == "blown_up" and event["step"] == 0
    assert event["reset_to"] == "bond_reference"
    np.testing.assert_allclose(segment.final.positions, carbon_trimer().positions)
    assert segment.final.get_momenta().any()  # fresh momenta at the temperature


def test_a_walker_whose_intact_start_fails_another_check_stays_at_its_start(
    tmp_path: Path,
) -> None:
    start = carbon_trimer()
    start.positions[2] += [0.05, 0.0, 0.0]  # intact, but not the reference
    segment = run_segment(
        start, LennardJones(sigma=1.247, epsilon=0.1, rc=6.0), PULL_APART, tmp_path / "w",
        Walker(0, 1, 1, tmp_path / "bias"), lj_settings(max_force=1e-6),
        seed=3, bonds=bond_graph(carbon_trimer()),
    )  # fmt: skip
    (event,) = segment.events
    assert event["step"] == 0 and event["reason"].startswith("force ")
    assert event["reset_to"] == "start"
    np.testing.assert_allclose(segment.final.positions, start.positions)
