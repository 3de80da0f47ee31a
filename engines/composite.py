"""A potential that is the sum of parts: a QM baseline plus an ML delta, or ML plus ML.

Multi-fidelity potentials (delta-learning, hierarchical ML) are sums: the energy, forces and
stress of the whole are the sums of the parts'. :class:`SumCalculator` is that sum as one ASE
calculator, so walkers, ``evaluate`` and users' own scripts treat it like any other.

A part that gives no stress is refused for a periodic frame before any number is returned: ASE
code that reads ``get_stress()`` of a sum would otherwise see only the other parts' stress (ASE's
PLUMED calculator, for one, quietly uses a zero stress when a calculator lacks it), and an NPT
walker would collapse or blow up its cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

__all__ = ["OffsetCalculator", "PotentialError", "SumCalculator"]


class PotentialError(ValueError):
    """A potential cannot be built or used as asked; the message names the part or file."""


class SumCalculator(Calculator):  # type: ignore[misc]
    """Energy, forces and stress (periodic frames) of ``parts`` summed; ``part_results`` keeps
    each part's own numbers of the last frame, by name."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]  # noqa: RUF012

    def __init__(self, parts: Sequence[tuple[str, Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not parts:
            raise PotentialError("a sum of potentials needs at least one part")
        names = [name for name, _ in parts]
        if len(set(names)) != len(names):
            raise PotentialError(f"parts of a sum need distinct names, not {names}")
        self.parts = list(parts)
        self.part_results: dict[str, dict[str, Any]] = {}

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        frame = self.atoms
        periodic = bool(frame.pbc.all()) and frame.cell.rank == 3
        if periodic:
            for name, calc in self.parts:
                if "stress" not in getattr(calc, "implemented_properties", ()):
                    raise PotentialError(
                        f"part {name!r} ({type(calc).__name__}) gives no stress, and this frame "
                        "is periodic: the sum's stress would silently lack that part's"
                    )
        energy, forces = 0.0, np.zeros((len(frame), 3))
        stress = np.zeros(6)
        self.part_results = {}
        for name, calc in self.parts:
            probe = frame.copy()
            probe.calc = calc
            mine: dict[str, Any] = {"energy": float(probe.get_potential_energy())}
            mine["forces"] = np.array(probe.get_forces())
            if periodic:
                try:
                    mine["stress"] = np.array(probe.get_stress(voigt=True))
                except PropertyNotImplementedError as exc:
                    raise PotentialError(f"part {name!r} gives no stress: {exc}") from exc
                if not np.all(np.isfinite(mine["stress"])):
                    raise PotentialError(f"part {name!r} gives a stress that is not finite")
                stress += mine["stress"]
            energy += mine["energy"]
            forces += mine["forces"]
            self.part_results[name] = mine
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
        if periodic:
            self.results["stress"] = stress


class OffsetCalculator(Calculator):  # type: ignore[misc]
    """A constant energy per atom of each element (eV): no forces, no stress. The per-type energy
    references of one level of theory relative to another."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]  # noqa: RUF012

    def __init__(self, energies: dict[str, float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.energies = {str(k): float(v) for k, v in energies.items()}

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        symbols = self.atoms.get_chemical_symbols()
        missing = sorted(set(symbols) - set(self.energies))
        if missing:
            raise PotentialError(f"no energy reference for {', '.join(missing)}")
        energy = float(sum(self.energies[s] for s in symbols))
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": np.zeros((len(symbols), 3)),
            "stress": np.zeros(6),
        }
