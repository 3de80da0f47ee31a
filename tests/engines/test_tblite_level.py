"""The tblite level on the real code: GFN1-xTB against CP2K's GFN1-xTB on MIL-53, derivatives by
finite differences, the SCF ladder, timeout and crash classes, isolated atoms, bad level files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from typer.testing import CliRunner

from hillwalker.cli import app
from hillwalker.engines.dataset import read_frames, write_frames
from hillwalker.engines.inprocess import child_env, run_child
from hillwalker.engines.levels import RESULT_FILE, LevelError, RunOptions, load_level
from hillwalker.engines.tblite_level import TbliteLevel

ROOT = Path(__file__).resolve().parents[2]
MIL53 = ROOT / "templates" / "mil53-al" / "levels"
GFN2 = ROOT / "templates" / "alanine-dipeptide" / "levels" / "gfn2.yaml"
DIPEPTIDE = ROOT / "templates" / "alanine-dipeptide" / "structure.xyz"
NP_CELL = ROOT / "tests" / "data" / "mil53_np_relaxed_xtb.extxyz"
PERTURBED = ROOT / "tests" / "data" / "mil53_xtb_frames.extxyz"

runner = CliRunner()


def _bare(path: Path, index: int = 0) -> Atoms:
    atoms = read_frames(path)[index]
    atoms.calc = None
    return atoms


def _level_file(tmp_path: Path, text: str, name: str = "level.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- against CP2K ------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", ["np_relaxed", "np_perturbed"])
def test_gfn1_agrees_with_cp2k_gfn1_on_mil53(tmp_path: Path, frame: str) -> None:
    """Both codes at GFN1-xTB, 1000 K Fermi smearing, Γ point, on the same frame.

    Measured (2 frames here, 6 perturbed frames in the issue report): tblite lies a near-constant
    +0.045…0.052 eV/atom above CP2K (relative energies between frames agree within 4 meV/atom);
    forces differ by 0.028–0.036 eV/Å RMS (max 0.15 eV/Å; ~2 % of the perturbed frames' force
    RMS of 1.6–2.4 eV/Å); the stress by up to 0.006 (np cell) … 0.014 eV/Å³ (strained frames).
    tblite's stress equals its finite-difference stress (test below), so the stress gap is in
    the implementations (CP2K's GFN1 Ewald/dispersion), not the units or the sign. Tolerances
    are twice the largest difference seen; a unit mistake (Hartree vs eV: ×27) or another
    method would break them by far.
    """
    atoms = _bare(NP_CELL) if frame == "np_relaxed" else _bare(PERTURBED, 0)
    options = RunOptions(cores=1, timeout=600)
    cp2k = load_level(MIL53 / "xtb.inp").single_point(atoms, tmp_path / "cp2k", options)
    tblite = load_level(MIL53 / "gfn1-tblite.yaml").single_point(atoms, tmp_path / "tb", options)
    assert cp2k.status == tblite.status == "done", (cp2k.message, tblite.message)
    assert cp2k.energy is not None and tblite.energy is not None
    assert cp2k.forces is not None and tblite.forces is not None
    assert cp2k.stress is not None and tblite.stress is not None
    per_atom = (tblite.energy - cp2k.energy) / len(atoms)
    df = tblite.forces - cp2k.forces
    ds = tblite.stress - cp2k.stress
    print(
        f"\n{frame}: dE {per_atom * 1000:.1f} meV/atom; dF rms {np.sqrt((df**2).mean()):.4f} "
        f"max {np.abs(df).max():.4f} eV/Å; dstress max {np.abs(ds).max():.5f} eV/Å³"
    )
    assert 0.0 < per_atom < 0.1
    assert np.sqrt((df**2).mean()) < 0.07 and np.abs(df).max() < 0.3
    assert np.abs(ds).max() < 0.03


# --- derivatives ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def silicon() -> tuple[Atoms, TbliteLevel]:
    """A rattled, sheared 8-atom silicon cell (periodic, non-zero forces and stress)."""
    atoms = bulk("Si", cubic=True)
    atoms.rattle(0.05, seed=3)
    atoms.set_cell(atoms.cell.array @ [[1.0, 0.02, 0.0], [0.0, 0.98, 0.0], [0.0, 0.0, 1.01]],
                   scale_atoms=True)  # fmt: skip
    level = load_level(MIL53 / "gfn1-tblite.yaml")
    assert isinstance(level, TbliteLevel)
    tight = level.settings.model_copy(update={"accuracy": 0.001})
    return atoms, TbliteLevel(name="tight", path=level.path, settings=tight)


def _energy(atoms: Atoms, level: TbliteLevel) -> float:
    atoms = atoms.copy()
    atoms.calc = level.calculator(cores=1)
    return float(atoms.get_potential_energy())


def test_forces_are_minus_the_energy_gradient(silicon: tuple[Atoms, TbliteLevel]) -> None:
    atoms, level = silicon
    probe = atoms.copy()
    probe.calc = level.calculator(cores=1)
    forces = probe.get_forces()
    h = 1e-3
    for i, k in [(0, 0), (3, 1), (6, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += h
        minus.positions[i, k] -= h
        numeric = -(_energy(plus, level) - _energy(minus, level)) / (2 * h)
        assert forces[i, k] == pytest.approx(numeric, abs=2e-3), (i, k)
    assert np.abs(forces).max() > 0.1  # the check is not on a zero force


def test_stress_is_the_strain_derivative_per_volume(silicon: tuple[Atoms, TbliteLevel]) -> None:
    """ASE's stress: σ = (1/V) ∂E/∂ε, positive = tensile (measured on MIL-53 too: xx −0.0056348
    by finite differences vs −0.0056358 eV/Å³ analytic)."""
    atoms, level = silicon
    probe = atoms.copy()
    probe.calc = level.calculator(cores=1)
    stress = probe.get_stress(voigt=False)
    h = 1e-4
    for i, j in [(0, 0), (2, 2), (0, 1)]:
        energies = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[i, j] += sign * h / 2
            eps[j, i] += sign * h / 2
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
            energies.append(_energy(strained, level))
        numeric = (energies[0] - energies[1]) / (2 * h) / atoms.get_volume()
        assert stress[i, j] == pytest.approx(numeric, abs=2e-5), (i, j)
    assert np.abs(stress).max() > 1e-3


# --- through the level interface ----------------------------------------------------------------


def test_a_molecule_through_the_interface(tmp_path: Path) -> None:
    level = load_level(GFN2)
    before = dict(os.environ)
    atoms = _bare(DIPEPTIDE)
    result = level.single_point(atoms, tmp_path / "sp", RunOptions(cores=1, timeout=300))
    assert result.status == "done", result.message
    assert (result.code, result.level, result.level_digest) == ("tblite", "gfn2", level.digest())
    assert result.forces is not None and result.forces.shape == (22, 3)
    assert result.stress is None and result.corrections == []
    assert result.energy is not None and -1500 < result.energy / len(atoms) < -10  # eV
    record = json.loads((tmp_path / "sp" / RESULT_FILE).read_text())
    assert record["code"] == "tblite" and record["energy_eV"] == result.energy
    assert dict(os.environ) == before  # the worker's environment is not touched
    assert child_env(3)["OMP_NUM_THREADS"] == "3"  # the child's threads are its own


def test_an_unconverged_scf_climbs_the_ladder(tmp_path: Path) -> None:
    path = _level_file(tmp_path, "code: tblite\nmethod: GFN2-xTB\nmax_iterations: 2\n")
    result = load_level(path).single_point(_bare(DIPEPTIDE), tmp_path / "sp", RunOptions())
    assert result.status == "done", result.message
    names = [c["name"] for c in result.corrections]
    assert names[0] == "more_iterations" and result.attempts == len(names) + 1
    assert result.corrections[0]["set"] == {"max_iterations": 4}


def test_a_timeout_kills_the_child(tmp_path: Path) -> None:
    start = time.perf_counter()
    level = load_level(MIL53 / "gfn1-tblite.yaml")
    result = level.single_point(_bare(NP_CELL), tmp_path / "sp", RunOptions(timeout=0.5))
    assert (result.status, result.failure) == ("failed", "timeout")
    assert time.perf_counter() - start < 10


def test_a_child_that_dies_is_a_crash(tmp_path: Path) -> None:
    run = run_child("os:_exit", (3,), tmp_path, "attempt-1", cores=1, timeout=60)
    assert run.labels is None and run.failure == "crash" and "exit status 3" in (run.message or "")


def test_isolated_atoms_are_computed_once_per_level(tmp_path: Path) -> None:
    level = load_level(GFN2)
    assert isinstance(level, TbliteLevel)
    energies = level.isolated_atom_energies(["H", "C", "H"], tmp_path)
    assert set(energies) == {"C", "H"} and energies["C"] < energies["H"] < 0
    cache = tmp_path / f"isolated_atoms_{level.digest()}.json"
    assert json.loads(cache.read_text()) == energies
    again = level.isolated_atom_energies(["C"], tmp_path, RunOptions(timeout=1e-9))
    assert again == {"C": energies["C"]}  # from the cache: nothing ran (no time to run anything)


# --- bad inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("code: tblite\nmethod: GFN3-xTB\n", "method: unknown method 'GFN3-xTB'"),
        ("code: tblite\nmethod: GFN2-xTB\nelectronic_temprature: 300\n", "electronic_temprature"),
        ("code: tblite\nmethod: GFN2-xTB\nmax_iterations: 0\n", "max_iterations"),
        ("code: turbomole\nmethod: GFN2-xTB\n", "code: unknown code 'turbomole'"),
        ("method: GFN2-xTB\n", "code: missing"),
    ],
)
def test_a_bad_level_file_is_one_line_naming_file_and_key(
    tmp_path: Path, text: str, key: str
) -> None:
    path = _level_file(tmp_path, text)
    with pytest.raises(LevelError) as err:
        load_level(path)
    assert str(err.value).startswith(f"{path}: ") and key in str(err.value)
    assert "\n" not in str(err.value)


def test_the_cli_refuses_bad_inputs_and_writes_nothing(tmp_path: Path) -> None:
    frames = tmp_path / "frames.extxyz"
    write_frames(frames, [Atoms("U2", positions=[[0, 0, 0], [0, 0, 2.5]])])
    out = tmp_path / "out.extxyz"
    cases = {
        _level_file(tmp_path, "code: tblite\nmethod: gfn9\n", "a.yaml"): "method",
        MIL53 / "gfn1-tblite.yaml": "missing_kind: GFN1-xTB has no parameters for U",
    }
    for level, expected in cases.items():
        result = runner.invoke(app, ["label", str(level), str(frames), "-o", str(out)])
        assert result.exit_code == 1, result.output
        assert str(level) in result.stderr and expected in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml", "frames.extxyz"]


def test_a_missing_tblite_is_one_line_install_hint(tmp_path: Path) -> None:
    frames = tmp_path / "frames.extxyz"
    write_frames(frames, [_bare(DIPEPTIDE)])
    out = tmp_path / "out.extxyz"
    script = (
        "import sys; sys.modules['tblite'] = None; sys.modules['tblite.ase'] = None\n"
        "from hillwalker.cli import main\n"
        f"sys.argv = ['hillwalker', 'label', {str(GFN2)!r}, {str(frames)!r}, '-o', {str(out)!r}]\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"error: {GFN2}: code: tblite is not installed: pip install 'hillwalker[tblite]'"
    ]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames.extxyz"]
