"""Walker segments with the real PLUMED kernel and real MD (an ASE Lennard-Jones trimer; NequIP
MIL-53 for NPT): shared hills across concurrent processes, restart across generations, a
killed segment re-run, safety, molecules in vacuum."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

from hillwalker.engines.plumed import (
    KJ_PER_MOL,
    bias_from_hills,
    count_hills,
    read_hills,
)
from hillwalker.engines.walkers import Walker, WalkerError, WalkerSettings, run_segment

sys.path.insert(0, str(Path(__file__).parent))
from walker_job import PLUMED_INPUT, PausingLJ, lj_settings, trimer

JOB = Path(__file__).with_name("walker_job.py")


def start_job(tmp_path: Path, name: str, **job: object) -> subprocess.Popen:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(job))
    return subprocess.Popen(
        [sys.executable, str(JOB), str(path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 180) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out


def colvar(path: Path) -> np.ndarray:
    return np.loadtxt(path, comments="#", ndmin=2)


# ------------------------------------------------------------------------- shared bias


def test_two_concurrent_walkers_share_hills(tmp_path: Path) -> None:
    """Walker 0 feels walker 1's hills: its bias (COLVAR, every step after walker 1 finished and
    one read stride passed) equals its own earlier hills plus all of HILLS.1, summed from the
    files; and walker 1's part is far from zero."""
    bias = tmp_path / "bias"
    done_1 = tmp_path / "w1" / "result.json"
    pause_at = 100  # walker 0 waits at its 100th model call until walker 1 is done
    walker_0 = start_job(
        tmp_path, "w0", workdir=str(tmp_path / "w0"), bias_dir=str(bias), walker=0,
        n_walkers=2, steps=300, seed=10, pause_at=pause_at, pause_until=str(done_1),
    )  # fmt: skip
    walker_1 = start_job(
        tmp_path, "w1", workdir=str(tmp_path / "w1"), bias_dir=str(bias), walker=1,
        n_walkers=2, steps=200, seed=11,
    )  # fmt: skip
    finish(walker_1)
    finish(walker_0)

    hills = read_hills(bias)
    own, other = hills.select(hills.walkers == 0), hills.select(hills.walkers == 1)
    assert len(own) == 60 and len(other) == 40
    trace = colvar(tmp_path / "w0" / "COLVAR")
    dt_ps = 0.005
    # model call k is step k-1; reads happen every 5 steps; so from here on all of HILLS.1 is in
    first_full = (pause_at - 1) // 5 * 5 + 5 + 1
    from_other = []
    for time_ps, cv, plumed_bias in trace:
        step = round(time_ps / dt_ps)
        if step < first_full:
            continue
        expected_own = bias_from_hills(own.before(time_ps), cv)[0]
        expected_other = bias_from_hills(other, cv)[0]
        assert plumed_bias * KJ_PER_MOL == pytest.approx(expected_own + expected_other, abs=1e-6), (
            f"step {step}"
        )
        from_other.append(expected_other)
    assert len(from_other) == 300 - first_full + 1
    assert max(from_other) > 0.5 * KJ_PER_MOL  # more than one hill's height from walker 1
    result = json.loads((tmp_path / "w0" / "result.json").read_text())
    expected_final = bias_from_hills(own.before(300 * dt_ps), result["cv"]["d"])[0]
    expected_final += bias_from_hills(other, result["cv"]["d"])[0]
    assert result["bias"] == pytest.approx(expected_final, abs=1e-6)
    log_1 = (tmp_path / "w1" / "plumed.log").read_text()
    assert f"Reading hills from {bias.resolve()}/HILLS.0" in log_1


