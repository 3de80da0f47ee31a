"""Run CP2K on one frame: the subprocess (its own process group, killed whole on a timeout or an
interrupt), the units conversion, and :func:`single_point`, which puts them together with the
failure handlers.

``single_point`` never raises for a CP2K problem: whatever a handler cannot correct is returned as
a result with ``status="failed"`` and a failure class, so one bad frame never stops a campaign.
Inside, units are ASE's (eV, Å, eV/Å³, ASE stress sign); CP2K's Hartree, bohr and GPa (with the
opposite stress sign) are converted in :func:`to_ase_units` only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms, units

from hillwalker.engines.cp2k.handlers import (
    DEFAULT_LADDER,
    Corrector,
    ScfCorrection,
    default_handlers,
    diagnose,
)
from hillwalker.engines.cp2k.inputs import frame_input, write_input
from hillwalker.engines.cp2k.output import Cp2kOutput, Cp2kRun, parse_output
from hillwalker.engines.files import atomic_write_text
from hillwalker.engines.geometry import DEFAULT_MIN_DISTANCE
from hillwalker.engines.levels import ResultBook, SinglePointResult, fresh_workdir, refusal
from hillwalker.engines.processes import die_with_parent

if TYPE_CHECKING:
    from hillwalker.engines.cp2k.level import Level

#: how CP2K is started when the site says nothing else (``-i``/``-o`` are appended)
DEFAULT_COMMAND = ("cp2k.psmp",)


def single_point(
    atoms: Atoms,
    level: Level,
    workdir: str | os.PathLike[str],
    *,
    command: Sequence[str] = DEFAULT_COMMAND,
    omp_threads: int = 1,
    timeout: float | None = None,
    min_distance: float = DEFAULT_MIN_DISTANCE,
    ladder: Sequence[ScfCorrection] = DEFAULT_LADDER,
    crash_reruns: int = 1,
) -> SinglePointResult:
    """Energy, forces (and stress for a periodic frame) of ``atoms`` at ``level``.

    ``command`` launches CP2K (``-i``/``-o`` are appended), e.g. ``["mpirun", "-np", "2",
    "cp2k.psmp"]``. ``timeout`` (s) bounds the whole single point, all attempts together; on
    expiry the process group is killed. An SCF that does not converge goes up ``ladder``; a crash
    that CP2K did not explain is rerun unchanged up to ``crash_reruns`` times (see
    :mod:`~hillwalker.engines.cp2k.handlers`); each correction is recorded in ``corrections``.
    Every file goes into ``workdir``: ``attempt-N.inp/.out`` and, last, ``result.json``.
    """
    start = time.perf_counter()
    work = fresh_workdir(workdir, "attempt-*")
    book = ResultBook(work, level.name, level.digest(), level.code, started=start)
    refused = refusal(atoms, level, min_distance)
    if refused:
        return book.failed(*refused, attempts=0)
    tree = frame_input(atoms, level)
    periodic = bool(np.all(atoms.pbc))
    corrector = Corrector(default_handlers(ladder, crash_reruns))
    attempt = 0
    while True:
        attempt += 1
        remaining = None if timeout is None else timeout - (time.perf_counter() - start)
        if remaining is not None and remaining <= 0:
            message = f"no time left for attempt {attempt} (timeout {timeout} s)"
            return book.failed("timeout", message, attempt - 1)
        run = run_cp2k(tree, work, f"attempt-{attempt}", command, omp_threads, remaining)
        book.code_seconds += run.output.cp2k_seconds or 0.0
        book.process_seconds += run.seconds
        if run.timed_out:
            message = (
                f"CP2K killed after the {timeout} s timeout (attempt {attempt}, {run.output_path})"
            )
            return book.failed("timeout", message, attempt)
        time_left = timeout is None or time.perf_counter() - start < timeout
        problem = diagnose(
            run, n_atoms=len(atoms), periodic=periodic, attempt=attempt, time_left=time_left
        )
        if problem is None:
            energy, forces, stress = to_ase_units(run.output, periodic)
            return book.done(
                energy, forces, stress, attempts=attempt, scf_steps=run.output.scf_steps
            )
        edit = corrector.correct(tree, problem)
        if edit is None:
            return book.failed(problem.failure, problem.message, attempt)
        book.corrections.append(edit)


def run_cp2k(
    tree: dict[str, Any],
    work: Path,
    stem: str,
    command: Sequence[str],
    omp_threads: int,
    timeout: float | None,
) -> Cp2kRun:
    """Write ``<stem>.inp``, run CP2K on it in ``work`` (at most ``timeout`` s), parse ``<stem>.out``."""
    inp, out = work / f"{stem}.inp", work / f"{stem}.out"
    atomic_write_text(inp, write_input(tree))
    out.unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(omp_threads))
    # A cp2k.psmp started without mpirun is an MPI singleton: by default Open MPI then forks a
    # helper daemon first (~0.3 s per run, measured); this run never spawns, so skip it.
    env.setdefault("OMPI_MCA_ess_singleton_isolated", "1")
    argv = [*command, "-i", inp.name, "-o", out.name]
    timed_out = False
    with (work / f"{stem}.stdout").open("wb") as log:
        started = time.perf_counter()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=work,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        except OSError as exc:
            return Cp2kRun(None, False, Cp2kOutput(), out, f"cannot start {argv[0]!r}: {exc}")
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        except BaseException:
            _kill_group(proc)  # interrupted (Ctrl-C, task cancelled): leave no CP2K behind
            raise
        seconds = time.perf_counter() - started
    text = out.read_text(errors="replace") if out.is_file() else ""
    stdout = (work / f"{stem}.stdout").read_text(errors="replace")
    tail = " | ".join(line.strip() for line in stdout.strip().splitlines()[-3:])
    return Cp2kRun(proc.returncode, timed_out, parse_output(text), out, tail, seconds)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to CP2K's whole process group (mpirun and its ranks, or a wrapper and its
    child), then SIGKILL to whatever of the group is left: the launcher may exit before the
    program it started has stopped."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # anyone left in the group (zombies included)?
        except ProcessLookupError:
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)


def to_ase_units(out: Cp2kOutput, periodic: bool) -> tuple[float, np.ndarray, np.ndarray | None]:
    """Energy (eV), forces (eV/Å) and Voigt stress (eV/Å³, ASE sign) from CP2K's numbers."""
    if out.energy_hartree is None or out.forces_hartree_bohr is None:
        raise ValueError("CP2K output without energy or forces")
    energy = out.energy_hartree * units.Hartree
    forces = out.forces_hartree_bohr * (units.Hartree / units.Bohr)
    stress = None
    if periodic and out.stress_gpa is not None:
        # CP2K prints the stress with the opposite sign to ASE (positive = compressive there).
        s = -out.stress_gpa * units.GPa
        stress = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    return energy, forces, stress
