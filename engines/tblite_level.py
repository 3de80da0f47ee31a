"""A tblite level of theory (GFN1-xTB, GFN2-xTB): a YAML level file with ``code: tblite``.

::

    code: tblite
    method: GFN1-xTB              # or GFN2-xTB
    electronic_temperature: 300   # K (Fermi smearing)
    accuracy: 1.0                 # tblite's accuracy factor (smaller = tighter)
    charge: 0
    multiplicity: 1               # 2S+1
    max_iterations: 250
    mixer_damping: 0.4

Energy, forces, and the stress of a periodic frame, in ASE units (eV, eV/Å, eV/Å³, ASE sign).
A single point runs tblite in a child process (:mod:`hillwalker.engines.inprocess`: deadline,
crash isolation, ``OMP_NUM_THREADS`` = the cores given); :meth:`TbliteLevel.calculator` is the
same level as an in-process ASE calculator for MD, with its OpenMP threads set for each call and
restored after it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from pydantic import Field, field_validator

from hillwalker.engines.inprocess import (
    ChildProcessLevel,
    Labels,
    Rung,
    ScfNotConverged,
    settings_digest,
)
from hillwalker.engines.level_files import LevelSettings, check_spin, parse_settings, require
from hillwalker.engines.levels import LevelError

METHODS = ("GFN1-xTB", "GFN2-xTB")
#: both parametrisations cover H to Rn
MAX_Z = 86
_COMPUTE = "hillwalker.engines.tblite_level:compute"

#: more iterations → damped mixing → Fermi smearing at 1000 K → 2000 K and stronger damping.
#: The last two change the electronic temperature of the label: the corrections say so per frame.
LADDER = (
    Rung("more_iterations", scale=(("max_iterations", 2.0),)),
    Rung("damped_mixing", set=(("mixer_damping", 0.2),), at_least=(("max_iterations", 500),)),
    Rung("hotter_electrons", at_least=(("electronic_temperature", 1000.0),)),
    Rung(
        "hotter_electrons_damped",
        set=(("mixer_damping", 0.1),),
        at_least=(("electronic_temperature", 2000.0), ("max_iterations", 1000)),
    ),
)


class TbliteSettings(LevelSettings):
    code: Literal["tblite"] = Field(description="Which code reads this file.")
    method: str = Field(description="GFN1-xTB or GFN2-xTB (case-insensitive).")
    electronic_temperature: float = Field(300.0, gt=0, description="Fermi smearing, K.")
    accuracy: float = Field(1.0, gt=0, description="tblite's accuracy factor (smaller: tighter).")
    charge: int = Field(0, description="Total charge, e.")
    multiplicity: int = Field(1, ge=1, description="Spin multiplicity 2S+1.")
    max_iterations: int = Field(250, gt=0, description="SCF iterations before 'not converged'.")
    mixer_damping: float = Field(0.4, gt=0, le=1, description="Broyden mixer damping.")

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        for method in METHODS:
            if value.lower() == method.lower():
                return method
        raise ValueError(f"unknown method {value!r} (one of {', '.join(METHODS)})")


@dataclass(frozen=True)
class TbliteLevel(ChildProcessLevel):
    """A GFN-xTB level computed by tblite."""

    compute: ClassVar[str] = _COMPUTE
    ladder: ClassVar[tuple[Rung, ...]] = LADDER
    code: ClassVar[str] = "tblite"

    name: str
    path: Path
    settings: TbliteSettings

    def digest(self) -> str:
        return settings_digest(self.code, self.run_settings())

    def run_settings(self) -> dict[str, Any]:
        return self.settings.model_dump(exclude={"code"})

    def check_elements(self, symbols: Iterable[str]) -> None:
        missing = sorted({s for s in symbols if chemical_symbols.index(s) > MAX_Z})
        if missing:
            raise LevelError(
                f"{self.path}: method: missing_kind: {self.settings.method} has no parameters "
                f"for {', '.join(missing)} (H to Rn only)"
            )

    def check_frame(self, atoms: Atoms) -> None:
        """LevelError unless the frame is a molecule or periodic in all three directions."""
        if atoms.pbc.any() and not atoms.pbc.all():
            raise LevelError(
                f"{self.path}: code: tblite takes molecules or 3D-periodic frames, "
                f"not pbc={atoms.pbc.tolist()}"
            )
        check_spin(self.path, atoms, self.settings.charge, self.settings.multiplicity)

    def calculator(self, cores: int | None = None) -> Any:
        """An ASE calculator at this level (energy, forces, stress) for MD in this process;
        ``cores``: OpenMP threads during each call (None: the process's setting)."""
        from tblite.ase import TBLite

        class _Calculator(TBLite):  # type: ignore[misc]
            def calculate(self, *args: Any, **kwargs: Any) -> None:
                with omp_threads(cores):
                    super().calculate(*args, **kwargs)

        return _Calculator(**_calculator_parameters(self.run_settings()))


def from_settings(path: Path, data: dict[str, Any]) -> TbliteLevel:
    """The level in a YAML file already read (what ``level_files.load`` calls)."""
    require("tblite.ase", "tblite", path)
    return TbliteLevel(
        name=path.stem, path=path, settings=parse_settings(TbliteSettings, path, data)
    )


def _calculator_parameters(settings: dict[str, Any]) -> dict[str, Any]:
    return {**settings, "verbosity": 0}


def compute(atoms: Atoms, settings: dict[str, Any]) -> Labels:
    """One attempt (in the child process): energy, forces, stress (periodic) in ASE units."""
    import time

    from ase.calculators.calculator import CalculationFailed
    from tblite.ase import TBLite

    frame = atoms.copy()
    frame.calc = TBLite(**_calculator_parameters(settings))
    started = time.perf_counter()
    try:
        energy = frame.get_potential_energy()
        forces = frame.get_forces()
        stress = frame.get_stress() if frame.pbc.all() else None
    except CalculationFailed as exc:
        if "not converged" in str(exc):
            raise ScfNotConverged(str(exc)) from exc
        raise
    return Labels(
        float(energy),
        np.array(forces),
        None if stress is None else np.array(stress),
        seconds=time.perf_counter() - started,
    )


@functools.cache
def _libgomp() -> Any:
    try:
        return ctypes.CDLL("libgomp.so.1")  # the OpenMP runtime tblite's wheel links to
    except OSError:
        return None


@contextlib.contextmanager
def omp_threads(cores: int | None) -> Iterator[None]:
    """OpenMP threads of this thread set to ``cores`` for the block, restored after it."""
    lib = _libgomp() if cores else None
    if lib is None:
        yield
        return
    old = lib.omp_get_max_threads()
    lib.omp_set_num_threads(int(cores or 1))
    try:
        yield
    finally:
        lib.omp_set_num_threads(old)