def test_independent_walkers_do_not_share(tmp_path: Path) -> None:
    bias = tmp_path / "bias"
    settings = lj_settings(steps=50)
    first = run_segment(
        trimer(), PausingLJ(), PLUMED_INPUT, tmp_path / "w0", Walker(0, 1, 2, bias, "independent"),
        settings, seed=1,
    )  # fmt: skip
    second = run_segment(
        trimer(), PausingLJ(), PLUMED_INPUT, tmp_path / "w1", Walker(1, 1, 2, bias, "independent"),
        settings, seed=1,
    )  # fmt: skip
    assert first.hills_added == second.hills_added == 10
    assert first.hills == [bias.resolve() / "HILLS.0"]
    # same start, same seed: walker 1 ran exactly as walker 0 did, hills of walker 0 unfelt
    assert second.bias_start == 0.0
    assert second.final.info["bias"] == pytest.approx(first.final.info["bias"], abs=1e-12)
    assert (bias / "HILLS.0").read_text() != ""


# ------------------------------------------------------------------------- persistence


def test_bias_continues_across_generations(tmp_path: Path) -> None:
    bias = tmp_path / "bias"
    settings = lj_settings(steps=203)
    first = run_segment(
        trimer(), PausingLJ(), PLUMED_INPUT, tmp_path / "g1", Walker(0, 1, 1, bias), settings,
        seed=1,
    )  # fmt: skip
    assert (first.status, first.start_step, first.end_step) == ("done", 0, 203)
    hills_1 = count_hills(bias)
    assert hills_1 == first.hills_added == 40  # steps 5..200
    state = read(first.state_path)
    assert state.info["step"] == 203
    np.testing.assert_array_equal(state.get_momenta(), first.final.get_momenta())

    settings = lj_settings(steps=100)
    second = run_segment(
        first.state_path, PausingLJ(), PLUMED_INPUT, tmp_path / "g2", Walker(0, 2, 1, bias),
        settings, seed=2,
    )  # fmt: skip
    assert (second.start_step, second.end_step) == (203, 303)
    # the same state, the same hills: the bias at the start of generation 2 is the bias at the
    # end of generation 1 (step 203 deposits no hill)...
    assert second.bias_start == pytest.approx(first.final.info["bias"], abs=1e-9)
    assert second.bias_start > 5 * 0.5 * KJ_PER_MOL
    # ... and the sum of the Gaussians in the files (hills of generation 1) at that CV value
    cv_end_1 = first.final.info["cv"]["d"]
    hills_gen_1 = read_hills(bias).before(203 * 0.005)
    assert len(hills_gen_1) == hills_1
    assert bias_from_hills(hills_gen_1, cv_end_1)[0] == pytest.approx(second.bias_start, abs=1e-6)
    trace = colvar(second.colvar)
    assert trace[0, 0] == pytest.approx(203 * 0.005)  # PLUMED time runs on
    assert trace[0, 1] == pytest.approx(cv_end_1, abs=1e-12)
    assert count_hills(bias) == hills_1 + 20  # only grows: steps 205..300
    times = read_hills(bias).times
    assert np.all(np.diff(times) > 0)

    # a reset to the start structure keeps the bias and the step counter
    reset = run_segment(
        trimer(), PausingLJ(), PLUMED_INPUT, tmp_path / "g3", Walker(0, 3, 1, bias), settings,
        seed=3,
    )  # fmt: skip
    assert (reset.start_step, reset.end_step) == (303, 403)
    d0 = trimer().get_distance(0, 1) / 10
    hills_before = read_hills(bias).before(303 * 0.005)
    assert len(hills_before) == hills_1 + 20
    assert reset.bias_start == pytest.approx(bias_from_hills(hills_before, d0)[0], abs=1e-6)
    assert reset.bias_start > 0.5 * KJ_PER_MOL
    assert np.all(np.diff(read_hills(bias).times) > 0)


