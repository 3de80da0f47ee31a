"""Multi-fidelity at equal target budget: direct, delta, hierarchical and transfer learning side by
side, scored at the target level on an independent test set.

    .venv/bin/python benchmarks/bench_fidelity.py [--work DIR] [--budgets 8,16,32,64]
        [--methods direct,delta,hierarchical,transfer] [--baseline-frames 160] [--epochs 200]

System (documented smaller stand-in for MIL-53 at xTB/PBE-D3, which does not fit a 2-core
machine: PBE-D3 single points of the 38-atom cell take minutes each): ethanol in vacuum.
- frames: Langevin MD at 600 K driven by the baseline level (tblite GFN1-xTB in this process),
  one frame every 20 steps of 0.5 fs (seeded); the first ``--test-frames`` frames of a second,
  independent trajectory are the test set, never trained on;
- baseline: GFN1-xTB (tblite) on every training-pool frame (the abundant level);
- target: B3LYP/6-31G* (PySCF) on the first N pool frames for each budget N, and on the test set.
For each method and N the potential trains on those labels (``engines.potentials``), and its
energy (meV/atom) and force (meV/Å) RMSE against the target on the test set are reported, with
the target and baseline call counts and the seconds per call measured here.

Resumable: labels (``hillwalker label`` work directories) and potentials are kept in ``--work``;
a rerun computes only what is missing. Prints one JSON object whatever it shows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BASELINE = "code: tblite\nmethod: GFN1-xTB\nelectronic_temperature: 300.0\n"
TARGET = "code: pyscf\nmethod: b3lyp\nbasis: 6-31g*\nconv_tol: 1.0e-9\n"
METHODS = ("direct", "delta", "hierarchical", "transfer")


def trajectory(level_file: Path, n_frames: int, seed: int, stride: int = 20) -> list[Any]:
    """``n_frames`` ethanol frames from Langevin MD at 600 K on the level, every ``stride`` steps."""
    from ase import units
    from ase.build import molecule
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from hillwalker.engines.levels import level_calculator, load_level

    atoms = molecule("CH3CH2OH")
    atoms.calc = level_calculator(load_level(level_file), cores=1)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=rng)
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=600, friction=0.02, rng=rng)
    frames = []
    for _ in range(n_frames):
        dyn.run(stride)
        frame = atoms.copy()
        frame.calc = None
        frames.append(frame)
    return frames


def labeled(level_file: Path, frames_file: Path, out: Path, cores: int | None) -> float | None:
    """Label the file (resumable); code seconds per frame computed now (None: all reused)."""
    from hillwalker.labeling import label_file

    summary = label_file(level_file, frames_file, out, cores=cores)
    computed = summary.total - summary.reused
    return summary.code_seconds / computed if computed else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-fidelity"))
    parser.add_argument("--budgets", default="8,16,32,64", help="target calls, comma-separated")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--baseline-frames", type=int, default=160)
    parser.add_argument("--test-frames", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--cores", type=int, default=None)
    args = parser.parse_args()
    budgets = sorted(int(b) for b in args.budgets.split(","))
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or budgets[-1] > args.baseline_frames:
        parser.error(f"unknown methods {unknown} or a budget above --baseline-frames")

    from hillwalker.engines.dataset import read_frames, write_frames
    from hillwalker.engines.files import atomic_write_text
    from hillwalker.engines.multilevel import read_levels
    from hillwalker.engines.nequip import TrainSettings
    from hillwalker.engines.potentials import evaluate_potential, train_potential

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    levels = {"gfn1": work / "gfn1.yaml", "b3lyp": work / "b3lyp.yaml"}
    atomic_write_text(levels["gfn1"], BASELINE)
    atomic_write_text(levels["b3lyp"], TARGET)
    started = time.perf_counter()
    pool_file, test_file = work / "pool.extxyz", work / "test.extxyz"
    if not pool_file.exists():
        write_frames(pool_file, trajectory(levels["gfn1"], args.baseline_frames, seed=1))
    if not test_file.exists():
        write_frames(test_file, trajectory(levels["gfn1"], args.test_frames, seed=2))
    pool = read_frames(pool_file)
    target_pool = work / "target-pool.extxyz"
    write_frames(target_pool, pool[: budgets[-1]])
    seconds = {
        "baseline": labeled(levels["gfn1"], pool_file, work / "pool-gfn1.extxyz", args.cores),
        "target": labeled(levels["b3lyp"], target_pool, work / "pool-b3lyp.extxyz", args.cores),
    }
    labeled(levels["b3lyp"], test_file, work / "test-b3lyp.extxyz", args.cores)
    labeled(levels["gfn1"], test_file, work / "test-gfn1.extxyz", args.cores)
    label_seconds = time.perf_counter() - started

    template = Path(__file__).resolve().parents[1] / "templates/alanine-dipeptide/nequip.yaml"
    knobs = TrainSettings.from_template(template, epochs=args.epochs)
    test = read_levels([work / "test-b3lyp.extxyz", work / "test-gfn1.extxyz"])
    target_frames = read_frames(work / "pool-b3lyp.extxyz")
    results: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for n in budgets:
        subset = work / f"target-{n}.extxyz"
        write_frames(subset, target_frames[:n])
        data = read_levels([subset, work / "pool-gfn1.extxyz"])
        for method in methods:
            t0 = time.perf_counter()
            out = work / f"{method}-{n}"
            print(f"[{method} N={n}] training", file=sys.stderr, flush=True)
            train_potential(
                data, out, method=method, target="b3lyp", baseline="gfn1",
                baseline_level=levels["gfn1"], template=template, settings=knobs,
                compile=False,
            )  # fmt: skip
            scored = evaluate_potential(out, test, device="cpu", source=str(test_file))
            results[method][str(n)] = {
                "energy_rmse_mev_per_atom": scored["total"]["energy_rmse_mev_per_atom"],
                "force_rmse_mev_per_ang": scored["total"]["force_rmse_mev_per_ang"],
                "parts": {
                    k: {
                        "energy": v["energy_rmse_mev_per_atom"],
                        "force": v["force_rmse_mev_per_ang"],
                    }
                    for k, v in scored["parts"].items()
                },
                "target_calls": n,
                "baseline_calls": len(pool),
                "seconds": round(time.perf_counter() - t0, 1),
            }
    baseline_alone = _baseline_error(test)
    print(
        json.dumps(
            {
                "system": "ethanol, 600 K GFN1-xTB MD frames",
                "target": "B3LYP/6-31G* (PySCF)",
                "baseline": "GFN1-xTB (tblite)",
                "test_frames": args.test_frames,
                "baseline_frames": len(pool),
                "epochs": args.epochs,
                "seconds_per_call": {
                    k: None if v is None else round(v, 2) for k, v in seconds.items()
                },
                "label_seconds": round(label_seconds, 1),
                "baseline_level_alone_vs_target": baseline_alone,
                "results": results,
            },
            indent=2,
        )
    )
    return 0


def _baseline_error(test: dict[str, Any]) -> dict[str, float]:
    """The baseline level itself against the target on the test set (after removing the mean
    energy offset per atom, which a potential's references absorb)."""
    from hillwalker.engines.dataset import labels
    from hillwalker.engines.multilevel import delta_frames

    delta = [labels(f) for f in delta_frames(test["b3lyp"], test["gfn1"])]
    n_atoms = len(test["b3lyp"].list()[0])
    energy = np.array([d["energy"] for d in delta]) / n_atoms
    forces = np.concatenate([np.ravel(d["forces"]) for d in delta])
    return {
        "energy_rmse_mev_per_atom_offset_removed": 1000 * float(np.std(energy)),
        "force_rmse_mev_per_ang": 1000 * float(np.sqrt(np.mean(forces**2))),
    }


if __name__ == "__main__":
    raise SystemExit(main())
