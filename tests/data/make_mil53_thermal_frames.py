"""Make tests/data/mil53_xtb_thermal_frames.extxyz: thermal MIL-53(Al) frames from np to lp.

The perturbed test set (``make_mil53_frames.py``) strains every coordinate of relaxed cells
(3.2 eV/Å RMS reference forces); the walkers' frames are 400 K MD (about 1 eV/Å). This second
independent set is thermal by construction and owes nothing to any trained model: Langevin MD at
400 K on the reference potential itself, at five fixed cells on the np → lp path (t = 0, 0.25,
0.5, 0.75, 1: the relaxed np, three cells between, the relaxed lp), two trajectories per cell.

- Dynamics: GFN1-xTB from tblite in this process (the same Hamiltonian as the labels, ~0.7 s a
  step for 38 atoms on one core; CP2K's implementation differs by a near-constant offset and tens
  of meV/Å), 0.5 fs steps, friction 0.05/fs, velocities drawn at 400 K; 160 steps to
  thermalise, then a frame every 40 steps (20 fs) up to step 360: 5 frames a trajectory.
- Labels: CP2K at ``templates/mil53-al/levels/xtb.inp`` (the benchmark's exact level), like the
  perturbed set; frames whose SCF needs a hotter smearing are dropped.

Run from the repository root (~35 min on one core, 2026-12-04; seeds fixed, so the same frames every time):

    .venv/bin/python tests/data/make_mil53_thermal_frames.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from make_mil53_frames import label_and_write, np_to_lp_path, relaxed

from hillwalker.engines.geometry import bond_change, bond_graph

HERE = Path(__file__).resolve().parent
OUT = HERE / "mil53_xtb_thermal_frames.extxyz"
SEED = 20261204
TEMPERATURE_K = 400.0
TIMESTEP_FS = 0.5
FRICTION_PER_FS = 0.05
PATH_T = (0.0, 0.25, 0.5, 0.75, 1.0)
TRAJECTORIES = 2
THERMALISE = 160
EVERY = 40
STEPS = 360


def sample(t: float, trajectory: int, seed: int) -> list:
    """Thermal frames of one Langevin trajectory at the path cell ``t`` (unlabeled)."""
    from tblite.ase import TBLite

    start = np_to_lp_path(relaxed("np"), relaxed("lp"), np.array([t]))[0]
    atoms = start.copy()
    atoms.calc = TBLite(method="GFN1-xTB", electronic_temperature=1000.0, verbosity=0)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=TEMPERATURE_K, rng=rng)
    Stationary(atoms)
    atoms.set_constraint(FixCom())
    md = Langevin(
        atoms,
        timestep=TIMESTEP_FS * units.fs,
        temperature_K=TEMPERATURE_K,
        friction=FRICTION_PER_FS / units.fs,
        fixcm=False,
        rng=rng,
    )
    bonds = bond_graph(start)
    frames = []
    clock = time.perf_counter()
    for step in range(EVERY, STEPS + 1, EVERY):
        md.run(EVERY)
        if step <= THERMALISE:
            continue
        frame = atoms.copy()
        frame.calc = None
        frame.set_constraint()
        frame.info = {
            "source": f"thermal t={t:.2f}",
            "path_t": t,
            "trajectory": trajectory,
            "md_step": step,
            "temperature_k": TEMPERATURE_K,
            "kinetic_temperature_k": float(atoms.get_temperature()),
        }
        broken = bond_change(frame, bonds)
        print(
            f"  t={t:.2f} traj {trajectory} step {step}: V={frame.get_volume():6.1f} "
            f"T_kin={atoms.get_temperature():5.0f} K {'BROKEN ' + str(broken) if broken else ''}"
            f" ({time.perf_counter() - clock:.0f} s)",
            flush=True,
        )
        if not broken:
            frames.append(frame)
    return frames


def main() -> int:
    frames = []
    for i, t in enumerate(PATH_T):
        for trajectory in range(TRAJECTORIES):
            frames += sample(t, trajectory, SEED + 10 * i + trajectory)
    return label_and_write(frames, OUT)


if __name__ == "__main__":
    sys.exit(main())