def test_bias_on_a_grid_continues_across_generations(tmp_path: Path) -> None:
    # the MIL-53 template biases on a grid: restarting rebuilds it from the files
    text = PLUMED_INPUT.replace("PACE=5", "PACE=5 GRID_MIN=0.2 GRID_MAX=1.2 GRID_BIN=2000")
    bias = tmp_path / "bias"
    settings = lj_settings(steps=103)
    first = run_segment(
        trimer(), PausingLJ(), text, tmp_path / "g1", Walker(0, 1, 2, bias), settings, seed=1
    )
    second = run_segment(
        first.state_path, PausingLJ(), text, tmp_path / "g2", Walker(0, 2, 2, bias), settings,
        seed=2,
    )  # fmt: skip
    assert first.hills_added == 20 and first.final.info["bias"] > 0.5 * KJ_PER_MOL
    assert second.bias_start == pytest.approx(first.final.info["bias"], abs=1e-9)


def test_going_from_one_walker_to_two_keeps_the_hills(tmp_path: Path) -> None:
    # PLUMED adds a 'clock' column for multiple walkers: the file then has two FIELDS blocks
    bias = tmp_path / "bias"
    settings = lj_settings(steps=52)
    one = run_segment(
        trimer(), PausingLJ(), PLUMED_INPUT, tmp_path / "g1", Walker(0, 1, 1, bias), settings,
        seed=1,
    )  # fmt: skip
    two = run_segment(
        one.state_path, PausingLJ(), PLUMED_INPUT, tmp_path / "g2", Walker(0, 2, 2, bias),
        settings, seed=1,
    )  # fmt: skip
    text = (bias / "HILLS.0").read_text()
    assert "clock" in text and text.count("#! FIELDS") == 2
    hills = read_hills(bias)
    assert len(hills) == count_hills(bias) == 20
    assert two.bias_start == pytest.approx(one.final.info["bias"], abs=1e-9)
    cv = one.final.info["cv"]["d"]
    assert bias_from_hills(hills.before(52 * 0.005), cv)[0] == pytest.approx(
        two.bias_start, abs=1e-6
    )


def test_killed_segment_rerun_does_not_duplicate_hills(tmp_path: Path) -> None:
    bias = tmp_path / "bias"
    workdir = tmp_path / "w0"
    job = start_job(
        tmp_path, "w0", workdir=str(workdir), bias_dir=str(bias), walker=0, n_walkers=1,
        steps=200_000, seed=5,
    )  # fmt: skip
    hills = bias / "HILLS.0"
    try:
        deadline = time.monotonic() + 120
        while not (hills.exists() and count_hills(hills) >= 12):
            assert job.poll() is None, job.communicate()[0]
            assert time.monotonic() < deadline, "the walker deposited no hills"
            time.sleep(0.05)
    finally:
        os.kill(job.pid, signal.SIGKILL)
        job.communicate()
    killed_hills = count_hills(hills)
    assert killed_hills >= 12
    record = json.loads((bias / ".segments" / "walker-0.json").read_text())
    assert record["status"] == "running"

    settings = lj_settings(steps=100)
    rerun = run_segment(
        trimer(), PausingLJ(), PLUMED_INPUT, workdir, Walker(0, 1, 1, bias), settings, seed=5
    )
    assert rerun.status == "done"
    assert rerun.events[0]["kind"] == "hills_rolled_back"
    assert rerun.events[0]["removed"] == killed_hills
    assert count_hills(hills) == rerun.hills_added == 20
    times = read_hills(hills).times
    np.testing.assert_allclose(times, 0.025 * np.arange(1, 21), atol=1e-12)
    # the COLVAR of the killed attempt is gone, not appended to
    assert len(colvar(rerun.colvar)) == 101
    # running the same generation again replaces it; the next generation adds to it
    again = run_segment(
        trimer(), PausingLJ(), PLUMED_INPUT, workdir, Walker(0, 1, 1, bias), settings, seed=5
    )
    assert count_hills(hills) == 20
    assert again.events[0] == {
        "step": 0, "kind": "hills_rolled_back", "removed": 20, "walker": 0, "generation": 1
    }  # fmt: skip
    run_segment(
        again.state_path, PausingLJ(), PLUMED_INPUT, tmp_path / "g2", Walker(0, 2, 1, bias),
        settings, seed=6,
    )  # fmt: skip
    assert count_hills(hills) == 40


