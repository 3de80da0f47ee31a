"""Single points of library codes (tblite, PySCF) in a child Python process.

The codes are Python libraries, but each attempt still runs in a child process
(``python -m hillwalker.engines.inprocess IN OUT``): the deadline of a single point can then be
kept by killing the child (a ``signal.alarm`` cannot interrupt a long call into Fortran or C,
and only works in the main thread), a crash of the library (a segfault) is a ``crash`` of one
frame rather than the death of the worker, and the child's threads are set through its own
environment (``OMP_NUM_THREADS`` = the cores it was given), never by changing the worker's.

:func:`single_point` is the loop both codes share: refuse a frame the level cannot take, run an
attempt, and on an unconverged SCF climb a ladder of settings changes (:class:`Rung`, recorded
as data in ``corrections``) while the timeout leaves time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from hillwalker.engines.files import atomic_open
from hillwalker.engines.levels import (
    ResultBook,
    RunOptions,
    SinglePointResult,
    free_atom_energies,
    fresh_workdir,
    refusal,
)
from hillwalker.engines.processes import die_with_parent


class ScfNotConverged(RuntimeError):  # noqa: N818 (the failure class's own name)
    """Raised inside the child when the code's SCF (or CC iterations) did not converge."""


@dataclass(frozen=True)
class Labels:
    """What an attempt computed, in ASE units."""

    energy: float  # eV
    forces: np.ndarray | None  # eV/Å; None where the method has no analytic gradient
    stress: np.ndarray | None  # eV/Å³ Voigt, ASE sign; None without pbc
    scf_steps: int | None = None
    seconds: float = 0.0  # inside the code


@dataclass(frozen=True)
class ChildRun:
    """One attempt in a child process: its labels, or why there are none."""

    labels: Labels | None
    failure: str | None  # "scf_not_converged" | "crash" | "timeout"
    message: str | None
    seconds: float  # the child from start to exit (Python start-up and imports too)


@dataclass(frozen=True)
class Rung:
    """One step of an SCF ladder over a settings mapping: ``scale`` multiplies numbers (up to
    ``cap``), ``at_least`` raises them, ``set`` sets values. A rung that changes nothing is
    skipped."""

    name: str
    scale: tuple[tuple[str, float], ...] = ()
    at_least: tuple[tuple[str, float], ...] = ()
    set: tuple[tuple[str, Any], ...] = ()
    cap: float = 1000

    def apply(self, settings: dict[str, Any]) -> dict[str, Any] | None:
        """Edit ``settings`` in place; the edit made (``{"name", "set"}``), or None."""
        changed: dict[str, Any] = {}
        for key, factor in self.scale:
            new = min(type(settings[key])(settings[key] * factor), self.cap)
            if new > settings[key]:
                changed[key] = new
        for key, minimum in self.at_least:
            if settings[key] < minimum:
                changed[key] = minimum
        changed.update({k: v for k, v in self.set if settings.get(k) != v})
        if not changed:
            return None
        settings.update(changed)
        return {"name": self.name, "set": changed}


class ChildLevel(Protocol):
    """What :func:`single_point` needs of a level that computes in a child process."""

    name: str

    @property
    def code(self) -> str: ...

    def digest(self) -> str: ...

    def check_elements(self, symbols: Any) -> None: ...

    def run_settings(self) -> dict[str, Any]: ...  # what the child's compute function gets


