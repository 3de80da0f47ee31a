"""The Stillinger–Weber level (matscipy) against the published numbers and its own derivatives:
cohesive energies of diamond Si and Ge, forces and stress by finite differences, level files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from hillwalker.engines.levels import (
    RESULT_FILE,
    LevelError,
    RunOptions,
    level_calculator,
    load_level,
)

LEVELS = Path(__file__).resolve().parents[2] / "templates" / "levels"
SI, GE = LEVELS / "sw-si.yaml", LEVELS / "sw-ge.yaml"


def _labels(level_file: Path, atoms: Atoms, work: Path):
    result = load_level(level_file).single_point(atoms, work, RunOptions(cores=1))
    assert result.status == "done", (result.failure, result.message)
    assert result.energy is not None and result.forces is not None
    return result


@pytest.mark.parametrize(
    ("level_file", "symbol", "a", "cohesive"),
    [
        # Stillinger & Weber 1985: -2ε = -4.3366 eV/atom at the experimental a = 5.431 Å
        (SI, "Si", 5.431, -4.3366),
        # Ding & Andersen 1986: -2ε = -3.86 eV/atom at a = 4·2^(1/6)σ/√3 = 5.654 Å
        (GE, "Ge", 5.654, -3.86),
    ],
)
def test_diamond_cohesive_energy_is_the_published_one(level_file, symbol, a, cohesive, tmp_path):
    crystal = bulk(symbol, "diamond", a=a, cubic=True).repeat(2)  # 64 atoms
    result = _labels(level_file, crystal, tmp_path / symbol)
    assert result.energy / len(crystal) == pytest.approx(cohesive, abs=2e-4)
    # a perfect crystal at (the rounded) equilibrium spacing: no force, nearly no stress (Ge's
    # 5.654 Å is 2e-4 Å short of 4·2^(1/6)σ/√3: 1.0e-4 eV/Å³, 16 MPa)
    assert np.abs(result.forces).max() < 1e-8
    assert result.stress is not None and np.abs(result.stress).max() < 3e-4
    # the record is written, and a lone atom has zero energy (the level's free-atom reference)
    record = json.loads((tmp_path / symbol / RESULT_FILE).read_text())
    assert record["code"] == "stillinger-weber" and record["energy_eV"] == result.energy
    atom = _labels(level_file, Atoms(symbol, pbc=False), tmp_path / f"{symbol}-atom")
    assert atom.energy == 0.0 and atom.stress is None
    assert load_level(level_file).isolated_atom_energies([symbol]) == {symbol: 0.0}  # type: ignore[attr-defined]


def _rattled(symbol: str, a: float) -> Atoms:
    atoms = bulk(symbol, "diamond", a=a, cubic=True)
    atoms.rattle(0.1, seed=7)
    atoms.set_cell(atoms.cell[:] @ np.array([[1.0, 0.02, 0.0], [0.0, 1.0, -0.03], [0.01, 0, 1]]))
    return atoms


@pytest.mark.parametrize(("level_file", "symbol", "a"), [(SI, "Si", 5.431), (GE, "Ge", 5.654)])
def test_forces_are_minus_the_energy_gradient(level_file, symbol, a, tmp_path):
    atoms = _rattled(symbol, a)
    result = _labels(level_file, atoms, tmp_path / "sp")
    calc = level_calculator(load_level(level_file))
    h = 1e-4
    numeric = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for k in range(3):
            energies = []
            for sign in (1, -1):
                probe = atoms.copy()
                probe.positions[i, k] += sign * h
                probe.calc = calc
                energies.append(probe.get_potential_energy())
            numeric[i, k] = -(energies[0] - energies[1]) / (2 * h)
    assert np.abs(result.forces).max() > 0.5  # a rattled frame: forces to check
    np.testing.assert_allclose(result.forces, numeric, atol=1e-6)


@pytest.mark.parametrize(("level_file", "symbol", "a"), [(SI, "Si", 5.431), (GE, "Ge", 5.654)])
def test_stress_is_the_strain_derivative_of_the_energy(level_file, symbol, a, tmp_path):
    """stress = (1/V) ∂E/∂ε (eV/Å³, positive = tensile), ASE's convention."""
    atoms = _rattled(symbol, a)
    atoms.set_cell(atoms.cell[:] * 0.98, scale_atoms=True)  # compressed: a sizeable stress
    result = _labels(level_file, atoms, tmp_path / "sp")
    calc = level_calculator(load_level(level_file))
    h = 1e-5
    numeric = np.zeros((3, 3))
    for i, j in [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]:
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[i, j] += sign * h / (1 if i == j else 2)
            if i != j:
                strain[j, i] += sign * h / 2
            probe = atoms.copy()
            probe.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
            probe.calc = calc
            energies.append(probe.get_potential_energy())
        numeric[i, j] = numeric[j, i] = (energies[0] - energies[1]) / (2 * h) / atoms.get_volume()
    voigt = numeric[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    assert result.stress is not None and np.abs(result.stress).max() > 1e-3
    np.testing.assert_allclose(result.stress, voigt, atol=1e-7)


def test_level_files_refuse_what_they_cannot_do(tmp_path):
    level = load_level(SI)
    assert (level.name, level.code) == ("sw-si", "stillinger-weber")
    assert level.digest() != load_level(GE).digest()
    # an element the parameter set does not cover: refused before anything runs
    mixed = bulk("Si", "diamond", a=5.431, cubic=True)
    mixed.symbols[0] = "Ge"
    result = level.single_point(mixed, tmp_path / "mixed", RunOptions())
    assert (result.status, result.failure) == ("failed", "missing_kind")
    assert "sw-si.yaml" in (result.message or "") and "Ge" in (result.message or "")
    with pytest.raises(LevelError, match=r"sw-si\.yaml: parameters: missing_kind"):
        level.check_elements(["Si", "C"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("code: stillinger-weber\nparameters: Sn\n")
    with pytest.raises(LevelError, match=r"bad\.yaml: parameters: unknown parameter set 'Sn'"):
        load_level(bad)
    bad.write_text("code: stillinger-weber\nparameters: si\ncutoff: 4\n")
    with pytest.raises(LevelError, match=r"bad\.yaml: cutoff: Extra inputs are not permitted"):
        load_level(bad)
    bad.write_text("code: stillinger-weber\nparameters: si\n")
    assert load_level(bad).settings.parameters == "Si"  # type: ignore[attr-defined]
