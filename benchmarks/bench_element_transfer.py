"""Transfer across chemical elements, the Figure-2 setting of Röcken & Zavadlav (J. Chem. Inf.
Model. 2025) with Stillinger–Weber labels: a Si model trained on a large SW-silicon dataset, then
Ge models trained on N SW-germanium samples from scratch and from the Si model (model surgery
Ge=Si, ``engines/nequip/surgery.py``), scored on an independent Ge test set at several
temperatures, and their MD stability at a high temperature.

    .venv/bin/python benchmarks/bench_element_transfer.py [--quick] [--work DIR]
        [--sizes 1,2,5,10,25,50] [--draws 3] [--si-epochs 150] [--ge-epochs 150]

Data: a 64-atom diamond supercell at the SW lattice constant (Si 5.431 Å, Ge 5.654 Å), Langevin
MD with the SW level (templates/levels/sw-si.yaml, sw-ge.yaml; 1 fs, friction 0.02/fs) at each
temperature, frames sampled every ``--stride`` steps after ``--equilibrate`` steps. The Si
training set, the Ge pool the N samples are drawn from and the Ge test set are separate MD runs
(other seeds). For each N and draw, N + 1 frames are drawn from the pool: nequip holds one out
for validation, so N frames train; both methods get the same frames, architecture, epochs and
learning rate, and deploy the last epoch. Scratch: the energy shift fitted to the frames
(hillwalker's default); transfer: Ge's shift fitted to the frames through the transferred model.

MD stability: Langevin MD at ``--md-temperature`` with each model trained on the smallest sizes,
stopped when a force exceeds 50 eV/Å, two atoms come closer than 1.7 Å (SW bonds: 2.35 Å Si,
2.45 Å Ge; SW germanium itself never came closer than 2.07 Å in 2000 steps at 1800 K) or the
energy is not finite; ``steps`` is how far it got (``--md-steps`` at most).

``--quick`` (measured 7.7 min on a shared 2-core machine, 1 thread): N in {1, 2, 5}, 2 draws,
Si 36 frames at 300/600/900 K, Ge pool 16 frames (600/1200 K), test 6 frames at 300 and 900 K,
8 features, r_max 4.5 Å, 40 epochs, MD 500 steps at 1500 K for N = 1. It checks the path; its
numbers are not the comparison.

Threads: one torch thread for training, evaluation and MD (``--threads``). Resumable: data,
models and transfers are kept in ``--work``; a rerun computes only what is missing. Prints one
JSON object (errors in meV/atom and meV/Å); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ROOT / "templates" / "levels"
LATTICE = {"Si": 5.431, "Ge": 5.654}
MIN_DISTANCE = 1.7  # Å: an MD frame with a closer pair is broken (SW bonds 2.35-2.45 Å)
MAX_FORCE = 50.0  # eV/Å


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def md_frames(
    element: str,
    temperatures: list[float],
    per_temperature: int,
    seed: int,
    path: Path,
    *,
    equilibrate: int,
    stride: int,
) -> list[Any]:
    """SW-labeled frames from Langevin MD at each temperature (made once, kept in ``path``)."""
    from ase import units
    from ase.build import bulk
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    from hillwalker.engines.dataset import label, read_frames, write_frames
    from hillwalker.engines.levels import level_calculator, load_level

    if path.is_file():
        return read_frames(path)
    calc = level_calculator(load_level(LEVELS / f"sw-{element.lower()}.yaml"))
    frames = []
    for k, temperature in enumerate(temperatures):
        atoms = bulk(element, "diamond", a=LATTICE[element], cubic=True).repeat(2)
        atoms.calc = calc
        rng = np.random.default_rng(seed * 1000 + k)
        thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
        md = Langevin(
            atoms,
            timestep=1.0 * units.fs,
            temperature_K=temperature,
            friction=0.02 / units.fs,
            fixcm=False,
            rng=rng,
        )
        md.run(equilibrate)
        for _ in range(per_temperature):
            md.run(stride)
            frame = label(
                atoms,
                atoms.get_potential_energy(),
                atoms.get_forces(),
                atoms.get_stress(),
                level=f"sw-{element.lower()}",
            )
            frame.info["temperature"] = float(temperature)
            frames.append(frame)
    write_frames(path, frames)
    return frames


def settings(args: argparse.Namespace, epochs: int, n_frames: int, validation: float) -> Any:
    from hillwalker.engines.nequip import TrainSettings

    return TrainSettings.from_template(
        None,
        epochs=epochs,
        r_max=args.r_max,
        num_layers=args.layers,
        num_features=args.features,
        l_max=1,
        batch_size=min(args.batch_size, max(1, n_frames - 1)),
        learning_rate=args.learning_rate,
        validation_fraction=validation,
        checkpoint="last",
        seed=0,
    )


def scores(model: Path, test: dict[float, list[Any]], threads: int) -> dict[str, Any]:
    from hillwalker.engines.nequip import evaluate

    out = {}
    for temperature, frames in test.items():
        got = evaluate(model, frames, device="cpu", threads=threads)
        out[f"{temperature:g}"] = {
            "energy_rmse_mev_per_atom": round(got["energy_rmse_mev_per_atom"], 3),
            "force_rmse_mev_per_ang": round(got["force_rmse_mev_per_ang"], 2),
        }
    return out


def md_stability(model: Path, start: Any, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Steps of Langevin MD at ``args.md_temperature`` before a safety stop."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    from hillwalker.engines.nequip import load_calculator

    atoms = start.copy()
    atoms.calc = load_calculator(model, device="cpu", threads=args.threads)
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K=args.md_temperature, rng=rng)
    md = Langevin(
        atoms,
        timestep=1.0 * units.fs,
        temperature_K=args.md_temperature,
        friction=0.02 / units.fs,
        fixcm=False,
        rng=rng,
    )
    steps, reason = 0, None
    started = time.perf_counter()
    chunk = 10
    while steps < args.md_steps:
        try:
            md.run(chunk)
        except Exception as exc:  # an integrator blow-up is a stop, not a crash of the benchmark
            reason = f"exception: {type(exc).__name__}"
            break
        steps += chunk
        reason = _unsafe(atoms)
        if reason:
            break
    return {
        "steps": steps,
        "max_steps": args.md_steps,
        "stopped": reason,
        "steps_per_s": round(steps / (time.perf_counter() - started), 1),
    }


def _unsafe(atoms: Any) -> str | None:
    energy = atoms.get_potential_energy()
    if not np.isfinite(energy):
        return "energy not finite"
    force = float(np.abs(atoms.get_forces()).max())
    if not np.isfinite(force) or force > MAX_FORCE:
        return f"force {force:.3g} eV/Å"
    distances = atoms.get_all_distances(mic=True)
    np.fill_diagonal(distances, np.inf)
    if distances.min() < MIN_DISTANCE:
        return f"distance {distances.min():.2f} Å"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "element-transfer")
    parser.add_argument("--quick", action="store_true", help="small settings (minutes)")
    parser.add_argument("--sizes", default="1,2,5,10,25,50")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--si-temperatures", default="300,600,900,1200")
    parser.add_argument("--si-frames", type=int, default=50, help="per temperature")
    parser.add_argument("--ge-temperatures", default="300,600,900,1200", help="Ge sample pool")
    parser.add_argument("--ge-pool", type=int, default=25, help="Ge pool frames per temperature")
    parser.add_argument("--test-temperatures", default="300,600,900,1200")
    parser.add_argument("--test-frames", type=int, default=20, help="per temperature")
    parser.add_argument("--equilibrate", type=int, default=500)
    parser.add_argument("--stride", type=int, default=50)
    parser.add_argument("--si-epochs", type=int, default=150)
    parser.add_argument("--ge-epochs", type=int, default=150)
    parser.add_argument("--r-max", type=float, default=5.0)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument(
        "--transfer-learning-rate", type=float, default=None, help="default: --learning-rate"
    )
    parser.add_argument("--md-temperature", type=float, default=1800.0)
    parser.add_argument("--md-steps", type=int, default=2000)
    parser.add_argument("--md-sizes", default="1,2", help="sizes whose models run MD")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.draws = "1,2,5", 2
        args.si_temperatures, args.si_frames = "300,600,900", 12
        args.ge_temperatures, args.ge_pool = "600,1200", 8
        args.test_temperatures, args.test_frames = "300,900", 6
        args.equilibrate, args.stride = 150, 20
        args.si_epochs, args.ge_epochs = 40, 40
        args.r_max, args.features = 4.5, 8
        args.md_temperature, args.md_steps, args.md_sizes = 1500.0, 500, "1"
        if args.work == ROOT / "runs" / "element-transfer":
            args.work = ROOT / "runs" / "element-transfer-quick"

    from hillwalker.engines.dataset import write_frames
    from hillwalker.engines.nequip import train
    from hillwalker.engines.nequip.surgery import transfer_species

    started = time.perf_counter()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    md_sizes = {int(s) for s in args.md_sizes.split(",") if s}
    temps = {k: [float(t) for t in getattr(args, k).split(",")] for k in
             ("si_temperatures", "ge_temperatures", "test_temperatures")}  # fmt: skip
    md = {"equilibrate": args.equilibrate, "stride": args.stride}

    log("SW data: Si training set, Ge pool, Ge test set")
    t0 = time.perf_counter()
    si = md_frames("Si", temps["si_temperatures"], args.si_frames, 1, work / "si.extxyz", **md)
    pool = md_frames("Ge", temps["ge_temperatures"], args.ge_pool, 2, work / "ge_pool.extxyz", **md)
    test_frames = md_frames(
        "Ge", temps["test_temperatures"], args.test_frames, 3, work / "ge_test.extxyz", **md
    )
    test = {t: [f for f in test_frames if f.info["temperature"] == t]
            for t in temps["test_temperatures"]}  # fmt: skip
    data_seconds = time.perf_counter() - t0

    log(f"Si model on {len(si)} frames")
    si_model = train(
        work / "si.extxyz",
        work / "si_model",
        settings=settings(args, args.si_epochs, len(si), 0.1),
        device="cpu",
        compile=False,
        threads=args.threads,
    )

    results: list[dict[str, Any]] = []
    stability: list[dict[str, Any]] = []
    start = test[max(test)][0]  # an MD start far from the perfect crystal
    for n in sizes:
        if n + 1 > len(pool):
            raise SystemExit(f"--sizes {n}: the Ge pool holds only {len(pool)} frames")
        for draw in range(args.draws):
            rng = np.random.default_rng(10_000 * n + draw)
            chosen = [pool[i] for i in rng.choice(len(pool), n + 1, replace=False)]
            run = work / f"ge_n{n}_d{draw}"
            data = run / "frames.extxyz"
            if not data.is_file():
                write_frames(data, chosen)
            # one frame of the N + 1 is held out: N train
            ge_settings = settings(args, args.ge_epochs, n + 1, 1.0 / (n + 1))
            transfer_settings = dataclasses.replace(
                ge_settings, learning_rate=args.transfer_learning_rate or args.learning_rate
            )
            for method in ("scratch", "transfer"):
                log(f"Ge N={n} draw {draw}: {method}")
                t0 = time.perf_counter()
                init = None
                shift_change = None
                if method == "transfer":
                    transfer = transfer_species(
                        si_model.package,
                        run / "transferred.nequip.zip",
                        {"Ge": "Si"},
                        fit_to=chosen,
                        threads=args.threads,
                    )
                    init = transfer.package
                    shift_change = transfer.shift_changes["Ge"]
                    # the transferred model before any training (Ge's shift fitted only)
                    results.append(
                        {"n": n, "draw": draw, "method": "transfer_untrained", "n_train": 0,
                         "test": scores(init, test, args.threads),
                         "ge_shift_change_ev": round(shift_change, 4)}
                    )  # fmt: skip
                model = train(
                    data,
                    run / method,
                    settings=ge_settings if method == "scratch" else transfer_settings,
                    init_from=init,
                    device="cpu",
                    compile=False,
                    threads=args.threads,
                )
                row: dict[str, Any] = {
                    "n": n,
                    "draw": draw,
                    "method": method,
                    "n_train": model.metrics["n_train"],
                    "test": scores(model.package, test, args.threads),
                    "train_seconds": round(time.perf_counter() - t0, 1),
                }
                if shift_change is not None:
                    row["ge_shift_change_ev"] = round(shift_change, 4)
                results.append(row)
                if n in md_sizes:
                    log(f"  MD at {args.md_temperature:g} K")
                    stability.append(
                        {"n": n, "draw": draw, "method": method,
                         **md_stability(model.package, start, args, seed=draw)}
                    )  # fmt: skip

    summary: dict[str, Any] = {}
    for n in sizes:
        for method in ("scratch", "transfer", "transfer_untrained"):
            rows = [r for r in results if r["n"] == n and r["method"] == method]
            summary.setdefault(str(n), {})[method] = {
                t: {
                    key: round(float(np.mean([r["test"][t][key] for r in rows])), 2)
                    for key in ("energy_rmse_mev_per_atom", "force_rmse_mev_per_ang")
                }
                for t in rows[0]["test"]
            }
    md_summary: dict[str, Any] = {}
    for n in sorted(md_sizes & set(sizes)):
        for method in ("scratch", "transfer"):
            steps = [s["steps"] for s in stability if s["n"] == n and s["method"] == method]
            md_summary.setdefault(str(n), {})[method] = {
                "mean_steps": float(np.mean(steps)) if steps else None,
                "completed": sum(s == args.md_steps for s in steps),
                "runs": len(steps),
            }
    si_metrics = si_model.metrics
    print(
        json.dumps(
            {
                "benchmark": "element_transfer_sw_si_to_ge",
                "quick": args.quick,
                "settings": {
                    "sizes": sizes,
                    "draws": args.draws,
                    "temperatures_k": temps,
                    "si_frames": len(si),
                    "ge_pool_frames": len(pool),
                    "ge_test_frames": {f"{t:g}": len(f) for t, f in test.items()},
                    "epochs": {"si": args.si_epochs, "ge": args.ge_epochs},
                    "model": {
                        "r_max": args.r_max,
                        "num_layers": args.layers,
                        "num_features": args.features,
                        "l_max": 1,
                    },
                    "learning_rate": args.learning_rate,
                    "transfer_learning_rate": args.transfer_learning_rate or args.learning_rate,
                    "md": {
                        "temperature_k": args.md_temperature,
                        "max_steps": args.md_steps,
                        "sizes": sorted(md_sizes),
                    },
                    "threads": args.threads,
                },
                "si_model": {
                    "n_train": si_metrics["n_train"],
                    "val_force_rmse_mev_per_ang": round(si_metrics["force_rmse_mev_per_ang"], 1),
                    "val_energy_rmse_mev_per_atom": round(
                        si_metrics["energy_rmse_mev_per_atom"], 2
                    ),
                },
                "summary_mean_over_draws": summary,
                "md_stability_summary": md_summary,
                "results": results,
                "md_stability": stability,
                "wall_seconds": {
                    "data": round(data_seconds, 1),
                    "total": round(time.perf_counter() - started, 1),
                },
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