class ChildProcessLevel:
    """What every level computed in a child process shares (tblite, PySCF): the single point,
    free-atom energies and the free atom's own level. A subclass is a frozen dataclass with a
    ``settings`` pydantic model holding ``charge`` and ``multiplicity``."""

    #: ``"module:function"`` the child calls with the frame and the level's run settings
    compute: ClassVar[str]
    #: the SCF retry ladder, as data
    ladder: ClassVar[tuple[Rung, ...]]
    settings: Any

    def digest(self) -> str:
        raise NotImplementedError

    def single_point(self, atoms: Atoms, workdir: Path, options: RunOptions) -> SinglePointResult:
        level: ChildLevel = self  # type: ignore[assignment]  # every subclass is one
        return single_point(
            atoms, level, workdir, options, compute=self.compute, ladder=self.ladder
        )

    def isolated_atom_energies(
        self,
        elements: Iterable[str],
        cache_dir: str | os.PathLike[str],
        options: RunOptions | None = None,
    ) -> dict[str, float]:
        """Free-atom energies (eV) per element, cached in ``cache_dir`` by this level's digest."""
        return isolated_atom_energies(
            self.digest(),
            self.free_atom,
            elements,
            cache_dir,
            options or RunOptions(),
            compute=self.compute,
            ladder=self.ladder,
        )

    def calculator(self, cores: int | None = None) -> Any:
        """An ASE calculator computing this level in this process (no child, no ladder, no
        timeout): for a delta-learning baseline evaluated at every MD step. ``cores`` is not
        applied here (a subclass that can set its threads per call overrides this)."""
        level: ChildLevel = self  # type: ignore[assignment]  # every subclass is one
        return InProcessCalculator(self.compute, level.run_settings())

    def free_atom(self, multiplicity: int) -> Any:
        """This level for a neutral free atom of the given spin multiplicity."""
        free = self.settings.model_copy(update={"multiplicity": multiplicity, "charge": 0})
        return dataclasses.replace(self, settings=free)  # type: ignore[type-var]


