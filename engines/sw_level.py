"""A Stillinger–Weber level of theory (Si, Ge): a YAML level file with ``code: stillinger-weber``.

::

    code: stillinger-weber
    parameters: Si        # or Ge

The two- plus three-body potential of Stillinger and Weber, computed by matscipy's many-body
calculator (``matscipy.calculators.manybody.Manybody`` with
``explicit_forms.StillingerWeber``; PyPI ``matscipy``). Parameter sets:

- ``Si``: F. H. Stillinger and T. A. Weber, Phys. Rev. B 31, 5262 (1985) — matscipy's
  ``Stillinger_Weber_PRB_31_5262_Si`` (ε 2.1683 eV, σ 2.0951 Å, λ 21.0).
- ``Ge``: K. Ding and H. C. Andersen, Phys. Rev. B 34, 6987 (1986) — the same functional form
  with ε 1.93 eV, σ 2.181 Å, λ 31.0 (matscipy ships no Ge set; the other constants are the Si
  ones: A 7.049556277, B 0.6022245584, p 4, q 0, a 1.80, γ 1.20, cos θ₀ −1/3).

By construction the ideal diamond lattice at its equilibrium bond length 2^(1/6) σ has the energy
−2ε per atom: Si −4.3366 eV/atom at a = 5.431 Å, Ge −3.86 eV/atom at a = 5.654 Å (checked in
the tests). A free atom has zero energy. Energy (eV), forces (eV/Å) and, for a 3D-periodic frame,
the stress (eV/Å³, ASE's sign) through ASE. The potential is a few milliseconds of numpy per
frame, so a single point runs in the worker's own process (a child process would cost 100 times
the calculation); an exception of the code is the frame's ``crash``, and ``timeout`` is not
enforced. The level covers one element: the parameter set's.

This is the paper's cheap reference for transfer across elements (Röcken & Zavadlav, J. Chem.
Inf. Model. 2025: SW silicon → SW germanium); see docs/element-transfer.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from ase import Atoms
from pydantic import Field, field_validator

from hillwalker.engines.inprocess import settings_digest
from hillwalker.engines.level_files import LevelSettings, parse_settings
from hillwalker.engines.levels import (
    LevelError,
    ResultBook,
    RunOptions,
    SinglePointResult,
    fresh_workdir,
    refusal,
)

#: the parameter sets, named by their element
PARAMETER_SETS = ("Si", "Ge")
#: Ding & Andersen's germanium: the Stillinger–Weber form with these values, the rest the Si ones
GE_DING_ANDERSEN = {
    "__ref__": "K. Ding and H. C. Andersen, Phys. Rev. B 34, 6987 (1986)",
    "el": "Ge",
    "epsilon": 1.93,
    "sigma": 2.181,
    "lambda1": 31.0,
}


def parameters(name: str) -> dict[str, Any]:
    """matscipy's Stillinger–Weber parameter dictionary of the set ``name`` (Si or Ge)."""
    from matscipy.calculators.manybody.explicit_forms.stillinger_weber import (
        Stillinger_Weber_PRB_31_5262_Si,
    )

    if name == "Si":
        return dict(Stillinger_Weber_PRB_31_5262_Si)
    if name == "Ge":
        return {**Stillinger_Weber_PRB_31_5262_Si, **GE_DING_ANDERSEN}
    raise ValueError(f"unknown Stillinger-Weber parameter set {name!r} (Si or Ge)")


def calculator(name: str) -> Any:
    """An ASE calculator (matscipy ``Manybody``) of the parameter set ``name``."""
    from matscipy.calculators.manybody import Manybody
    from matscipy.calculators.manybody.explicit_forms import StillingerWeber

    return Manybody(**StillingerWeber(parameters(name)))


class StillingerWeberSettings(LevelSettings):
    code: Literal["stillinger-weber"] = Field(description="Which code reads this file.")
    parameters: str = Field(
        description="Parameter set: Si (Stillinger & Weber 1985) or Ge (Ding & Andersen 1986)."
    )

    @field_validator("parameters")
    @classmethod
    def _known_set(cls, value: str) -> str:
        for name in PARAMETER_SETS:
            if value.strip().lower() == name.lower():
                return name
        raise ValueError(f"unknown parameter set {value!r} (one of {', '.join(PARAMETER_SETS)})")


@dataclass(frozen=True)
class StillingerWeberLevel:
    """A Stillinger–Weber level of one element, computed by matscipy in this process."""

    code: ClassVar[str] = "stillinger-weber"

    name: str
    path: Path
    settings: StillingerWeberSettings

    @property
    def element(self) -> str:
        return self.settings.parameters

    def digest(self) -> str:
        values = {k: v for k, v in parameters(self.element).items() if k != "__ref__"}
        return settings_digest(self.code, {"parameters": self.element, **values})

    def check_elements(self, symbols: Iterable[str]) -> None:
        other = sorted(set(symbols) - {self.element})
        if other:
            raise LevelError(
                f"{self.path}: parameters: missing_kind: the {self.element} Stillinger-Weber "
                f"potential has no parameters for {', '.join(other)}"
            )

    def single_point(self, atoms: Atoms, workdir: Path, options: RunOptions) -> SinglePointResult:
        """Energy, forces and (3D-periodic frames) stress; never raises for the frame."""
        start = time.perf_counter()
        work = fresh_workdir(workdir)
        book = ResultBook(work, self.name, self.digest(), self.code, started=start)
        refused = refusal(atoms, self, options.min_distance)
        if refused:
            return book.failed(*refused, attempts=0)
        try:
            energy, forces, stress = compute(atoms, self.element)
        except Exception as exc:  # any error of the code is this frame's crash, with its message
            book.code_seconds = time.perf_counter() - start
            return book.failed("crash", f"{type(exc).__name__}: {exc}".splitlines()[0], 1)
        book.code_seconds = time.perf_counter() - start
        return book.done(energy, forces, stress, attempts=1)

    def calculator(self, cores: int | None = None) -> Any:
        """This level as an ASE calculator for MD in this process (``cores``: unused, numpy)."""
        return calculator(self.element)

    def isolated_atom_energies(
        self, elements: Iterable[str], cache_dir: Any = None, options: RunOptions | None = None
    ) -> dict[str, float]:
        """Free-atom energies: zero for Stillinger–Weber (no neighbour, no term)."""
        wanted = sorted(set(elements))
        self.check_elements(wanted)
        return dict.fromkeys(wanted, 0.0)


def compute(atoms: Atoms, element: str) -> tuple[float, np.ndarray, np.ndarray | None]:
    """(energy eV, forces eV/Å, stress eV/Å³ Voigt or None without 3D periodicity)."""
    frame = atoms.copy()
    if not frame.pbc.any():
        # matscipy's neighbour list needs a box: a molecule or cluster gets one with room
        # around it (translation changes no label)
        frame.center(vacuum=10.0)
    frame.calc = calculator(element)
    energy = float(frame.get_potential_energy())
    forces = np.array(frame.get_forces())
    stress = np.array(frame.get_stress()) if frame.pbc.all() and frame.cell.rank == 3 else None
    return energy, forces, stress


def from_settings(path: Path, data: dict[str, Any]) -> StillingerWeberLevel:
    """The level in a YAML file already read (what ``level_files.load`` calls)."""
    try:
        import matscipy.calculators.manybody  # noqa: F401
    except ImportError:
        raise LevelError(
            f"{path}: code: stillinger-weber needs matscipy, which is not installed: "
            "pip install matscipy"
        ) from None
    return StillingerWeberLevel(
        name=path.stem, path=path, settings=parse_settings(StillingerWeberSettings, path, data)
    )
