"""Try a PLUMED input in the real kernel on one structure, before any walker runs it.

:func:`load_in_kernel` feeds the cleaned input to a fresh PLUMED kernel line by line (so every
rejected action is reported with its source line, and actions that only fail because an earlier
one did are not reported twice), computes one step on the structure and reads every value back.
It talks to the kernel in PLUMED's own units (nm, ps, kJ/mol) and runs in a temporary directory:
the caller's directory gets no log, no backup and no HILLS.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units

from hillwalker.engines.plumed import KJ_PER_MOL, NM, PS, colvar_rows, parse_action

#: the file the check makes PLUMED print every value to (inside the temporary directory)
VALUES_FILE = "hillwalker-validate.colvar"


def load_in_kernel(
    lines: list[str],
    numbers: Sequence[int | None],
    atoms: Atoms,
    source: Path,
    temperature: float,
    timestep: float,
) -> tuple[list[str], list[tuple[str, float]]]:
    """Feed the lines to a real PLUMED kernel with ``atoms``, do one step, read every value.

    ``numbers``: each line's line number in ``source`` (None: unknown); ``temperature`` K,
    ``timestep`` fs. Returns (problems, [(value name, value in PLUMED units)]). Raises
    ImportError when there is no kernel to load.
    """
    from hillwalker.engines.plumed_kernel import PlumedKernelError, use_kernel

    try:
        use_kernel()
    except PlumedKernelError as exc:
        raise ImportError(str(exc)) from exc
    import plumed

    with (
        tempfile.TemporaryDirectory(prefix="hillwalker-validate-") as tmp,
        contextlib.chdir(tmp),
    ):
        kernel = plumed.Plumed()
        try:
            _start_kernel(kernel, len(atoms), temperature, timestep)
            problems = _read_lines(kernel, lines, numbers, source, len(atoms))
            try:
                kernel.cmd("readInputLine", f"PRINT ARG=* STRIDE=1 FILE={VALUES_FILE}")
                _one_step(kernel, atoms)
            except Exception as exc:  # plumed.PlumedError and whatever the wrapper raises
                problem, number = _step_problem(exc, lines, numbers, source)
                if not problems or number:
                    problems.append(problem)
                return problems, []
        finally:
            kernel.finalize()
        rows = list(colvar_rows(VALUES_FILE))
    values = rows[-1] if rows else {}
    return problems, [(name, value) for name, value in values.items() if name != "time"]


def _start_kernel(kernel: Any, n_atoms: int, temperature: float, timestep: float) -> None:
    kernel.cmd("setMDEngine", "python")
    # PLUMED's own units in and out: nm, ps, kJ/mol
    kernel.cmd("setNatoms", n_atoms)
    kernel.cmd("setTimestep", timestep * units.fs / PS)
    kernel.cmd("setKbT", units.kB * temperature / KJ_PER_MOL)
    kernel.cmd("setLogFile", "plumed.log")
    kernel.cmd("init")


def _read_lines(
    kernel: Any, lines: list[str], numbers: Sequence[int | None], source: Path, n_atoms: int
) -> list[str]:
    """Give the kernel every line; the problems, each with its source line."""
    problems: list[str] = []
    failed_labels: set[str] = set()
    for line, number in zip(lines, numbers, strict=True):
        where = f"{source}: line {number}" if number else f"{source}"
        label, action, keywords = parse_action(line)
        if _uses_any(keywords, failed_labels):
            # its cause is already reported; PLUMED would only say "not found"
            failed_labels.add(label or "")
            continue
        try:
            kernel.cmd("readInputLine", line)
        except Exception as exc:  # plumed.PlumedError and whatever the wrapper raises
            message = kernel_message(exc)
            if "out of range" in message:
                message += f" (the structure has {n_atoms} atoms, numbered 1 to {n_atoms})"
            named = f"{action} {label}" if label else action
            problems.append(f"{where}: {named}: {message}")
            if label:
                failed_labels.add(label)
    return problems


def _uses_any(keywords: Sequence[str], labels: set[str]) -> bool:
    """Whether an action uses (in ARG=… or any other key) a value of one of ``labels``."""
    if not labels:
        return False
    for word in keywords:
        if "=" not in word:
            continue
        for item in word.split("=", 1)[1].split(","):
            if item.split(".", 1)[0] in labels:
                return True
    return False


def _step_problem(
    exc: BaseException, lines: list[str], numbers: Sequence[int | None], source: Path
) -> tuple[str, int | None]:
    """The step's failure, and the line of the action PLUMED was calculating (if it says)."""
    message = kernel_message(exc)
    failing = re.search(r"while calculating ([^\s:]+)", message)
    label = failing.group(1) if failing else ""
    number = next(
        (
            n
            for line, n in zip(lines, numbers, strict=True)
            if (parse_action(line)[0] or "") == label
        ),
        None,
    )
    where = f"{source}: line {number}: {label}" if number else str(source)
    return f"{where}: fails on the start structure: {message}", number


def kernel_message(exc: BaseException) -> str:
    """PLUMED's error without its C++ source location lines, with the errors it was raised from.

    ``calc`` raises "An error happened while calculating metad" *from* the real reason ("Looking
    for a value outside the grid…"): both are kept.
    """
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < 5:
        lines = [ln.strip() for ln in str(current).splitlines()]
        kept = [ln for ln in lines if ln and not ln.startswith("(")]
        message = " ".join(kept) or type(current).__name__
        message = re.sub(r"^ERROR in input to action\s+", "", message)
        # "TORSION_SCALAR with label t : atom 99 out of range" -> "atom 99 out of range"
        parts.append(re.sub(r"^\S+ with label \S+ : ", "", message))
        current = current.__cause__ or current.__context__
    return ": ".join(parts)


def _one_step(kernel: Any, atoms: Atoms) -> None:
    n = len(atoms)
    periodic = bool(np.all(atoms.pbc)) and atoms.cell.rank == 3
    # PLUMED keeps pointers to these arrays until calc: each must stay referenced till then
    box = np.ascontiguousarray(np.asarray(atoms.cell) / NM)
    masses = np.ascontiguousarray(atoms.get_masses(), dtype=float)
    charges = np.zeros(n)
    positions = np.ascontiguousarray(atoms.get_positions() / NM)
    forces = np.zeros((n, 3))
    virial = np.zeros((3, 3))
    kernel.cmd("setStep", 0)
    if periodic:
        # a molecule in vacuum gets no box: any box would make PLUMED apply periodic images
        kernel.cmd("setBox", box)
    kernel.cmd("setMasses", masses)
    kernel.cmd("setCharges", charges)
    kernel.cmd("setPositions", positions)
    kernel.cmd("setForces", forces)
    kernel.cmd("setVirial", virial)
    kernel.cmd("calc")
