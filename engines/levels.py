"""Reference levels of theory: the interface the active-learning loop talks to.

A level is one way to label a frame with energy, forces and stress: a CP2K input today, other codes
later. The loop only ever holds a :class:`ReferenceLevel` (from :func:`load_level`) and asks it for a
:class:`SinglePointResult`; it never sees the code behind it, so adding a level from another code
means a new implementation and one line in :data:`_LOADERS`, not a change to the loop.

Every level refuses the same frames before its code starts (:func:`refusal`): an unsafe geometry
(:mod:`hillwalker.engines.geometry`, one threshold for walkers, ``label`` and ``run``) and
elements the level cannot treat.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from ase import Atoms

from hillwalker.engines.dataset import STATUS_DONE, STATUS_FAILED, label
from hillwalker.engines.files import atomic_write_json, low_disk_error, read_json
from hillwalker.engines.geometry import DEFAULT_MIN_DISTANCE, geometry_problem

__all__ = [
    "FAILURES",
    "RESULT_FILE",
    "LevelError",
    "ReferenceLevel",
    "RunOptions",
    "SinglePointResult",
    "check_frame",
    "check_frames",
    "level_calculator",
    "load_level",
    "refusal",
]

#: failure classes a :class:`SinglePointResult` can carry, whatever the code
FAILURES = ("scf_not_converged", "timeout", "crash", "bad_geometry", "missing_kind")

#: name of the record a finished single point leaves in its workdir (written last, atomically)
RESULT_FILE = "result.json"

# Which module reads a level file, by suffix; the module has ``load(path) -> ReferenceLevel``.
# A YAML level file names its code (``code: tblite``, ``code: pyscf``): see level_files.
_LOADERS = {
    ".inp": "hillwalker.engines.cp2k",
    ".yaml": "hillwalker.engines.level_files",
    ".yml": "hillwalker.engines.level_files",
}


class LevelError(ValueError):
    """A level file is unusable: the message names the file and the section or key."""


@dataclass(frozen=True)
class RunOptions:
    """How one single point runs: the site's resources and the campaign's safety settings."""

    cores: int = 1  # threads (or ranks, through ``command``) the code may use
    timeout: float | None = None  # seconds for the whole single point, all attempts together
    min_distance: float = DEFAULT_MIN_DISTANCE  # Å; a closer pair is refused as bad_geometry
    command: tuple[str, ...] | None = None  # launcher of a subprocess code; None: its default


@dataclass
class SinglePointResult:
    """One frame at one level: the labels in ASE units, or why there are none, with provenance."""

    status: str  # "done" | "failed"
    energy: float | None  # eV
    forces: np.ndarray | None  # eV/Å, (n, 3); None for an energy-only label (e.g. CCSD(T))
    stress: np.ndarray | None  # eV/Å³, Voigt (xx yy zz yz xz xy), ASE sign; None without pbc
    failure: str | None  # one of FAILURES
    corrections: list[dict[str, Any]]  # what was changed and rerun, as data, in order
    attempts: int
    code_seconds: float  # inside the code, by its own clock
    wall_seconds: float
    workdir: Path
    message: str | None = None  # why it failed, in a line
    scf_steps: int | None = None
    process_seconds: float = 0.0  # the code's processes from start to exit (MPI start-up too)
    level: str = ""  # the level's name
    level_digest: str = ""  # the level's settings hash
    code: str = ""  # which program computed it, e.g. "cp2k"

    @classmethod
    def read(cls, workdir: str | os.PathLike[str]) -> SinglePointResult | None:
        """The result a single point left in ``workdir`` (its ``RESULT_FILE``, written last
        and atomically, so it is complete when it exists), or None."""
        record = read_json(Path(workdir) / RESULT_FILE)
        if record is None or record.get("status") not in (STATUS_DONE, STATUS_FAILED):
            return None

        def array(key: str) -> np.ndarray | None:
            value = record.get(key)
            return None if value is None else np.asarray(value, dtype=float)

        return cls(
            status=record["status"],
            energy=record.get("energy_eV"),
            forces=array("forces_eV_per_A"),
            stress=array("stress_eV_per_A3"),
            failure=record.get("failure"),
            corrections=list(record.get("corrections") or []),
            attempts=int(record.get("attempts") or 0),
            code_seconds=float(record.get("code_seconds") or 0.0),
            wall_seconds=float(record.get("wall_seconds") or 0.0),
            workdir=Path(workdir),
            message=record.get("message"),
            scf_steps=record.get("scf_steps"),
            process_seconds=float(record.get("process_seconds") or 0.0),
            level=str(record.get("level") or ""),
            level_digest=str(record.get("level_digest") or ""),
            code=str(record.get("code") or ""),
        )

    def to_atoms(self, atoms: Atoms, **provenance: Any) -> Atoms:
        """A labeled copy of ``atoms`` (failed: an unlabeled copy) with status, failure and
        corrections (JSON text, so it survives extxyz) in ``info``."""
        info = {
            "status": self.status,
            "failure": self.failure,
            "corrections": json.dumps(self.corrections) if self.corrections else None,
            "failure_message": self.message,
            "level_digest": self.level_digest or None,
            **provenance,
        }
        if self.status == STATUS_DONE and self.energy is not None:
            return label(atoms, self.energy, self.forces, self.stress, **info)
        frame = atoms.copy()
        frame.calc = None
        for key in ("energy", "forces", "stress", "free_energy"):
            frame.info.pop(key, None)
        frame.info.update({k: v for k, v in info.items() if v is not None})
        return frame

    def as_record(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "energy_eV": self.energy,
            "forces_eV_per_A": None if self.forces is None else self.forces.tolist(),
            "stress_eV_per_A3": None if self.stress is None else self.stress.tolist(),
            "failure": self.failure,
            "message": self.message,
            "corrections": self.corrections,
            "attempts": self.attempts,
            "scf_steps": self.scf_steps,
            "level": self.level,
            "level_digest": self.level_digest,
            "code": self.code,
            "code_seconds": self.code_seconds,
            "process_seconds": self.process_seconds,
            "wall_seconds": self.wall_seconds,
        }


class ReferenceLevel(Protocol):
    """A level of theory as the loop sees it."""

    @property
    def name(self) -> str: ...  # short name stored with every frame, e.g. "xtb"

    @property
    def path(self) -> Path: ...  # the file it was read from

    @property
    def code(self) -> str: ...  # which program, e.g. "cp2k"

    def digest(self) -> str:
        """Hash of the settings that change the numbers (not comments or layout)."""
        ...

    def check_elements(self, symbols: Iterable[str]) -> None:
        """Raise :class:`LevelError`, naming the file and key, unless every element can be run."""
        ...

    def single_point(self, atoms: Atoms, workdir: Path, options: RunOptions) -> SinglePointResult:
        """Label ``atoms``; never raises for a problem of the frame or the code (see FAILURES)."""
        ...


def load_level(path: str | os.PathLike[str]) -> ReferenceLevel:
    """The level in ``path``, by its suffix (``*.inp``: CP2K; ``*.yaml``/``*.yml``: the code its
    ``code:`` key names); :class:`LevelError` otherwise."""
    p = Path(path)
    module = _LOADERS.get(p.suffix.lower())
    if module is None:
        known = ", ".join(f"*{s}" for s in sorted(_LOADERS))
        raise LevelError(f"{p}: not a level file this version can read (known: {known})")
    level: ReferenceLevel = importlib.import_module(module).load(p)
    return level


def level_calculator(level: ReferenceLevel, cores: int | None = None) -> Any:
    """An ASE calculator computing ``level`` in this process, for a baseline evaluated at every
    MD step (delta-learning); LevelError naming the file where the level cannot be one."""
    make = getattr(level, "calculator", None)
    if make is None:
        raise LevelError(
            f"{level.path}: code: {level.code} runs as a separate program for each single "
            "point; a delta-learning baseline is evaluated at every MD step and must run "
            "inside the walker's process (use a tblite or PySCF level, or the hierarchical "
            "method: an ML model of the baseline)"
        )
    if not getattr(level, "has_forces", True):
        raise LevelError(
            f"{level.path}: method: gives energies only (no analytic forces); a delta-learning "
            "baseline needs forces at every MD step"
        )
    return make(cores)


def refusal(
    atoms: Atoms, level: ReferenceLevel, min_distance: float = DEFAULT_MIN_DISTANCE
) -> tuple[str, str] | None:
    """(failure class, message) if ``atoms`` must not be sent to ``level`` at all, else None."""
    problem = geometry_problem(atoms, min_distance)
    if problem:
        return "bad_geometry", problem
    try:
        level.check_elements(atoms.get_chemical_symbols())
    except LevelError as exc:
        return "missing_kind", str(exc)
    try:
        check_frame(level, atoms)
    except LevelError as exc:
        return "bad_geometry", str(exc)
    return None


def check_frame(level: ReferenceLevel, atoms: Atoms) -> None:
    """The level's own check of a frame where it has one (e.g. PySCF: molecules only, a spin
    that fits the electrons); LevelError naming the level file and key otherwise."""
    check = getattr(level, "check_frame", None)
    if check is not None:
        check(atoms)


def check_frames(level: ReferenceLevel, frames: Iterable[Atoms]) -> None:
    """LevelError unless ``level`` covers every element of ``frames`` and accepts each frame
    (checked before anything runs)."""
    frames = list(frames)
    level.check_elements({s for f in frames for s in f.get_chemical_symbols()})
    for i, atoms in enumerate(frames):
        try:
            check_frame(level, atoms)
        except LevelError as exc:
            raise LevelError(f"{exc} (frame {i})") from None


def fresh_workdir(workdir: str | os.PathLike[str], *stale: str) -> Path:
    """``workdir``, created, without an earlier run's record or the files matching ``stale``
    (which would be mistaken for this run's)."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    for old in [work / RESULT_FILE, *(p for pattern in stale for p in work.glob(pattern))]:
        old.unlink(missing_ok=True)
    return work


@dataclass
class ResultBook:
    """What a single point has spent and changed so far; ``done``/``failed`` write the record
    (``RESULT_FILE``, atomically, last) and return the result."""

    workdir: Path
    level: str
    level_digest: str
    code: str
    started: float  # time.perf_counter() at the start
    corrections: list[dict[str, Any]] = field(default_factory=list)
    code_seconds: float = 0.0
    process_seconds: float = 0.0

    def done(
        self,
        energy: float,
        forces: np.ndarray | None,
        stress: np.ndarray | None,
        *,
        attempts: int,
        scf_steps: int | None = None,
    ) -> SinglePointResult:
        return self._finish(STATUS_DONE, energy, forces, stress, None, None, attempts, scf_steps)

    def failed(self, failure: str, message: str, attempts: int) -> SinglePointResult:
        """The failure, recorded; raises ENOSPC instead when the disk is full: a code that could
        not write its output has not failed on this frame, and is not recorded as if it had."""
        full = low_disk_error(self.workdir, f"{self.code} single point failed ({failure})")
        if full is not None:
            raise full
        return self._finish(STATUS_FAILED, None, None, None, failure, message, attempts, None)

    def _finish(
        self,
        status: str,
        energy: float | None,
        forces: np.ndarray | None,
        stress: np.ndarray | None,
        failure: str | None,
        message: str | None,
        attempts: int,
        scf_steps: int | None,
    ) -> SinglePointResult:
        result = SinglePointResult(
            status=status,
            energy=energy,
            forces=forces,
            stress=stress,
            failure=failure,
            corrections=self.corrections,
            attempts=attempts,
            code_seconds=self.code_seconds,
            wall_seconds=time.perf_counter() - self.started,
            workdir=self.workdir,
            message=message,
            scf_steps=scf_steps,
            process_seconds=self.process_seconds,
            level=self.level,
            level_digest=self.level_digest,
            code=self.code,
        )
        atomic_write_json(self.workdir / RESULT_FILE, result.as_record())
        return result


# Ground-state spin multiplicities (2S+1) of free atoms (Hund's rules).
GROUND_STATE_MULTIPLICITY = {
    "H": 2, "He": 1, "Li": 2, "Be": 1, "B": 2, "C": 3, "N": 4, "O": 3, "F": 2, "Ne": 1,
    "Na": 2, "Mg": 1, "Al": 2, "Si": 3, "P": 4, "S": 3, "Cl": 2, "Ar": 1, "K": 2, "Ca": 1,
    "Sc": 2, "Ti": 3, "V": 4, "Cr": 7, "Mn": 6, "Fe": 5, "Co": 4, "Ni": 3, "Cu": 2, "Zn": 1,
    "Ga": 2, "Ge": 3, "As": 4, "Se": 3, "Br": 2, "Kr": 1, "Zr": 3, "Ag": 2, "Cd": 1,
}  # fmt: skip


def free_atom_energies(
    digest: str,
    name: str,
    elements: Iterable[str],
    cache_dir: str | os.PathLike[str],
    label: Callable[[str, int, Path], SinglePointResult],
) -> dict[str, float]:
    """Energy (eV) of each element as a free, neutral atom in its ground-state spin, at the level
    whose settings hash is ``digest``: ``label(symbol, multiplicity, workdir)`` computes one.

    Cached in ``cache_dir/isolated_atoms_<digest>.json``, so each level computes each element
    once. :class:`RuntimeError` naming the element and the level if one fails.
    """
    cache = Path(cache_dir)
    cache_file = cache / f"isolated_atoms_{digest}.json"
    known: dict[str, float] = dict(read_json(cache_file) or {})
    for symbol in sorted(set(elements)):
        if symbol in known:
            continue
        parity = 1 + Atoms(symbol).numbers[0] % 2  # 1 for an even number of electrons, else 2
        multiplicity = GROUND_STATE_MULTIPLICITY.get(symbol, parity)
        result = label(symbol, multiplicity, cache / f"atom_{digest}_{symbol}")
        if result.status != STATUS_DONE or result.energy is None:
            raise RuntimeError(
                f"isolated {symbol} atom at level {name} failed: {result.failure}: {result.message}"
            )
        known[symbol] = result.energy
        atomic_write_json(cache_file, known)
    return {s: known[s] for s in sorted(set(elements))}
