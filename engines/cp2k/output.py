"""Reading a CP2K output file: a pure function over its text, so it is tested on stored snippets.
Also the record of one CP2K run (:class:`Cp2kRun`) that the failure handlers look at.

Numbers are returned in CP2K's own units (Hartree, Hartree/bohr, GPa, CP2K's stress sign); the
conversion to ASE units happens once, in :mod:`hillwalker.engines.cp2k.run`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_ENERGY = re.compile(r"^\s*ENERGY\| Total FORCE_EVAL \( \w+ \) energy \[a\.u\.\]:\s+(\S+)", re.M)
_SCF_CONVERGED = re.compile(r"\*\*\* SCF run converged in\s+(\d+) steps \*\*\*")
_SCF_NOT_CONVERGED = re.compile(r"SCF run NOT converged")
_OUTER_SCF = re.compile(r"outer SCF loop (converged|FAILED to converge)")
_STRESS_ROW = re.compile(r"^\s*STRESS\|\s+([xyz])\s+(\S+)\s+(\S+)\s+(\S+)\s*$", re.M)
_TIMING_CP2K = re.compile(r"^\s*CP2K\s+1\s+\S+\s+\S+\s+\S+\s+\S+\s+(\S+)\s*$", re.M)
_ENDED = re.compile(r"PROGRAM ENDED AT")


@dataclass
class Cp2kOutput:
    """What one CP2K run printed, in CP2K units."""

    energy_hartree: float | None = None
    forces_hartree_bohr: np.ndarray | None = None
    stress_gpa: np.ndarray | None = None  # 3x3, CP2K's sign (positive = compressive)
    scf_converged: bool = False
    scf_not_converged: bool = False  # an explicit "SCF run NOT converged" was printed
    scf_steps: int | None = None
    cp2k_seconds: float | None = None  # CP2K's own total time (TIMING table, "CP2K" row, max)
    ended: bool = False  # "PROGRAM ENDED AT": CP2K finished normally
    errors: list[str] = field(default_factory=list)  # lines of an ABORT box, if any


def parse_output(text: str) -> Cp2kOutput:
    """Parse the text of a CP2K ``ENERGY_FORCE`` output (one force evaluation)."""
    out = Cp2kOutput()
    energies = _ENERGY.findall(text)
    if energies:
        out.energy_hartree = float(energies[-1])
    steps = _SCF_CONVERGED.findall(text)
    if steps:
        out.scf_converged = True
        out.scf_steps = int(steps[-1])
    out.scf_not_converged = bool(_SCF_NOT_CONVERGED.search(text))
    outer = _OUTER_SCF.findall(text)
    if outer:
        # With an OUTER_SCF the outer loop decides; an inner loop may stop early on purpose.
        out.scf_converged = outer[-1] == "converged"
        out.scf_not_converged = out.scf_not_converged or not out.scf_converged
    if out.scf_not_converged:
        out.scf_converged = False
    out.forces_hartree_bohr = _parse_forces(text)
    out.stress_gpa = _parse_stress(text)
    timing = _TIMING_CP2K.findall(text)
    if timing:
        out.cp2k_seconds = float(timing[-1])
    out.ended = bool(_ENDED.search(text))
    out.errors = _abort_lines(text)
    return out


def _parse_forces(text: str) -> np.ndarray | None:
    start = text.rfind("ATOMIC FORCES in [a.u.]")
    if start < 0:
        return None
    rows: list[list[float]] = []
    for line in text[start:].splitlines()[1:]:
        parts = line.split()
        if not parts or parts[0] == "#":
            continue
        if parts[0] == "SUM":
            break
        # "  index  kind  element  fx  fy  fz"
        if len(parts) != 6 or not parts[0].isdigit():
            return None
        rows.append([float(x) for x in parts[3:6]])
    return np.array(rows, dtype=float) if rows else None


def _parse_stress(text: str) -> np.ndarray | None:
    start = text.rfind("STRESS| Analytical stress tensor [GPa]")
    if start < 0:
        start = text.rfind("STRESS| Numerical stress tensor [GPa]")
    if start < 0:
        return None
    rows = {
        m.group(1): [float(m.group(i)) for i in (2, 3, 4)]
        for m in _STRESS_ROW.finditer(text[start : start + 600])
    }
    if set(rows) != {"x", "y", "z"}:
        return None
    return np.array([rows["x"], rows["y"], rows["z"]], dtype=float)


def _abort_lines(text: str) -> list[str]:
    """The message inside CP2K's ABORT box (the ASCII art takes the first 17 columns)."""
    lines = text.splitlines()
    try:
        top = next(i for i, line in enumerate(lines) if "[ABORT]" in line)
    except StopIteration:
        return []
    message: list[str] = []
    for line in lines[top - 2 : top + 12]:
        if line.startswith(" ****") and message:
            break
        if line.startswith(" *") and len(line) > 18:
            content = line[17:].rstrip().rstrip("*").strip()
            if content:
                message.append(content)
    return message


@dataclass
class Cp2kRun:
    """What one CP2K process left: how it ended, and its output parsed."""

    returncode: int | None  # None: it could not be started
    timed_out: bool
    output: Cp2kOutput
    output_path: Path
    stderr_tail: str  # the launcher's last words (stdout and stderr), in a line
    seconds: float = 0.0  # from start to exit
