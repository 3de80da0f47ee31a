"""Generation-0 frames: random copies of a structure, rattled and (if periodic) strained.

Positions get independent Gaussian displacements (σ in Å per Cartesian component). The cell of a
periodic frame gets a random symmetric strain with each component uniform in [−strain, strain];
atoms move with the cell (fractional coordinates kept) before they are rattled, so a strained frame
is a plausible compressed or stretched crystal rather than atoms left behind in a bigger box.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms


def perturb(
    atoms: Atoms, n: int, *, position_sigma: float, strain: float, seed: int
) -> list[Atoms]:
    """``n`` perturbed copies of ``atoms`` (no labels, ``info`` kept plus ``perturb_*`` keys).

    The same ``seed`` gives the same frames. ``strain`` is ignored for a frame without
    periodicity (there is no cell to strain).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if position_sigma < 0 or strain < 0:
        raise ValueError(f"position_sigma and strain must be >= 0, got {position_sigma}, {strain}")
    if strain >= 0.5:
        raise ValueError(f"strain {strain} is a fraction (0.04 = 4 %), it must be < 0.5")
    rng = np.random.default_rng(seed)
    periodic = bool(np.all(atoms.pbc)) and atoms.cell.rank == 3
    frames = []
    for _ in range(n):
        frame = atoms.copy()
        frame.calc = None
        if periodic and strain > 0:
            eps = rng.uniform(-strain, strain, size=(3, 3))
            eps = (eps + eps.T) / 2  # symmetric: a strain, not a rotation
            frame.set_cell(np.asarray(atoms.cell) @ (np.eye(3) + eps), scale_atoms=True)
        if position_sigma > 0:
            frame.positions += rng.normal(0.0, position_sigma, size=(len(frame), 3))
        frame.info["perturb_sigma"] = float(position_sigma)
        frame.info["perturb_strain"] = float(strain) if periodic else 0.0
        frames.append(frame)
    return frames
