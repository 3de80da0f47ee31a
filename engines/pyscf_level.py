"""A PySCF level of theory for molecules: a YAML level file with ``code: pyscf``.

::

    code: pyscf
    method: ccsd(t)      # hf, mp2, ccsd, ccsd(t), fci, or a DFT functional (pbe, b3lyp, …)
    basis: cc-pvtz       # any basis built into PySCF
    charge: 0
    multiplicity: 1      # 2S+1: 1 → restricted (RHF), otherwise unrestricted (UHF)
    max_cycle: 100       # SCF iterations
    conv_tol: 1.0e-9     # SCF energy convergence, Hartree

Energies in eV; forces (eV/Å) where PySCF has analytic gradients (HF, DFT, MP2), energy-only
labels otherwise (CCSD, CCSD(T), FCI: ``forces=None``), or their forces by central differences
(``finite_difference_step: 0.001``, Å; 6N + 1 energies per frame, for small molecules). Periodic frames are refused. Each
attempt runs in a child process (:mod:`hillwalker.engines.inprocess`) with ``OMP_NUM_THREADS`` =
the cores given; an unconverged SCF climbs :data:`LADDER` (more cycles, level shift + damping,
second-order SCF).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from ase import Atoms, units
from pydantic import Field, field_validator, model_validator

from hillwalker.engines.inprocess import (
    ChildProcessLevel,
    Labels,
    Rung,
    ScfNotConverged,
    settings_digest,
)
from hillwalker.engines.level_files import LevelSettings, check_spin, parse_settings, require
from hillwalker.engines.levels import LevelError

#: wavefunction methods; anything else must be a DFT functional libxc knows
WAVEFUNCTION_METHODS = ("hf", "mp2", "ccsd", "ccsd(t)", "fci")
#: methods with analytic nuclear gradients in PySCF that this level uses (DFT too)
GRADIENT_METHODS = ("hf", "mp2")
_COMPUTE = "hillwalker.engines.pyscf_level:compute"

LADDER = (
    Rung("more_cycles", scale=(("max_cycle", 2.0),)),
    Rung("level_shift_damping", set=(("level_shift", 0.5), ("damp", 0.5))),
    Rung("second_order_scf", set=(("newton", True),)),
)


class PyscfSettings(LevelSettings):
    code: Literal["pyscf"] = Field(description="Which code reads this file.")
    method: str = Field(description="hf, mp2, ccsd, ccsd(t), fci, or a DFT functional name.")
    basis: str = Field(description="Basis set built into PySCF, e.g. sto-3g, cc-pvdz.")
    charge: int = Field(0, description="Total charge, e.")
    multiplicity: int = Field(1, ge=1, description="Spin multiplicity 2S+1.")
    max_cycle: int = Field(100, gt=0, description="SCF iterations before 'not converged'.")
    conv_tol: float = Field(1e-9, gt=0, description="SCF energy convergence, Hartree.")
    max_memory: int = Field(4000, gt=0, description="PySCF's memory limit, MB.")
    finite_difference_step: float | None = Field(
        None,
        gt=0,
        le=0.05,
        description="Å. Forces of a method without analytic gradients (ccsd, ccsd(t), fci) by "
        "central differences with this step: 6N + 1 energies per frame. Unset: energy only.",
    )

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        method = value.strip().lower()
        if method in WAVEFUNCTION_METHODS:
            return method
        from pyscf.dft import libxc

        try:
            libxc.parse_xc(method)
        except (KeyError, ValueError):
            known = ", ".join(WAVEFUNCTION_METHODS)
            raise ValueError(f"unknown method {value!r} ({known}, or a DFT functional)") from None
        return method

    @model_validator(mode="after")
    def _differences_only_without_gradients(self) -> PyscfSettings:
        if self.finite_difference_step is not None and (
            self.method in GRADIENT_METHODS or is_dft(self.method)
        ):
            raise ValueError(
                f"finite_difference_step: method {self.method} has analytic forces; the step is "
                "for methods without them (ccsd, ccsd(t), fci)"
            )
        return self

    @field_validator("basis")
    @classmethod
    def _known_basis(cls, value: str) -> str:
        from pyscf.gto import basis

        if basis._format_basis_name(value) not in basis.ALIAS:
            raise ValueError(f"unknown basis {value!r}: not among PySCF's built-in basis sets")
        return value.strip().lower()


@dataclass(frozen=True)
class PyscfLevel(ChildProcessLevel):
    """A molecular level computed by PySCF."""

    compute: ClassVar[str] = _COMPUTE
    ladder: ClassVar[tuple[Rung, ...]] = LADDER
    code: ClassVar[str] = "pyscf"

    name: str
    path: Path
    settings: PyscfSettings

    @property
    def has_forces(self) -> bool:
        method = self.settings.method
        analytic = is_dft(method) or method in GRADIENT_METHODS
        return analytic or self.settings.finite_difference_step is not None

    def digest(self) -> str:
        return settings_digest(self.code, self.run_settings())

    def run_settings(self) -> dict[str, Any]:
        # level_shift, damp, newton: the SCF ladder's knobs, off until it climbs
        # unset optional keys stay out, so adding one leaves earlier levels' digests as they were
        settings = self.settings.model_dump(exclude={"code"}, exclude_none=True)
        return {**settings, "level_shift": 0.0, "damp": 0.0, "newton": False}

    def check_elements(self, symbols: Iterable[str]) -> None:
        basis = self.settings.basis
        missing = [s for s in sorted(set(symbols)) if not _basis_covers(basis, s)]
        if missing:
            raise LevelError(
                f"{self.path}: basis: missing_kind: {basis} has no functions for "
                f"{', '.join(missing)}"
            )

    def check_frame(self, atoms: Atoms) -> None:
        """LevelError for a periodic frame (molecules only) or an impossible spin."""
        if atoms.pbc.any():
            raise LevelError(
                f"{self.path}: code: pyscf levels are for molecules, this frame is periodic "
                f"(pbc={atoms.pbc.tolist()}): use a tblite or CP2K level"
            )
        check_spin(self.path, atoms, self.settings.charge, self.settings.multiplicity)


def from_settings(path: Path, data: dict[str, Any]) -> PyscfLevel:
    """The level in a YAML file already read (what ``level_files.load`` calls)."""
    require("pyscf", "pyscf", path)
    return PyscfLevel(name=path.stem, path=path, settings=parse_settings(PyscfSettings, path, data))


def is_dft(method: str) -> bool:
    return method not in WAVEFUNCTION_METHODS


@functools.cache
def _basis_covers(basis: str, symbol: str) -> bool:
    import warnings

    from pyscf import gto

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "install basis-set-exchange": not an answer here
        try:
            return bool(gto.basis.load(basis, symbol))
        except (gto.basis.BasisNotFoundError, KeyError, RuntimeError):
            return False


# --- in the child process ---------------------------------------------------------------------


def compute(atoms: Atoms, settings: dict[str, Any]) -> Labels:
    """One attempt: the energy (eV) and the forces (eV/Å): analytic for HF/DFT/MP2, by central
    differences for the others when ``finite_difference_step`` is set."""
    started = time.perf_counter()
    energy, gradient = _energy_gradient(atoms.get_chemical_symbols(), atoms.positions, settings)
    forces = None if gradient is None else -np.asarray(gradient) * (units.Hartree / units.Bohr)
    step = settings.get("finite_difference_step")
    if forces is None and step:
        forces = _central_differences(atoms, settings, float(step))
    return Labels(
        float(energy) * units.Hartree, forces, None, seconds=time.perf_counter() - started
    )


def _energy_gradient(
    symbols: list[str], positions: np.ndarray, settings: dict[str, Any]
) -> tuple[float, Any]:
    """(energy in Hartree, gradient in Hartree/bohr or None) of one geometry (Å)."""
    from pyscf import gto

    mol = gto.M(
        atom=[(s, tuple(p)) for s, p in zip(symbols, positions, strict=True)],
        unit="Angstrom",
        basis=settings["basis"],
        charge=settings["charge"],
        spin=settings["multiplicity"] - 1,
        max_memory=settings["max_memory"],
        verbose=0,
    )
    return _correlated(_converged_scf(mol, settings), settings["method"])


def _central_differences(atoms: Atoms, settings: dict[str, Any], step: float) -> np.ndarray:
    """Forces (eV/Å) as −(E(x + h) − E(x − h)) / 2h for every coordinate, h = ``step`` Å."""
    symbols = atoms.get_chemical_symbols()
    forces = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for k in range(3):
            energies = []
            for sign in (1.0, -1.0):
                moved = atoms.positions.copy()
                moved[i, k] += sign * step
                energies.append(_energy_gradient(symbols, moved, settings)[0])
            forces[i, k] = -(energies[0] - energies[1]) * units.Hartree / (2 * step)
    return forces


def _converged_scf(mol: Any, settings: dict[str, Any]) -> Any:
    from pyscf import dft, scf

    method, open_shell = settings["method"], settings["multiplicity"] > 1
    if is_dft(method):
        mf = dft.UKS(mol) if open_shell else dft.RKS(mol)
        mf.xc = method
    else:
        mf = scf.UHF(mol) if open_shell else scf.RHF(mol)
    mf.max_cycle, mf.conv_tol = settings["max_cycle"], settings["conv_tol"]
    mf.level_shift, mf.damp = settings["level_shift"], settings["damp"]
    if settings["newton"]:
        mf = mf.newton()
    mf.kernel()
    if not mf.converged:
        raise ScfNotConverged(f"SCF not converged in {settings['max_cycle']} cycles")
    return mf


def _correlated(mf: Any, method: str) -> tuple[float, Any]:
    """(energy in Hartree, gradient in Hartree/bohr or None) of ``method`` on a converged SCF."""
    from pyscf import cc, fci, mp

    if method == "hf" or is_dft(method):
        return mf.e_tot, mf.nuc_grad_method().kernel()
    if method == "mp2":
        pt = mp.MP2(mf).run()
        return pt.e_tot, pt.nuc_grad_method().kernel()
    if method == "fci":
        return fci.FCI(mf).kernel()[0], None
    coupled = cc.CCSD(mf).run()
    if not coupled.converged:
        raise ScfNotConverged("CCSD amplitudes not converged")
    if method == "ccsd(t)":
        return coupled.e_tot + coupled.ccsd_t(), None
    return coupled.e_tot, None