def test_fewer_walkers_than_hills_files_is_refused(tmp_path: Path) -> None:
    bias = tmp_path / "bias"
    settings = lj_settings(steps=20)
    run_segment(
        trimer(), PausingLJ(), PLUMED_INPUT, tmp_path / "w2", Walker(2, 1, 3, bias), settings,
        seed=1,
    )  # fmt: skip
    assert count_hills(bias / "HILLS.2") == 4
    with pytest.raises(WalkerError, match=r"HILLS\.2 holds hills of walker 2, but n_walkers is 2"):
        run_segment(
            trimer(), PausingLJ(), PLUMED_INPUT, tmp_path / "w0", Walker(0, 2, 2, bias), settings,
            seed=1,
        )  # fmt: skip


def test_a_running_walker_is_locked(tmp_path: Path) -> None:
    bias = tmp_path / "bias"
    done = tmp_path / "release"
    job = start_job(
        tmp_path, "w0", workdir=str(tmp_path / "w0"), bias_dir=str(bias), walker=0,
        n_walkers=1, steps=20, seed=1, pause_at=5, pause_until=str(done),
    )  # fmt: skip
    record = bias / ".segments" / "walker-0.json"
    deadline = time.monotonic() + 60
    while not record.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    settings = lj_settings(steps=5)
    try:
        with pytest.raises(WalkerError, match="walker 0 is already running"):
            run_segment(
                trimer(), PausingLJ(), PLUMED_INPUT, tmp_path / "x", Walker(0, 1, 1, bias),
                settings, seed=1,
            )  # fmt: skip
    finally:
        done.write_text("go")
        finish(job)


# ------------------------------------------------------------------------- safety


def test_blow_up_goes_back_to_the_last_safe_state(tmp_path: Path) -> None:
    bias = tmp_path / "bias"
    # a force limit the hot trimer soon exceeds: a real check tripping in a real run
    settings = lj_settings(
        temperature=300.0, steps=400, max_force=0.05, check_stride=4, trajectory_stride=1
    )
    segment = run_segment(
        trimer(), PausingLJ(), PLUMED_INPUT, tmp_path / "w", Walker(0, 3, 1, bias), settings,
        seed=3,
    )  # fmt: skip
    assert segment.status == "blown_up"
    (event,) = segment.events
    assert event["kind"] == "blow_up" and "max_force 0.05" in event["reason"]
    assert event["walker"] == 0 and event["generation"] == 3
    assert 0 < segment.end_step == event["step"] == segment.steps_done < 400
    safe_step = event["reset_to_step"]
    assert safe_step % 4 == 0 and safe_step < event["step"]
    frames = read(tmp_path / "w" / "trajectory.traj", index=":")
    np.testing.assert_allclose(segment.final.positions, frames[safe_step].positions)
    # momenta re-drawn; the step counter keeps going; the bias is kept
    assert not np.allclose(segment.final.get_momenta(), frames[safe_step].get_momenta())
    assert segment.final.info["step"] == segment.end_step
    assert count_hills(bias) == segment.hills_added == segment.end_step // 5
    assert "blow-up at step" in segment.log.read_text()


def test_a_start_that_fails_the_checks_goes_to_last_safe(tmp_path: Path) -> None:
    crushed = trimer()
    crushed.positions[1] = [0.4, 0.0, 0.0]  # 0.4 Å: enormous LJ forces at the first evaluation
    crushed.info["step"] = 500
    safe = trimer()
    settings = lj_settings(steps=50)
    walker = Walker(0, 2, 1, tmp_path / "bias")
    segment = run_segment(
        crushed, PausingLJ(), PLUMED_INPUT, tmp_path / "a", walker, settings, seed=1,
        last_safe=safe,
    )  # fmt: skip
    assert segment.status == "blown_up" and segment.steps_done == 0
    assert segment.events[0]["reset_to"] == "last_safe"
    assert "max_force" in segment.events[0]["reason"]
    np.testing.assert_allclose(segment.final.positions, safe.positions)
    assert segment.final.info["step"] == 500  # the counter never goes back
    assert count_hills(tmp_path / "bias") == 0
    # without a last safe state the walker stays at its start (and says so)
    alone = run_segment(
        crushed, PausingLJ(), PLUMED_INPUT, tmp_path / "b", walker, settings, seed=1
    )
    assert alone.events[0]["reset_to"] == "start"
    np.testing.assert_allclose(alone.final.positions, crushed.positions)


