"""A frame at a level → CP2K input: the frame's cell, coordinates and periodicity are put into the
level's parsed input tree for every run, never by string templating."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms

from hillwalker.engines.cp2k.tree import PARSER_LOCK, as_list, generator, set_path

if TYPE_CHECKING:
    from hillwalker.engines.cp2k.level import Level

# Solvers that can treat a cell without periodic images; anything else is replaced by MT for a
# frame without periodicity (PERIODIC would silently add images).
_NONPERIODIC_SOLVERS = {"mt", "wavelet", "analytic", "multipole", "implicit"}
_ISOLATED_ONLY_SOLVERS = {"mt", "analytic", "multipole"}
# Vacuum around a molecule on each side (Å): MT needs a box about twice the density's extent.
_MOLECULE_PADDING = 5.0


def frame_input(atoms: Atoms, level: Level) -> dict[str, Any]:
    """The level's input tree with this frame's cell, coordinates and periodicity put in."""
    tree = copy.deepcopy(level.tree)
    glob = tree.setdefault("+global", {})
    glob["project_name"] = "hillwalker"
    glob["run_type"] = "energy_force"
    fe = tree["+force_eval"][0]
    fe["method"] = "quickstep"
    periodic = bool(np.all(atoms.pbc))
    _put_frame(fe, atoms, periodic)
    dft = fe.setdefault("+dft", {})
    _fit_poisson_solver(fe, dft, periodic, level.is_xtb)
    for key in ("basis_set_file_name", "potential_file_name"):
        if key in dft:
            names = as_list(dft[key])
            resolved = [
                str(level.data_file(n)) if (level.path.parent / n).is_file() else n for n in names
            ]
            dft[key] = resolved if isinstance(dft[key], list) else resolved[0]
    _set_prints(fe, dft, periodic)
    return tree


def write_input(tree: dict[str, Any]) -> str:
    with PARSER_LOCK:
        return "\n".join(generator().line_iter(tree)) + "\n"


def _put_frame(fe: dict[str, Any], atoms: Atoms, periodic: bool) -> None:
    """Cell, coordinates and periodicity (and the stress it needs) into FORCE_EVAL."""
    subsys = fe.setdefault("+subsys", {})
    if periodic:
        cell = np.asarray(atoms.cell)
        positions = atoms.get_positions()
        period = "xyz"
        fe["stress_tensor"] = (
            fe.get("stress_tensor")
            if str(fe.get("stress_tensor", "none")).lower() not in {"none"}
            else "analytical"
        )
    else:
        cell, positions = _molecule_box(atoms)
        period = "none"
        fe["stress_tensor"] = "none"
    subsys["+cell"] = {
        "a": cell[0].tolist(),
        "b": cell[1].tolist(),
        "c": cell[2].tolist(),
        "periodic": period,
    }
    subsys["+coord"] = {
        "*": [
            f"{s} {x!r} {y!r} {z!r}"
            for s, (x, y, z) in zip(atoms.get_chemical_symbols(), positions.tolist(), strict=True)
        ]
    }


def _fit_poisson_solver(fe: dict[str, Any], dft: dict[str, Any], periodic: bool, xtb: bool) -> None:
    poisson = dft.setdefault("+poisson", {})
    poisson["periodic"] = "xyz" if periodic else "none"
    solver = str(poisson.get("poisson_solver", "periodic")).lower()
    if periodic and solver in _ISOLATED_ONLY_SOLVERS:
        poisson["poisson_solver"] = "periodic"  # these cannot treat a 3-D periodic cell
    if not periodic:
        if solver not in _NONPERIODIC_SOLVERS:
            poisson["poisson_solver"] = "mt"
        if xtb:
            set_path(fe, "DFT/QS/XTB/DO_EWALD", False)


def _set_prints(fe: dict[str, Any], dft: dict[str, Any], periodic: bool) -> None:
    # Wavefunction restart files (4 x ~100 KB per MIL-53 frame) are never read back: off,
    # unless the level asks for them.
    scf = dft.setdefault("+scf", {})
    if isinstance(scf, dict):
        scf_print = scf.setdefault("+print", {})
        scf_print.setdefault("+restart", {"_": "OFF"})
        scf_print.setdefault("+restart_history", {"_": "OFF"})
    prints = fe.setdefault("+print", {})
    prints["+forces"] = {"_": "ON"}
    if periodic:
        prints["+stress_tensor"] = {"_": "ON"}
    else:
        prints.pop("+stress_tensor", None)


def _molecule_box(atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """A cubic-ish box for a frame without periodicity, the molecule in its centre."""
    pos = atoms.get_positions()
    if atoms.cell.rank == 3 and np.allclose(atoms.cell, np.diag(np.diag(atoms.cell))):
        cell = np.asarray(atoms.cell)
        centre = np.diag(cell) / 2
    else:
        extent = pos.max(axis=0) - pos.min(axis=0)
        lengths = np.maximum(2 * extent + 2 * _MOLECULE_PADDING, 10.0)
        cell = np.diag(lengths)
        centre = lengths / 2
    shifted = pos - (pos.max(axis=0) + pos.min(axis=0)) / 2 + centre
    return cell, shifted
