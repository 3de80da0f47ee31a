"""Covalent bonds kept (``engines/geometry.py``: ``bond_graph``, ``bond_change``) on real
MIL-53(Al) frames: the independent xTB test set (perturbed relaxed cells, the np -> lp path) and
walker frames of a real shared-bias campaign whose models let the framework come apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.data import covalent_radii
from ase.io import read

from hillwalker.engines.dataset import read_frames
from hillwalker.engines.geometry import bond_change, bond_graph

DATA = Path(__file__).parents[1] / "data"
TEMPLATE = Path(__file__).parents[2] / "templates" / "mil53-al" / "structure.cif"


def test_no_frame_of_the_independent_test_set_counts_as_broken() -> None:
    np_graph = bond_graph(read(DATA / "mil53_np_relaxed_xtb.extxyz"))
    lp_graph = bond_graph(read(DATA / "mil53_lp_relaxed_xtb.extxyz"))
    # 34 covalent bonds: per Al(OH)(BDC) unit 4 C-O, 8 C-C (ring and carboxylate), 4 C-H, 1 O-H
    assert len(np_graph.bonds) == len(lp_graph.bonds) == 34
    frames = read_frames(DATA / "mil53_xtb_frames.extxyz")
    assert len(frames) == 48
    for frame in frames:
        # perturbed by up to 0.05 Å (3 eV/Å RMS forces) or strained along the path: intact
        graph = lp_graph if frame.info["source"] == "lp-relaxed" else np_graph
        assert bond_change(frame, graph) is None, frame.info["source"]


def test_walker_frames_that_came_apart_are_named_by_their_bond() -> None:
    graph = bond_graph(read(TEMPLATE))
    intact, linker, hydride, proton = read_frames(DATA / "mil53_walker_frames_xtb.extxyz")
    assert bond_change(intact, graph) is None
    assert bond_change(linker, graph) == (
        "bond 11 (C)–17 (C) broke: 3.36 Å > 2.28 Å (1.5 × the covalent radii)"
    )
    assert bond_change(hydride, graph) == (
        "bond 1 (Al)–36 (H) formed: 1.58 Å < 1.82 Å (1.2 × the covalent radii)"
    )
    assert bond_change(proton, graph) == (
        "bond 23 (O)–30 (H) formed: 1.07 Å < 1.16 Å (1.2 × the covalent radii)"
    )
    # what the xTB labels say of them: at the intact frame's volume (338 Å³) the two broken
    # ones lie 281 and 1114 meV/atom higher: other chemistry, not a breathing MOF
    per_atom = [f.get_potential_energy() / len(f) for f in (intact, proton, hydride)]
    assert per_atom[1] - per_atom[0] > 0.25 and per_atom[2] - per_atom[0] > 1.0


def test_a_bond_breaks_past_one_and_a_half_and_forms_below_one_point_two_radii() -> None:
    start = read(TEMPLATE)
    graph = bond_graph(start)
    # a C-H bond of a linker: its H pulled outwards along the bond, into the empty pore
    i, j = next(
        (int(a), int(b)) for a, b in graph.bonds if {start[a].symbol, start[b].symbol} == {"C", "H"}
    )
    c, h = (i, j) if start[i].symbol == "C" else (j, i)
    limit = 1.5 * (covalent_radii[6] + covalent_radii[1])
    d = start.get_distance(c, h, mic=True, vector=True)
    for length, broken in ((limit - 0.02, False), (limit + 0.02, True)):
        atoms = start.copy()
        atoms.positions[h] = atoms.positions[c] + d / np.linalg.norm(d) * length
        found = bond_change(atoms, graph)
        assert (found is not None) == broken, found
    assert found == (
        f"bond {min(c, h)} ({start[min(c, h)].symbol})–{max(c, h)} ({start[max(c, h)].symbol}) "
        f"broke: {limit + 0.02:.2f} Å > {limit:.2f} Å (1.5 × the covalent radii)"
    )
    # an Al moved 1.5 Å from that H, on the far side from its C (Al-H: 1.82 Å at 1.2 radii): a
    # metal bonded to H is a new bond; no covalent bond of the reference is touched
    atoms = start.copy()
    al = next(a.index for a in atoms if a.symbol == "Al")
    atoms.positions[al] = atoms.positions[h] + d / np.linalg.norm(d) * 1.5
    assert bond_change(atoms, graph) == (
        f"bond {min(al, h)} ({atoms[min(al, h)].symbol})–{max(al, h)} ({atoms[max(al, h)].symbol}) "
        "formed: 1.50 Å < 1.82 Å (1.2 × the covalent radii)"
    )
    # Al-O is a coordination bond: an O of a neighbouring carboxylate at 1.9 Å is no alarm
    ref = bond_graph(read(DATA / "mil53_np_relaxed_xtb.extxyz"))
    assert not any({"Al"} & {ref.reference[int(a)].symbol for a in pair} for pair in ref.bonds)


def test_other_atoms_and_molecules() -> None:
    graph = bond_graph(read(TEMPLATE))
    reordered = read(TEMPLATE)[::-1]
    assert bond_change(reordered, graph) == (
        "its atoms are not the bond reference's atoms in the same order"
    )
    # no cell, no periodicity: a water molecule, one O-H pulled off
    water = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    water_graph = bond_graph(water)
    assert water_graph.bonds.tolist() == [[0, 1], [0, 2]]
    assert bond_change(water, water_graph) is None
    water.positions[1] = [2.0, 0, 0]
    assert bond_change(water, water_graph) == (
        "bond 0 (O)–1 (H) broke: 2.00 Å > 1.46 Å (1.5 × the covalent radii)"
    )


@pytest.mark.parametrize("symbols", ["Cu2", "Ar2"])
def test_metals_and_noble_gases_have_no_covalent_bonds(symbols: str) -> None:
    pair = Atoms(symbols, positions=[[0, 0, 0], [2.0, 0, 0]])
    graph = bond_graph(pair)
    assert len(graph.bonds) == 0
    pair.positions[1] = [9.0, 0, 0]
    assert bond_change(pair, graph) is None
