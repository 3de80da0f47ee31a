"""Make tests/data/mil53_xtb_frames.extxyz: MIL-53(Al) frames across np → lp, labeled at GFN1-xTB.

Run from the repository root (takes ~3-5 min on one core):

    .venv/bin/python tests/data/make_mil53_frames.py

Frames (seed fixed, so the same frames every time):
- 20 perturbed copies of the np relaxed cell (365 Å³) and 20 of the lp relaxed cell (750 Å³):
  position σ 0.03 / 0.05 / 0.08 Å, random symmetric cell strain up to ±4 %;
- 8 frames on the straight line np → lp (cell parameters and matched fractional coordinates
  interpolated at t = 0.1 … 0.9), lightly rattled (σ 0.03 Å, strain ±2 %).
Labels come from ``hillwalker.engines.cp2k.single_point`` at the level
``templates/mil53-al/levels/xtb.inp`` (the benchmark's exact settings). Frames whose SCF does not
converge are dropped.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.geometry import cell_to_cellpar, cellpar_to_cell
from scipy.optimize import linear_sum_assignment

from hillwalker.engines.cp2k import Level, single_point
from hillwalker.engines.dataset import write_frames
from hillwalker.engines.perturb import perturb

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
LEVEL = ROOT / "templates" / "mil53-al" / "levels" / "xtb.inp"
OUT = HERE / "mil53_xtb_frames.extxyz"
SEED = 20261121


def relaxed(name: str) -> Atoms:
    atoms = ase.io.read(HERE / f"mil53_{name}_relaxed_xtb.extxyz")
    atoms.info = {"source": f"{name}-relaxed"}
    atoms.calc = None
    return atoms


def np_to_lp_path(np_cell: Atoms, lp_cell: Atoms, ts: np.ndarray) -> list[Atoms]:
    """Frames on the straight line np → lp in (cell parameters, fractional coordinates).

    The two relaxed cells come from different CIFs: another cell basis, atom order and origin.
    Find the unimodular basis change M (entries −1…1) and the origin (an Al on an Al) that put
    np's atoms closest to lp's fractional coordinates, match atoms per element (Hungarian), then
    interpolate. Bonds (< 1.7 Å) stay intact along this path.
    """
    lp_frac = lp_cell.get_scaled_positions()
    best: tuple[float, np.ndarray, np.ndarray, np.ndarray] | None = None
    symbols = np.array(np_cell.get_chemical_symbols())
    lp_symbols = np.array(lp_cell.get_chemical_symbols())
    for entries in itertools.product((-1, 0, 1), repeat=9):
        m = np.array(entries, dtype=float).reshape(3, 3)
        if round(np.linalg.det(m)) != 1:
            continue
        cell = m @ np.asarray(np_cell.cell)
        frac = np.linalg.solve(cell.T, np_cell.positions.T).T
        for k in np.flatnonzero(lp_symbols == "Al"):
            shifted = frac + (lp_frac[k] - frac[0])
            cost, order = 0.0, np.empty(len(np_cell), dtype=int)
            for element in set(symbols):
                ia, ib = np.flatnonzero(symbols == element), np.flatnonzero(lp_symbols == element)
                d = shifted[ia][:, None, :] - lp_frac[ib][None, :, :]
                d -= np.round(d)
                dist = np.linalg.norm(d, axis=2)
                rows, cols = linear_sum_assignment(dist)
                cost += dist[rows, cols].sum()
                order[ia[rows]] = ib[cols]
            if best is None or cost < best[0]:
                best = (cost, cell, shifted, order)
    assert best is not None
    _, cell, frac, order = best
    delta = lp_frac[order] - frac
    delta -= np.round(delta)
    par_np, par_lp = cell_to_cellpar(cell), cell_to_cellpar(np.asarray(lp_cell.cell))
    frames = []
    for t in ts:
        frame = Atoms(
            np_cell.get_chemical_symbols(),
            cell=cellpar_to_cell((1 - t) * par_np + t * par_lp),
            scaled_positions=frac + t * delta,
            pbc=True,
        )
        frame.info = {"source": f"np-lp-path t={t:.3f}"}
        frames.append(frame)
    return frames


def draw_frames(seed: int = SEED) -> list[Atoms]:
    """The unlabeled frames: perturbed np and lp cells, and the rattled np → lp path."""
    np_cell, lp_cell = relaxed("np"), relaxed("lp")
    frames: list[Atoms] = []
    for i, (start, sigma) in enumerate(itertools.product((np_cell, lp_cell), (0.03, 0.05, 0.08))):
        n = 6 if sigma == 0.08 else 7
        frames += perturb(start, n, position_sigma=sigma, strain=0.04, seed=seed + i)
    for j, mid in enumerate(np_to_lp_path(np_cell, lp_cell, np.linspace(0.1, 0.9, 8))):
        frames += perturb(mid, 1, position_sigma=0.03, strain=0.02, seed=seed + 100 + j)
    return frames


def label_and_write(frames: list[Atoms], out: Path) -> int:
    """Label ``frames`` at the benchmark's level and write those labeled at it to ``out``."""
    level = Level.from_file(LEVEL)
    labeled = []
    with tempfile.TemporaryDirectory(prefix="mil53_frames_") as tmp:
        for i, frame in enumerate(frames):
            result = single_point(frame, level, Path(tmp) / f"frame_{i:03d}", timeout=300)
            print(
                f"{i:3d} {frame.info['source']:<22} V={frame.get_volume():6.1f} "
                f"{result.status} {result.failure or ''} {result.wall_seconds:.1f}s",
                flush=True,
            )
            # A hotter smearing would make a label of another level: keep plain SCF retries only.
            physics_changed = any(c["name"] != "more_scf_steps" for c in result.corrections)
            if result.status == "done" and not physics_changed:
                labeled.append(result.to_atoms(frame, level="xtb", generation=0, task_id=i))
    write_frames(out, labeled)
    print(f"wrote {len(labeled)} of {len(frames)} frames to {out}")
    return 0


def main() -> int:
    return label_and_write(draw_frames(), OUT)


if __name__ == "__main__":
    sys.exit(main())