def test_atoms_too_close_across_a_skewed_periodic_boundary(tmp_path: Path) -> None:
    from ase import Atoms

    cell = np.array([[6.0, 0.0, 0.0], [4.5, 5.0, 0.0], [1.0, 1.5, 7.0]])  # strongly skewed
    atoms = Atoms("Ar2", cell=cell, pbc=True, scaled_positions=[[0.5, 0.01, 0.5], [0.5, 0.5, 0.5]])
    # atom 1 0.5 Å from atom 0, but across the skewed face: wrapped, it lies a whole b away
    atoms.positions[1] = atoms.positions[0] + [0.0, -0.5, 0.0]
    atoms.wrap()
    assert atoms.get_distance(0, 1) > 2.0 and atoms.get_distance(0, 1, mic=True) < 0.51
    settings = lj_settings(
        temperature=10.0, timestep_fs=1.0, steps=5, max_force=1e12, max_temperature=1e12
    )
    segment = run_segment(
        atoms, PausingLJ(), PLUMED_INPUT, tmp_path / "w", Walker(0, 1, 1, tmp_path / "bias", "none"),
        settings, seed=1,
    )  # fmt: skip
    assert segment.status == "blown_up"
    assert (
        "atoms 0 (Ar) and 1 (Ar) are 0.500 Å apart (< min_distance 0.6 Å)"
        in segment.events[0]["reason"]
    )


def test_a_plumed_error_during_md_is_a_blow_up(tmp_path: Path) -> None:
    # the CV leaves METAD's grid: the kernel throws inside the force call
    text = PLUMED_INPUT.replace("PACE=5", "PACE=5 GRID_MIN=0.36 GRID_MAX=0.40 GRID_BIN=40")
    settings = lj_settings(temperature=300.0, steps=2000)
    segment = run_segment(
        trimer(), PausingLJ(), text, tmp_path / "w", Walker(0, 1, 1, tmp_path / "bias"), settings,
        seed=3,
    )  # fmt: skip
    assert segment.status == "blown_up"
    assert "PlumedError" in segment.events[0]["reason"]
    assert 0.36 <= segment.final.info["cv"]["d"] <= 0.40


# ------------------------------------------------------------------------- input and box


def test_molecule_in_vacuum_gets_no_periodic_box(tmp_path: Path) -> None:
    atoms = trimer()
    atoms.positions[1] = [6.0, 0.0, 0.0]
    atoms.cell = [10.0, 10.0, 10.0]  # a cell that would fold 6 Å to 4 Å if sent as a box
    atoms.pbc = False
    settings = lj_settings(temperature=1.0, timestep_fs=1.0, steps=2)
    segment = run_segment(
        atoms, PausingLJ(), PLUMED_INPUT, tmp_path / "w", Walker(0, 1, 1, tmp_path / "bias", "none"),
        settings, seed=1,
    )  # fmt: skip
    trace = colvar(segment.colvar)
    assert trace[0, 1] == pytest.approx(0.6, abs=1e-9)  # nm: the true distance
    assert trace.shape[1] == 2  # bias none: no metad.bias column
    assert segment.hills == [] and not (tmp_path / "bias").exists()
    np.testing.assert_allclose(segment.final.cell.lengths(), [10.0, 10.0, 10.0])
    assert "METAD" not in (tmp_path / "w" / "plumed.dat").read_text()


