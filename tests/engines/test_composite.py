"""The sum of potentials: the parts' numbers add up, the stress is a derivative, a part without
stress is refused for a periodic frame."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.calculators.lj import LennardJones
from ase.calculators.tip3p import TIP3P

from hillwalker.engines.composite import OffsetCalculator, PotentialError, SumCalculator


def strained_copper() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=1)
    atoms.set_cell(atoms.cell.array @ np.array([[1.02, 0.01, 0], [0, 0.99, 0.02], [0, 0, 1.01]]),
                   scale_atoms=True)  # fmt: skip
    return atoms


def parts() -> list[tuple[str, object]]:
    return [
        ("emt", EMT()),
        ("lj", LennardJones(sigma=2.3, epsilon=0.01, rc=5.0, smooth=True)),
        ("references", OffsetCalculator({"Cu": -1.25})),
    ]


def test_energy_forces_and_stress_are_the_sums_of_the_parts() -> None:
    atoms = strained_copper()
    total = atoms.copy()
    total.calc = SumCalculator(parts())
    energy, forces, stress = total.get_potential_energy(), total.get_forces(), total.get_stress()
    alone = []
    for _, calc in parts():
        probe = atoms.copy()
        probe.calc = calc
        alone.append((probe.get_potential_energy(), probe.get_forces(), probe.get_stress()))
    assert energy == pytest.approx(sum(a[0] for a in alone), abs=1e-6)
    np.testing.assert_allclose(forces, sum(a[1] for a in alone), atol=1e-6)
    np.testing.assert_allclose(stress, sum(a[2] for a in alone), atol=1e-6)
    # every part contributes: the sum is none of them alone
    assert min(abs(energy - a[0]) for a in alone) > 0.1
    assert abs(alone[1][2]).max() > 1e-4  # LJ's own stress is not negligible here
    assert total.calc.part_results["references"]["energy"] == pytest.approx(-1.25 * len(atoms))


def test_the_sums_stress_is_the_strain_derivative_of_its_energy() -> None:
    atoms = strained_copper()
    atoms.calc = SumCalculator(parts())
    numerical = calculate_numerical_stress(atoms, eps=1e-5, voigt=True)
    np.testing.assert_allclose(atoms.get_stress(), numerical, rtol=1e-4, atol=1e-7)
    numerical_forces = calculate_numerical_forces(atoms, eps=1e-5)
    np.testing.assert_allclose(atoms.get_forces(), numerical_forces, atol=1e-5)


def water_box(periodic: bool) -> Atoms:
    water = Atoms("OH2", positions=[[0, 0, 0], [0.9572, 0, 0], [-0.24, 0.927, 0]])
    water.center(vacuum=4.0)
    water.pbc = periodic
    return water


def test_a_part_without_stress_is_refused_for_a_periodic_frame() -> None:
    """TIP3P gives no stress: summed, it would silently drop its share of an NPT walker's."""
    box = water_box(periodic=True)
    box.calc = SumCalculator([("tip3p", TIP3P(rc=3.5)), ("lj", LennardJones(rc=3.0))])
    with pytest.raises(PotentialError, match=r"part 'tip3p'.*no stress"):
        box.get_potential_energy()
    molecule = water_box(periodic=False)
    molecule.calc = SumCalculator([("tip3p", TIP3P(rc=3.5)), ("lj", LennardJones(rc=3.0))])
    assert np.isfinite(molecule.get_potential_energy())
    assert molecule.get_forces().shape == (3, 3)


def test_parts_need_distinct_names_and_at_least_one() -> None:
    with pytest.raises(PotentialError, match="distinct names"):
        SumCalculator([("a", EMT()), ("a", EMT())])
    with pytest.raises(PotentialError, match="at least one part"):
        SumCalculator([])
