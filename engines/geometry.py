"""Geometry safety: is a frame sane enough to simulate or to send to a reference code?

One check for everyone, so that a walker, ``hillwalker label``, ``run`` and ``validate`` refuse
the same frames: the walkers run :func:`too_close` every few MD steps, a single point runs
:func:`geometry_problem` (finite positions, all-or-nothing periodicity, a full cell, and the
same distance check) before any reference code starts.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.geometry import minkowski_reduce
from ase.neighborlist import neighbor_list

#: the shortest interatomic distance (Å) a frame may have, unless a campaign sets another
#: (campaign.yaml ``safety.min_distance`` takes its default from here)
DEFAULT_MIN_DISTANCE = 0.6

#: above this many atoms the all-pairs distance check gives way to ASE's neighbour list
_ALL_PAIRS_MAX_ATOMS = 300


def geometry_problem(atoms: Atoms, min_distance: float = DEFAULT_MIN_DISTANCE) -> str | None:
    """Why ``atoms`` should not be sent to a reference calculation, or None."""
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any() and not pbc.all():
        return f"partial periodicity {pbc.tolist()} is not supported (all or none)"
    if pbc.all() and atoms.cell.rank < 3:
        return "periodic frame without a full 3-D cell"
    problem = too_close(atoms, min_distance)
    if problem is None and pbc.all():
        # A periodic image closer than min_distance (a cell shorter than an atom's own image).
        lengths = atoms.cell.cellpar()[:3]
        if np.min(lengths) < min_distance:
            return f"cell vector of {np.min(lengths):.3f} Å < min_distance {min_distance} Å"
    return problem


def too_close(atoms: Atoms, min_distance: float) -> str | None:
    """The closest pair of atoms if nearer than ``min_distance`` (Å, over periodic images)."""
    if not np.all(np.isfinite(atoms.positions)) or not np.all(np.isfinite(atoms.cell.array)):
        return "non-finite positions or cell"
    if len(atoms) < 2:
        return None
    if len(atoms) > _ALL_PAIRS_MAX_ATOMS:
        i, j, d = neighbor_list("ijd", atoms, min_distance)
        if not len(d):
            return None
        k = int(np.argmin(d))
        return _describe(atoms, int(i[k]), int(j[k]), float(d[k]), min_distance)
    # all pairs: for small cells ASE's neighbour list costs more than the model step (~15 ms for
    # the 38-atom MIL-53 cell at a 0.6 Å cut-off)
    dist = pair_distances(atoms)
    np.fill_diagonal(dist, np.inf)
    i, j = np.unravel_index(np.argmin(dist), dist.shape)
    if dist[i, j] < min_distance:
        return _describe(atoms, int(i), int(j), float(dist[i, j]), min_distance)
    return None


def pair_distances(atoms: Atoms) -> np.ndarray:
    """(n, n) shortest distances, over periodic images along the periodic directions."""
    pos = atoms.positions
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        return np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=2)
    # in a Minkowski-reduced cell the nearest image lies within one cell of the rounded one
    cell, _ = minkowski_reduce(atoms.cell.array, pbc)
    frac = np.linalg.solve(cell.T, pos.T).T
    delta = frac[:, None, :] - frac[None, :, :]
    delta[..., pbc] -= np.round(delta[..., pbc])
    ranges = [(-1, 0, 1) if p else (0,) for p in pbc]
    shifts = np.array(np.meshgrid(*ranges, indexing="ij")).reshape(3, -1).T
    vectors = (delta @ cell)[:, :, None, :] + (shifts @ cell)[None, None, :, :]
    return np.sqrt(np.einsum("ijkl,ijkl->ijk", vectors, vectors).min(axis=2))


def _describe(atoms: Atoms, i: int, j: int, d: float, min_distance: float) -> str:
    i, j = min(i, j), max(i, j)
    return (
        f"atoms {i} ({atoms[i].symbol}) and {j} ({atoms[j].symbol}) are {d:.3f} Å apart "
        f"(< min_distance {min_distance} Å)"
    )