# ------------------------------------------------------------------------- NPT, MIL-53

DATA = Path(__file__).parents[1] / "data"
TEMPLATE = Path(__file__).parents[2] / "templates" / "mil53-al" / "plumed.dat"


def write_volume_ramp(path: Path) -> None:
    """Well-tempered hills (γ = 50, as in the template) piled up on the narrow-pore side.

    Heights fall linearly from 0.30 to 0.55 nm³, so the bias slopes down towards larger volumes
    from the np cell (0.365 nm³) to well past where an unbiased cell drifts in 200 fs (~0.41
    nm³): a push towards the large pore, as a filled np basin gives.
    """
    centres = np.arange(0.300, 0.550, 0.005)
    heights = 300.0 * (0.550 - centres)  # kJ/mol
    lines = ["#! FIELDS time v sigma_v height biasf", "#! SET multivariate false"]
    lines += [
        f"{0.001 * i:.3f} {c:.4f} 0.01 {h * 50 / 49:.10f} 50"
        for i, (c, h) in enumerate(zip(centres, heights, strict=True))
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_volume_bias_moves_the_mil53_cell_in_npt(tmp_path: Path, mil53_model) -> None:
    """Same start, seed and settings; with the bias the cell grows more than without it."""
    from hillwalker.engines.nequip import load_calculator

    start = read(DATA / "mil53_np_relaxed_xtb.extxyz")
    start.calc = None
    bias = tmp_path / "bias"
    bias.mkdir()
    write_volume_ramp(bias / "HILLS.0")
    ramp = read_hills(bias / "HILLS.0")
    v0 = start.get_volume() / 1000  # nm³
    slope = (bias_from_hills(ramp, v0 + 0.001) - bias_from_hills(ramp, v0 - 0.001))[0] / 0.002
    assert slope < -5.0  # eV/nm³: the bias pushes towards larger volumes

    settings = WalkerSettings(
        ensemble="npt", temperature=300.0, pressure=0.0, timestep_fs=1.0, steps=200,
        max_force=25.0, min_distance=0.6, max_temperature=3000.0,
        thermostat_time_fs=50.0, barostat_time_fs=100.0, cv_stride=5,
    )  # fmt: skip
    runs = {}
    for mode in ("shared", "none"):
        calculator = load_calculator(mil53_model.compiled, device="cpu")
        runs[mode] = run_segment(
            start, calculator, TEMPLATE, tmp_path / mode, Walker(0, 1, 1, bias, mode), settings,
            seed=7, model=str(mil53_model.compiled),
        )  # fmt: skip
        assert runs[mode].status == "done", runs[mode].events
    biased, unbiased = (colvar(runs[m].colvar)[:, 1] for m in ("shared", "none"))
    assert biased[0] == pytest.approx(v0, abs=1e-6) == unbiased[0]  # COLVAR: %f
    assert runs["shared"].bias_start == pytest.approx(bias_from_hills(ramp, v0)[0], abs=1e-3)
    # the second half of each 200 fs run, in Å³
    late_biased, late_unbiased = 1000 * biased[20:].mean(), 1000 * unbiased[20:].mean()
    assert late_biased > late_unbiased + 50.0, (late_biased, late_unbiased)
    assert runs["shared"].final.get_volume() > runs["none"].final.get_volume()
    assert runs["shared"].final.info["model"] == str(mil53_model.compiled)


def test_walker_and_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="bias 'both': expected one of shared"):
        Walker(0, 1, 1, Path("bias"), "both")
    with pytest.raises(ValueError, match=r"walker 2 is not one of 0\.\.1"):
        Walker(2, 1, 2, Path("bias"))
    # what campaign.yaml sets has no default of its own here (ensemble was nvt here, npt there)
    with pytest.raises(TypeError, match=r"missing .* keyword-only arguments"):
        WalkerSettings(steps=5)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="ensemble 'nve'"):
        lj_settings(ensemble="nve")
