"""Failure classes of a CP2K single point, and the retry ladder for an SCF that does not converge.

Each rung of the ladder is a small correction whose edits are data (``{"set": {path: value},
"remove": [path]}``, paths relative to FORCE_EVAL), so the exact change made to a frame's input is
stored with the frame (custodian's handlers are the model). A rung that has nothing to change
(e.g. the level already diagonalizes with Broyden mixing) is skipped, not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: failure classes a :class:`~hillwalker.engines.cp2k.SinglePointResult` can carry
FAILURES = ("scf_not_converged", "timeout", "crash", "bad_geometry", "missing_kind")

_MAX_SCF_CAP = 1000


def _key(part: str) -> tuple[str, str]:
    low = part.lower()
    return f"+{low}", low


def get_path(node: dict[str, Any], path: str) -> Any:
    """Value at ``"DFT/SCF/MAX_SCF"`` (sections then a keyword or section) in a parsed tree."""
    current: Any = node
    for part in path.split("/"):
        if isinstance(current, list):  # repeatable section: the first one
            current = current[0] if current else None
        if not isinstance(current, dict):
            return None
        section, keyword = _key(part)
        current = current.get(section, current.get(keyword))
    return current


def set_path(node: dict[str, Any], path: str, value: Any) -> None:
    *sections, last = path.split("/")
    current = node
    for part in sections:
        key = _key(part)[0]
        nxt = current.setdefault(key, {})
        current = nxt[0] if isinstance(nxt, list) else nxt
    section, keyword = _key(last)
    if isinstance(value, dict):
        current[section] = value
    else:
        current[keyword] = value


def remove_path(node: dict[str, Any], path: str) -> bool:
    *sections, last = path.split("/")
    current: Any = node
    for part in sections:
        current = current.get(_key(part)[0]) if isinstance(current, dict) else None
        if isinstance(current, list):
            current = current[0] if current else None
    if not isinstance(current, dict):
        return False
    section, keyword = _key(last)
    found = False
    for k in (section, keyword):
        if k in current:
            del current[k]
            found = True
    return found


@dataclass(frozen=True)
class ScfCorrection:
    """One rung: ``set`` these keys/sections, ``remove`` those, raise ``at_least`` keys to at
    least a value (paths under FORCE_EVAL); ``scale_max_scf`` multiplies MAX_SCF (cap 1000)."""

    name: str
    set: tuple[tuple[str, Any], ...] = ()
    remove: tuple[str, ...] = ()
    at_least: tuple[tuple[str, float], ...] = ()
    scale_max_scf: float | None = None

    def correct(self, tree: dict[str, Any]) -> dict[str, Any] | None:
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
        for path in self.remove:
            if remove_path(fe, path):
                done_remove.append(path)
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
