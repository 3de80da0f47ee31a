"""Is the potential good for MD? Each method's model runs its own NPT MD from the xTB-relaxed
narrow and large pore, and the frames it visits are labeled at the reference level.

    .venv/bin/python benchmarks/bench_md_stability.py --work runs/lc --budget 72 \
        --methods shared,none,random,oracle [--seeds 0] [--steps 2000] [--temperature 400]

Frame RMSEs on a fixed test set (``bench_learning_curve.py``) say how a model does on the
configurations someone else chose. A potential is used for MD, where it chooses its own: a model
with a hole walks into it. For each method's model at ``--budget`` single points (the models of
a ``bench_learning_curve.py --work`` directory) and each start (``tests/data/mil53_np_relaxed_xtb``
and ``..._lp_...``): ``--steps`` steps of NPT MD (MTK, 0 GPa, 0.5 fs, no bias) with the campaign's
safety checks (a blow-up stops the run), then ``--labels`` frames evenly spaced along what ran,
labeled by CP2K at the benchmark's GFN1-xTB level. Reported per run:

- ``steps_done`` of ``steps`` and the blow-up's reason, if any;
- the cell volume (Å³): start, mean / min / max over the run's second half (does lp stay lp?);
- ``own_md``: force RMSE (meV/Å) and energy RMSE and mean offset (meV/atom) of the model on the
  labeled frames: the error along its own trajectory;
- ``excess_energy_mev_per_atom``: the reference energy of the labeled frames above the relaxed
  start's, per atom (mean). Harmonic equipartition at T puts it near 3/2 k_B T (52 meV/atom at
  400 K); far above that, the model's MD went where the reference says it should not.

Runs and labels are kept under ``<work>/md-stability`` (a rerun reuses them). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import units
from learning_curve_diagnostics import NP_RELAXED, final_model, frame_errors

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
LEVEL = ROOT / "templates" / "mil53-al" / "levels" / "xtb.inp"
STARTS = {"np": NP_RELAXED, "lp": DATA / "mil53_lp_relaxed_xtb.extxyz"}
#: steps between the trajectory frames the MD writes
TRAJECTORY_STRIDE = 10
#: the volume CV and nothing else: no bias, no walls (the MD is the model's alone)
PLUMED = "v: VOLUME\nPRINT ARG=v STRIDE=10 FILE=COLVAR\n"


def run_md(
    model: Path, start: Path, workdir: Path, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """The model's MD from ``start`` (kept in ``workdir``; a finished run is reused)."""
    from hillwalker.engines.dataset import read_frames
    from hillwalker.engines.files import atomic_write_json
    from hillwalker.engines.nequip.deploy import load_calculator
    from hillwalker.engines.walkers import Walker, WalkerSettings, run_segment

    done = workdir / "md.json"
    if done.is_file():
        return dict(json.loads(done.read_text()))
    atoms = read_frames(start)[0]
    atoms.calc = None
    settings = WalkerSettings(
        ensemble="npt",
        temperature=args.temperature,
        pressure=0.0,
        timestep_fs=0.5,
        steps=args.steps,
        max_force=25.0,
        min_distance=0.6,
        max_temperature=3000.0,
        trajectory_stride=TRAJECTORY_STRIDE,
        log_stride=100,
    )
    walker = Walker(index=0, generation=0, n_walkers=1, bias_dir=workdir / "bias", bias="none")
    started = time.perf_counter()
    segment = run_segment(
        atoms,
        load_calculator(model, threads=args.threads),
        PLUMED,
        workdir,
        walker,
        settings,
        seed=seed,
    )
    blow_up = next((e for e in segment.events if e.get("kind") == "blow_up"), None)
    result = {
        "model": str(model),
        "steps": args.steps,
        "steps_done": segment.steps_done,
        "status": segment.status,
        "blow_up": blow_up,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(done, result)
    return result


def trajectory(workdir: Path, steps_done: int) -> list[Any]:
    """The frames the run wrote, up to where it stopped (a blown-up run's last ones are kept;
    the state it was reset to is not a frame of the run)."""
    from ase.io.trajectory import Trajectory

    with Trajectory(workdir / "trajectory.traj") as traj:
        frames = [a for a in traj]
    return frames[: steps_done // TRAJECTORY_STRIDE + 1]


def label_frames(frames: list[Any], workdir: Path) -> list[Any]:
    """``frames`` labeled at the benchmark level (each single point kept, reused on a rerun)."""
    from hillwalker.engines.cp2k import Level, single_point
    from hillwalker.engines.levels import SinglePointResult

    level = Level.from_file(LEVEL)
    labeled = []
    for i, frame in enumerate(frames):
        where = workdir / "labels" / f"{i:03d}"
        result = SinglePointResult.read(where) or single_point(frame, level, where, timeout=300)
        if result.status == "done":
            labeled.append(result.to_atoms(frame, level="xtb"))
    return labeled


def labeled_frames(workdir: Path, labels: int) -> list[Any]:
    """``labels`` frames evenly spaced along the finished run in ``workdir`` (its first frame,
    the start, left out), labeled at the benchmark level."""
    steps_done = int(json.loads((workdir / "md.json").read_text())["steps_done"])
    frames = trajectory(workdir, steps_done)
    picks = np.unique(np.linspace(0, len(frames) - 1, labels + 1).round().astype(int))[1:]
    return label_frames([frames[i] for i in picks], workdir)


def model_errors(model: Path, frames: list[Any]) -> dict[str, Any]:
    """Force RMSE (meV/Å), energy RMSE and mean offset (meV/atom) of ``model`` on ``frames``."""
    from hillwalker.engines.nequip.deploy import load_calculator

    if not frames:
        return {"n_frames": 0}
    de, df = frame_errors(load_calculator(model), frames)
    forces = np.concatenate(df)
    return {
        "n_frames": len(frames),
        "force_rmse_mev_per_ang": round(float(np.sqrt(np.mean(forces**2))), 1),
        "energy_rmse_mev_per_atom": round(float(np.sqrt(np.mean(np.square(de)))), 1),
        "energy_offset_mev_per_atom": round(float(np.mean(de)), 1),
    }


def start_energy(md_dir: Path, start: str) -> float:
    """The relaxed start's reference energy per atom (eV), labeled here too (kept in
    ``md_dir``'s parent), so that it and the frames' come from one CP2K and level."""
    from hillwalker.engines.dataset import read_frames

    reference = label_frames(read_frames(STARTS[start])[:1], md_dir.parent / f"start-{start}")
    return reference[0].get_potential_energy() / len(reference[0])


def own_md_errors(model: Path, labeled: list[Any], e_start: float) -> dict[str, Any]:
    errors = model_errors(model, labeled)
    if labeled:
        excess = [1000.0 * (a.get_potential_energy() / len(a) - e_start) for a in labeled]
        errors["excess_energy_mev_per_atom"] = round(float(np.mean(excess)), 1)
    return errors


def one_run(
    model: Path, start: str, workdir: Path, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    md = run_md(model, STARTS[start], workdir, args, seed)
    frames = trajectory(workdir, md["steps_done"])
    volumes = np.array([a.get_volume() for a in frames])
    half = volumes[len(volumes) // 2 :]
    labeled = labeled_frames(workdir, args.labels)
    e_start = start_energy(workdir.parents[2], start)
    return {
        **{k: md[k] for k in ("steps", "steps_done", "status", "blow_up", "wall_s")},
        "volume": {
            "start": round(float(volumes[0]), 1),
            "second_half_mean": round(float(half.mean()), 1),
            "second_half_min": round(float(half.min()), 1),
            "second_half_max": round(float(half.max()), 1),
        },
        "own_md": own_md_errors(model, labeled, e_start),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/lc"))
    parser.add_argument("--budget", type=int, default=72)
    parser.add_argument("--methods", default="shared,none,random,oracle")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--starts", default="np,lp")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--temperature", type=float, default=400.0)
    parser.add_argument("--labels", type=int, default=4, help="frames labeled per run")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the MD (1: on busy cores, 2 spinning threads ran MIL-53 MD ~80x "
        "slower than one)",
    )
    args = parser.parse_args()
    if args.steps < 10 or args.labels < 1:
        parser.error("--steps must be >= 10 and --labels >= 1")
    starts = [s.strip() for s in args.starts.split(",") if s.strip()]
    for start in starts:
        if start not in STARTS:
            parser.error(f"--starts {start!r}: expected np and/or lp")
    work = args.work.resolve()
    out: dict[str, Any] = {}
    for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
        where = work if seed == 0 else work / f"seed-{seed}"
        for method in (m.strip() for m in args.methods.split(",") if m.strip()):
            model = final_model(where, method, args.budget)
            if model is None:
                print(f"{method} seed {seed}: no model at {args.budget} single points, skipped",
                      file=sys.stderr)  # fmt: skip
                continue
            for start in starts:
                workdir = (
                    work / "md-stability" / f"{args.temperature:g}K-{args.steps}"
                    / f"seed-{seed}" / f"{method}-{args.budget}" / start
                )  # fmt: skip
                run = one_run(model, start, workdir, args, seed)
                out.setdefault(str(seed), {}).setdefault(method, {})[start] = run
                print(f"{method} seed {seed} from {start}: {run['steps_done']}/{args.steps} steps, "
                      f"volume {run['volume']['second_half_mean']} Å3, own MD "
                      f"{run['own_md'].get('force_rmse_mev_per_ang')} meV/Å", file=sys.stderr)  # fmt: skip
    print(
        json.dumps(
            {
                "benchmark": "md_stability",
                "budget": args.budget,
                "steps": args.steps,
                "temperature_K": args.temperature,
                "timestep_fs": 0.5,
                "labels_per_run": args.labels,
                "equipartition_mev_per_atom": round(1500.0 * units.kB * args.temperature, 1),
                "runs": out,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