class InProcessCalculator(Calculator):  # type: ignore[misc]
    """A level's ``compute`` function (``"module:function"``) as an ASE calculator in this
    process; a property the method does not give (forces of FCI, stress of a molecule) raises
    PropertyNotImplementedError when asked for."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]  # noqa: RUF012

    def __init__(self, compute: str, settings: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._compute = _resolve(compute)
        self._settings = dict(settings)

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        got = self._compute(self.atoms.copy(), dict(self._settings))
        self.results = {"energy": got.energy, "free_energy": got.energy}
        for key, value in (("forces", got.forces), ("stress", got.stress)):
            if value is not None:
                self.results[key] = np.asarray(value, dtype=float)
            elif key in properties:
                raise PropertyNotImplementedError(f"{key}: this level does not give it")


def single_point(
    atoms: Atoms,
    level: ChildLevel,
    workdir: str | os.PathLike[str],
    options: RunOptions,
    *,
    compute: str,
    ladder: Sequence[Rung],
) -> SinglePointResult:
    """Label ``atoms`` with ``compute`` (``"module:function"``, called in the child as
    ``function(atoms, settings) -> Labels``), climbing ``ladder`` on an unconverged SCF."""
    start = time.perf_counter()
    work = fresh_workdir(workdir, "attempt-*")
    book = ResultBook(work, level.name, level.digest(), level.code, started=start)
    refused = refusal(atoms, level, options.min_distance)  # type: ignore[arg-type]
    if refused:
        return book.failed(*refused, attempts=0)
    settings = level.run_settings()
    rungs = list(ladder)
    attempt = 0
    while True:
        attempt += 1
        remaining = _remaining(options.timeout, start)
        if remaining is not None and remaining <= 0:
            return book.failed("timeout", f"no time left for attempt {attempt}", attempt - 1)
        run = run_child(
            compute, (atoms, dict(settings)), work, f"attempt-{attempt}", options.cores, remaining
        )
        book.process_seconds += run.seconds
        if run.labels is not None:
            book.code_seconds += run.labels.seconds
            got = run.labels
            return book.done(
                got.energy, got.forces, got.stress, attempts=attempt, scf_steps=got.scf_steps
            )
        failure, message = run.failure or "crash", run.message or "no result"
        if failure == "timeout":
            message = f"{message} (timeout {options.timeout} s)"
        edit = _next_rung(rungs, settings) if failure == "scf_not_converged" else None
        if edit is None:
            return book.failed(failure, f"{message} ({work}, attempt {attempt})", attempt)
        book.corrections.append(edit)


def isolated_atom_energies(
    digest: str,
    free_atom_level: Callable[[int], ChildLevel],
    elements: Any,
    cache_dir: str | os.PathLike[str],
    options: RunOptions,
    *,
    compute: str,
    ladder: Sequence[Rung],
) -> dict[str, float]:
    """Free-atom energies (eV) of a child-process level (``free_atom_level(multiplicity)`` is
    the level for a neutral atom of that spin), cached by ``digest``."""

    def label(symbol: str, multiplicity: int, workdir: Path) -> SinglePointResult:
        atom = Atoms(symbol, pbc=False)
        level = free_atom_level(multiplicity)
        return single_point(atom, level, workdir, options, compute=compute, ladder=ladder)

    return free_atom_energies(digest, free_atom_level(1).name, elements, cache_dir, label)


def settings_digest(code: str, settings: dict[str, Any]) -> str:
    """Content hash of a level's settings (the ones that change the numbers)."""
    blob = json.dumps({"code": code, **settings}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _remaining(timeout: float | None, start: float) -> float | None:
    return None if timeout is None else timeout - (time.perf_counter() - start)


def _next_rung(rungs: list[Rung], settings: dict[str, Any]) -> dict[str, Any] | None:
    while rungs:
        edit = rungs.pop(0).apply(settings)
        if edit is not None:
            return edit
    return None


def child_env(cores: int) -> dict[str, str]:
    """The child's environment: the worker's, with every thread pool set to ``cores``."""
    n = str(max(1, cores))
    return dict(
        os.environ, OMP_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, MKL_NUM_THREADS=n, OMP_DYNAMIC="0"
    )


def run_child(
    compute: str,
    args: tuple[Any, ...],
    work: Path,
    stem: str,
    cores: int,
    timeout: float | None,
) -> ChildRun:
    """``compute(*args)`` in a child process (``stem.in.pkl`` → ``stem.out.pkl``, its output in
    ``stem.log``), killed with its process group after ``timeout`` s."""
    inp, out, log_path = (work / f"{stem}{s}" for s in (".in.pkl", ".out.pkl", ".log"))
    inp.write_bytes(pickle.dumps((compute, args)))
    out.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "hillwalker.engines.inprocess", str(inp), str(out)]
    started = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(cores),
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            return ChildRun(
                None, "timeout", "killed at the deadline", time.perf_counter() - started
            )
        except BaseException:
            _kill(proc)  # interrupted: leave nothing behind
            raise
    seconds = time.perf_counter() - started
    if out.is_file():
        outcome = pickle.loads(out.read_bytes())  # noqa: S301 (our own child wrote it)
        if isinstance(outcome, Labels):
            return ChildRun(outcome, None, None, seconds)
        return ChildRun(None, outcome[0], outcome[1], seconds)
    tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
    return ChildRun(None, "crash", f"exit status {proc.returncode}: {tail}", seconds)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the child owns no files that need a clean exit
    proc.wait()


def _resolve(compute: str) -> Callable[..., Labels]:
    module, _, name = compute.partition(":")
    fn: Callable[..., Labels] = getattr(importlib.import_module(module), name)
    return fn


def main(argv: Sequence[str]) -> int:
    """The child: run the pickled call, write its :class:`Labels` or ``(failure, message)``."""
    # run as ``-m``, this module is ``__main__``: the codes raise the package module's class
    from hillwalker.engines.inprocess import ScfNotConverged as PackageScfNotConverged

    inp, out = Path(argv[0]), Path(argv[1])
    compute, args = pickle.loads(inp.read_bytes())  # noqa: S301 (written by our parent)
    outcome: Any
    try:
        outcome = _resolve(compute)(*args)
    except PackageScfNotConverged as exc:
        outcome = ("scf_not_converged", str(exc))
    except Exception as exc:  # any library error is one frame's crash, with its message
        outcome = ("crash", f"{type(exc).__name__}: {exc}".splitlines()[0])
    with atomic_open(out, "wb") as handle:  # a killed child leaves no half-written result
        handle.write(pickle.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
