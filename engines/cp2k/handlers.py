"""What went wrong in a CP2K run, and what to change before the next one (custodian's shape).

:func:`diagnose` names the failure of a run (one of :data:`FAILURES`) or finds none. Handlers are
small check/correct pieces: ``check(problem)`` says whether a handler treats this failure,
``correct(tree, problem)`` edits the input tree in place and returns the edit as data
(``{"name": …, "set": {path: value}, "remove": [path]}``, paths relative to FORCE_EVAL, or
``{"name": "rerun_after_crash", "after": …}``), so the exact change made to a frame's input is stored
with the frame, or returns None when it has nothing to change (the handler is then spent and the
next one is tried). Each handler corrects at most ``max_corrections`` times per single point.

The default handlers: the SCF ladder (:data:`DEFAULT_LADDER`, one rung per handler), then one rerun
after a crash that CP2K did not explain (the launcher, MPI, a signal, a node). A CP2K ABORT is the
input's fault and is not rerun; a timeout, a bad geometry or a missing kind has no handler.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hillwalker.engines.cp2k.output import Cp2kRun
from hillwalker.engines.cp2k.tree import get_path, remove_path, set_path
from hillwalker.engines.levels import FAILURES

__all__ = [
    "DEFAULT_LADDER",
    "FAILURES",
    "Corrector",
    "Handler",
    "Problem",
    "RerunAfterCrash",
    "ScfCorrection",
    "default_handlers",
    "diagnose",
]

_MAX_SCF_CAP = 1000


@dataclass(frozen=True)
class Problem:
    """Why a run did not give a label."""

    failure: str  # one of FAILURES
    message: str
    run: Cp2kRun
    time_left: bool = True  # whether the single point's timeout leaves room for another attempt


def diagnose(
    run: Cp2kRun, *, n_atoms: int, periodic: bool, attempt: int, time_left: bool = True
) -> Problem | None:
    """The failure of a finished (not timed-out) run, or None if it labels the frame."""
    out, where = run.output, run.output_path

    def problem(failure: str, message: str) -> Problem:
        return Problem(failure, message, run, time_left)

    parsed = out.energy_hartree is not None and out.forces_hartree_bohr is not None
    if parsed and not out.scf_converged:
        return problem(
            "scf_not_converged", f"SCF not converged after {attempt} attempt(s) ({where})"
        )
    if run.returncode != 0 or out.energy_hartree is None or out.forces_hartree_bohr is None:
        detail = "; ".join(out.errors) or run.stderr_tail or "no energy/forces in the output"
        return problem("crash", f"CP2K exit status {run.returncode} ({where}): {detail}")
    if out.forces_hartree_bohr.shape != (n_atoms, 3):
        found = len(out.forces_hartree_bohr)
        return problem("crash", f"{where}: forces for {found} atoms, expected {n_atoms}")
    if periodic and out.stress_gpa is None:
        return problem("crash", f"{where}: no stress tensor printed")
    return None


class Handler(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def max_corrections(self) -> int: ...

    def check(self, problem: Problem) -> bool: ...

    def correct(
        self, tree: dict[str, Any], problem: Problem | None = None
    ) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class ScfCorrection:
    """One rung of the SCF ladder: ``set`` these keys/sections, ``remove`` those, raise
    ``at_least`` keys to at least a value (paths under FORCE_EVAL); ``scale_max_scf`` multiplies
    MAX_SCF (cap 1000). A rung that has nothing to change (e.g. the level already diagonalizes
    with Broyden mixing) is skipped, not counted."""

    name: str
    set: tuple[tuple[str, Any], ...] = ()
    remove: tuple[str, ...] = ()
    at_least: tuple[tuple[str, float], ...] = ()
    scale_max_scf: float | None = None
    max_corrections: int = 1

    def check(self, problem: Problem) -> bool:
        return problem.failure == "scf_not_converged"

    def correct(
        self, tree: dict[str, Any], problem: Problem | None = None
    ) -> dict[str, Any] | None:
        """Edit the whole input ``tree`` in place; the edits made (a record), or None if none."""
        fe = tree["+force_eval"][0]
        done_set: dict[str, Any] = {}
        done_remove: list[str] = []
        if self.scale_max_scf:
            old = int(get_path(fe, "DFT/SCF/MAX_SCF") or 50)  # CP2K's default MAX_SCF is 50
            new = min(int(old * self.scale_max_scf), _MAX_SCF_CAP)
            if new > old:
                set_path(fe, "DFT/SCF/MAX_SCF", new)
                done_set["DFT/SCF/MAX_SCF"] = new
        done_remove = [path for path in self.remove if remove_path(fe, path)]
        for path, value in self.set:
            if get_path(fe, path) != value:
                set_path(fe, path, value)
                done_set[path] = value
        for path, minimum in self.at_least:
            current = get_path(fe, path)
            if isinstance(current, list):  # e.g. ADDED_MOS alpha beta
                current = min(current)
            if current is None or float(current) < minimum:
                set_path(fe, path, minimum)
                done_set[path] = minimum
        if not done_set and not done_remove:
            return None
        record: dict[str, Any] = {"name": self.name}
        if done_set:
            record["set"] = done_set
        if done_remove:
            record["remove"] = done_remove
        return record


@dataclass(frozen=True)
class RerunAfterCrash:
    """Run the same input again after a crash CP2K did not explain (no ABORT message), while
    the timeout leaves time: a lost node or a killed MPI rank says nothing about the input."""

    max_corrections: int = 1
    name: str = "rerun_after_crash"

    def check(self, problem: Problem) -> bool:
        out = problem.run.output
        unexplained = not out.errors and (
            problem.run.returncode != 0
            or out.energy_hartree is None
            or out.forces_hartree_bohr is None
        )
        return problem.failure == "crash" and unexplained and problem.time_left

    def correct(
        self, tree: dict[str, Any], problem: Problem | None = None
    ) -> dict[str, Any] | None:
        return {"name": self.name, "after": problem.message if problem else ""}


#: MAX_SCF up → diagonalization + Broyden (α 0.1) + Fermi–Dirac 1000 K → α 0.05, 2000 K → give up.
#: The last two change the electronic temperature of the label: the corrections say so per frame.
DEFAULT_LADDER: tuple[ScfCorrection, ...] = (
    ScfCorrection("more_scf_steps", scale_max_scf=2.0),
    ScfCorrection(
        "diagonalization_broyden_smearing",
        remove=("DFT/SCF/OT", "DFT/SCF/OUTER_SCF"),
        set=(
            ("DFT/SCF/DIAGONALIZATION", {}),
            ("DFT/SCF/MIXING/METHOD", "broyden_mixing"),
            ("DFT/SCF/MIXING/ALPHA", 0.1),
            ("DFT/SCF/MIXING/NBUFFER", 8),
            ("DFT/SCF/SMEAR/_", True),
            ("DFT/SCF/SMEAR/METHOD", "fermi_dirac"),
        ),
        # Diagonalization needs more steps than OT; smearing needs empty orbitals.
        at_least=(
            ("DFT/SCF/MAX_SCF", 200),
            ("DFT/SCF/ADDED_MOS", 20),
            ("DFT/SCF/SMEAR/ELECTRONIC_TEMPERATURE", 1000.0),
        ),
    ),
    ScfCorrection(
        "gentler_mixing_hotter_smearing",
        set=(("DFT/SCF/MIXING/ALPHA", 0.05), ("DFT/SCF/MIXING/NBUFFER", 12)),
        at_least=(("DFT/SCF/SMEAR/ELECTRONIC_TEMPERATURE", 2000.0),),
    ),
)


def default_handlers(
    ladder: Sequence[ScfCorrection] = DEFAULT_LADDER, crash_reruns: int = 1
) -> tuple[Handler, ...]:
    return (*ladder, RerunAfterCrash(max_corrections=crash_reruns))


@dataclass
class Corrector:
    """The handlers of one single point, in order, and how often each has corrected."""

    handlers: Sequence[Handler]
    _used: Counter[int] = field(default_factory=Counter)

    def correct(self, tree: dict[str, Any], problem: Problem) -> dict[str, Any] | None:
        """The first edit an unspent handler makes for ``problem`` (``tree`` edited), or None."""
        for i, handler in enumerate(self.handlers):
            if self._used[i] >= handler.max_corrections or not handler.check(problem):
                continue
            self._used[i] += 1
            edit = handler.correct(tree, problem)
            if edit is not None:
                return edit
            # nothing to change: spent (a rung the level already satisfies is skipped)
            self._used[i] = handler.max_corrections
        return None
