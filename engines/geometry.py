"""Geometry safety: is a frame sane enough to simulate or to send to a reference code?

One check for everyone, so that a walker, ``hillwalker label``, ``run`` and ``validate`` refuse
the same frames: the walkers run :func:`too_close` every few MD steps, a single point runs
:func:`geometry_problem` (finite positions, all-or-nothing periodicity, a full cell, and the
same distance check) before any reference code starts.

Walkers that keep bonds (campaign.yaml ``safety.keep_bonds``) also run :func:`bond_change`
against the :func:`bond_graph` of the material's start structure: a C–C bond of a MOF linker
broken, or a metal bonded to a carbon, means the model has let the framework come apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.data import covalent_radii
from ase.geometry import find_mic, minkowski_reduce
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


# --------------------------------------------------------------------------------------------
# covalent bonds: does a walker's framework stay in one piece?

#: elements whose bonds with each other are covalent bonds the check keeps (noble gases bond to
#: nothing; every other element counts as a metal: its bonds to O, N, S, halogens are
#: coordination bonds, free to change)
NON_METALS = frozenset(
    ("H", "B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "As", "Se", "Br", "Te", "I")
)
#: a pair is bonded when closer than this many times the sum of its covalent radii
BOND_FACTOR = 1.2
#: a bond of the reference is broken when stretched past this many times that sum
BREAK_FACTOR = 1.5


@dataclass(frozen=True, eq=False)
class BondGraph:
    """The covalent bonds of a reference structure, and the pairs that must not bond.

    ``bonds``: pairs (i < j) of non-metal atoms closer than ``BOND_FACTOR`` × the sum of their
    covalent radii (ASE's ``covalent_radii``) in the reference. Checked: a bond stretched past
    ``BREAK_FACTOR`` × that sum is broken; a pair of non-metals, or of a metal and H or C, that
    was farther apart than ``BREAK_FACTOR`` × the sum in the reference and comes closer than
    ``BOND_FACTOR`` × the sum has formed a bond. The window between the two factors keeps a
    bond's thermal stretch from counting either way. Atoms are matched by index: the checked
    structure must be the reference's atoms in the same order.
    """

    #: the reference structure (a copy)
    reference: Atoms
    bonds: np.ndarray  # (n, 2) int
    #: pairs of the reference closer than BREAK_FACTOR x their radii sum (never "formed")
    near: frozenset[tuple[int, int]]


def bond_graph(reference: Atoms) -> BondGraph:
    """The covalent bonds of ``reference`` (see :class:`BondGraph`)."""
    i, j, d = _pairs_within(reference, BREAK_FACTOR)
    radii = covalent_radii[reference.numbers]
    limit = radii[i] + radii[j]
    symbols = reference.get_chemical_symbols()
    covalent = np.array(
        [symbols[a] in NON_METALS and symbols[b] in NON_METALS for a, b in zip(i, j, strict=True)]
    )
    keep = covalent & (d < BOND_FACTOR * limit) if len(d) else np.zeros(0, bool)
    return BondGraph(
        reference=reference.copy(),
        bonds=np.stack([i[keep], j[keep]], axis=1) if len(d) else np.zeros((0, 2), int),
        near=frozenset(zip(i.tolist(), j.tolist(), strict=True)),
    )


def bond_change(atoms: Atoms, graph: BondGraph) -> str | None:
    """The first covalent bond of ``graph`` broken, or new one formed, in ``atoms``; else None."""
    numbers = graph.reference.numbers
    if len(atoms) != len(numbers) or np.any(atoms.numbers != numbers):
        return "its atoms are not the bond reference's atoms in the same order"
    radii = covalent_radii[atoms.numbers]
    if len(graph.bonds):
        a, b = graph.bonds[:, 0], graph.bonds[:, 1]
        vectors = atoms.positions[b] - atoms.positions[a]
        _, lengths = find_mic(vectors, atoms.cell, atoms.pbc)
        limit = BREAK_FACTOR * (radii[a] + radii[b])
        broken = np.flatnonzero(lengths > limit)
        if len(broken):
            k = broken[np.argmax(lengths[broken] / limit[broken])]
            return _bond_text(atoms, int(a[k]), int(b[k]), float(lengths[k]), "broke", limit[k])
    i, j, d = _pairs_within(atoms, BOND_FACTOR)
    symbols = atoms.get_chemical_symbols()
    for a, b, dist in zip(i.tolist(), j.tolist(), d.tolist(), strict=True):
        if (a, b) in graph.near or not _watched(symbols[a], symbols[b]):
            continue
        limit = BOND_FACTOR * (radii[a] + radii[b])
        return _bond_text(atoms, a, b, dist, "formed", limit)
    return None


def _watched(one: str, other: str) -> bool:
    """Whether a new bond between these elements means the structure came apart."""
    if one in NON_METALS and other in NON_METALS:
        return True
    return (one in NON_METALS) != (other in NON_METALS) and {one, other} & {"H", "C"} != set()


def _pairs_within(atoms: Atoms, factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j, nearest image) closer than ``factor`` × the sum of their covalent radii."""
    cutoffs = factor * covalent_radii[atoms.numbers]
    # neighbor_list's per-atom cutoffs are radii: a pair is listed when d < r_i + r_j
    i, j, d = neighbor_list("ijd", atoms, cutoffs, self_interaction=False)
    keep = i < j
    i, j, d = i[keep], j[keep], d[keep]
    if not len(d):
        return i, j, d
    # one entry per pair: its nearest image
    order = np.lexsort((d, j, i))
    i, j, d = i[order], j[order], d[order]
    first = np.ones(len(d), bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return i[first], j[first], d[first]


def _bond_text(atoms: Atoms, a: int, b: int, dist: float, what: str, limit: float) -> str:
    sign = ">" if what == "broke" else "<"
    factor = BREAK_FACTOR if what == "broke" else BOND_FACTOR
    return (
        f"bond {a} ({atoms[a].symbol})–{b} ({atoms[b].symbol}) {what}: {dist:.2f} Å {sign} "
        f"{limit:.2f} Å ({factor} × the covalent radii)"
    )
