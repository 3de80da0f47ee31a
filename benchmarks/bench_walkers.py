"""Benchmark: walker MD speed on the 38-atom MIL-53(Al) cell with a compiled NequIP model.

    .venv/bin/python benchmarks/bench_walkers.py [--model MODEL] [--steps N] [--repeats R]

Prints one JSON object:
- ``bare_steps_per_s``: NPT (MTKNPT, full cell) MD with the model calculator alone;
- ``metad_steps_per_s``: the same loop with the walkers' ``BiasedCalculator`` running the
  template's ``plumed.dat`` (VOLUME, well-tempered METAD with a GRID, two walls, PRINT) and its
  overhead in % (goal ≤ 10 %); ``metad_ase_wrapper_*`` the same with ASE's own ``Plumed``;
  ``plumed_ms_per_step`` the time inside PLUMED itself;
- ``run_segment_steps_per_s``: the engine's own :func:`run_segment` (safety checks, log, state);
- ``hills``: per-step cost with 10 and with 10,000 hills already in the bias (a prefilled
  HILLS file, read through PLUMED's RESTART), with the template's GRID (goal: flat) and, for
  contrast, without it.

Rates are the median of ``--repeats`` alternating runs (the machine may be shared).
``--model``: a ``.nequip.pt2``/``.nequip.zip`` or model directory. Without it a small model of
the template's size is trained for a few epochs on ``tests/data/mil53_xtb_frames.extxyz`` (GFN1-xTB
labels with stress) and compiled — speed, not accuracy, is measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms, units
from ase.calculators.plumed import Plumed
from ase.md.nose_hoover_chain import MTKNPT
from ase.md.velocitydistribution import thermalize_momenta

from hillwalker.engines.plumed import (
    BiasedCalculator,
    clean_input,
    init_bias_dir,
    prepare_input,
)
from hillwalker.engines.plumed_kernel import use_kernel
from hillwalker.engines.walkers import WalkerSettings, run_segment

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "templates" / "mil53-al" / "plumed.dat"
START = ROOT / "tests" / "data" / "mil53_np_relaxed_xtb.extxyz"
FRAMES = ROOT / "tests" / "data" / "mil53_xtb_frames.extxyz"
TEMPERATURE = 300.0
TIMESTEP_FS = 0.5


def get_model(args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    if args.model:
        return Path(args.model), "given"
    from hillwalker.engines.nequip import TrainSettings, train

    settings = TrainSettings.from_template(epochs=args.epochs, validation_fraction=0.1)
    model = train(FRAMES, workdir / "model", settings=settings, device="cpu", threads=1)
    if model.compiled is None:
        raise SystemExit("training gave no compiled model")
    return model.compiled, f"trained {args.epochs} epochs on {FRAMES.name}"


def start_atoms() -> Atoms:
    atoms = ase.io.read(START)
    atoms.calc = None
    thermalize_momenta(atoms, temperature_K=TEMPERATURE, rng=np.random.default_rng(0))
    return atoms


def integrator(atoms: Atoms) -> MTKNPT:
    return MTKNPT(
        atoms,
        TIMESTEP_FS * units.fs,
        temperature_K=TEMPERATURE,
        pressure_au=0.0,
        tdamp=100 * units.fs,
        pdamp=1000 * units.fs,
    )


def timed_md(atoms: Atoms, calc: object, steps: int) -> float:
    """Steps per second of MTKNPT MD (after 10 warm-up steps)."""
    atoms.calc = calc
    dyn = integrator(atoms)
    dyn.run(10)
    start = time.perf_counter()
    dyn.run(steps)
    return steps / (time.perf_counter() - start)


def plumed_lines(workdir: Path, bias_dir: Path, grid: bool) -> list[str]:
    lines = prepare_input(
        clean_input(TEMPLATE.read_text(), str(TEMPLATE)),
        walker_id=0,
        n_walkers=1,
        bias_dir=bias_dir,
        mode="shared",
        workdir=workdir,
    )
    if not grid:
        lines = [" ".join(w for w in line.split() if not w.startswith("GRID_")) for line in lines]
    return lines


def prefill_hills(path: Path, n: int) -> None:
    """``n`` well-tempered hills spread over the walls' range (0.34–0.80 nm³), 0.01 kJ/mol."""
    rng = np.random.default_rng(1)
    centres = rng.uniform(0.34, 0.80, n)
    height = 0.01 * 50 / 49  # the file holds w·γ/(γ−1), γ = BIASFACTOR = 50
    lines = [
        "#! FIELDS time v sigma_v height biasf",
        "#! SET multivariate false",
        "#! SET kerneltype stretched-gaussian",
    ]
    lines += [f"{-1e-3 * (n - i):.6f} {c:.8f} 0.01 {height:.10f} 50" for i, c in enumerate(centres)]
    path.write_text("\n".join(lines) + "\n")


def metad_run(
    model_calc: object,
    workdir: Path,
    steps: int,
    hills: int | None,
    grid: bool,
    wrapper: type[Plumed] = BiasedCalculator,
) -> tuple[float, float]:
    """(MD steps/s, ms per step inside PLUMED) under the template's input.

    ``hills``: how many hills the bias starts from (None: a fresh bias). The PLUMED time is
    measured around ``Plumed.compute_bias`` alone, so it is less sensitive to a shared machine
    than the steps/s.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    bias_dir = workdir / "bias"
    init_bias_dir(bias_dir, 1)
    if hills:
        prefill_hills(bias_dir / "HILLS.0", hills)
    lines = plumed_lines(workdir, bias_dir, grid)
    atoms = start_atoms()
    calc = wrapper(
        model_calc,
        lines,
        timestep=TIMESTEP_FS * units.fs,
        atoms=atoms,
        kT=units.kB * TEMPERATURE,
        log=str(workdir / "plumed.log"),
    )
    spent = [0.0, 0]
    compute_bias = calc.compute_bias

    def timed_compute_bias(*args: object) -> object:
        started = time.perf_counter()
        try:
            return compute_bias(*args)
        finally:
            spent[0] += time.perf_counter() - started
            spent[1] += 1

    calc.compute_bias = timed_compute_bias  # type: ignore[method-assign]
    try:
        rate = timed_md(atoms, calc, steps)
    finally:
        calc.plumed.finalize()
    return rate, 1000 * spent[0] / max(spent[1], 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help=".nequip.pt2 / .nequip.zip / model directory")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20, help="when training a model")
    parser.add_argument("--workdir", help="keep files here (default: a temporary directory)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_walkers_")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    use_kernel()

    import torch

    from hillwalker.engines.nequip import load_calculator

    torch.set_num_threads(args.threads)

    model_path, model_source = get_model(args, workdir)
    model_calc = load_calculator(model_path, device="cpu")
    steps = args.steps

    rates: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        rates.setdefault(name, []).append(value)

    settings = WalkerSettings(
        ensemble="npt",
        temperature=TEMPERATURE,
        pressure=0.0,
        timestep_fs=TIMESTEP_FS,
        steps=steps,
        thermostat_time_fs=100.0,
        barostat_time_fs=1000.0,
    )
    for r in range(args.repeats):
        record("bare", timed_md(start_atoms(), model_calc, steps))
        rate, plumed_ms = metad_run(model_calc, workdir / f"metad_{r}", steps, None, grid=True)
        record("metad", rate)
        record("metad_plumed_ms", plumed_ms)
        rate, _ = metad_run(model_calc, workdir / f"ase_{r}", steps, None, True, Plumed)
        record("metad_ase_wrapper", rate)
        started = time.perf_counter()
        segment = run_segment(
            start_atoms(), model_calc, TEMPLATE, workdir / f"segment_{r}", walker=0,
            generation=r, n_walkers=1, bias_dir=workdir / f"segment_{r}" / "bias",
            settings=settings, seed=r,
        )  # fmt: skip
        if segment.status == "ok":
            record("run_segment", (steps + 1) / (time.perf_counter() - started))
        for n in (10, 10_000):
            rate, plumed_ms = metad_run(model_calc, workdir / f"g{n}_{r}", steps, n, grid=True)
            record(f"grid_{n}", rate)
            record(f"grid_{n}_plumed_ms", plumed_ms)
        # without the grid every step sums every hill: fewer steps are enough to see it
        short = max(steps // 5, 50)
        for n in (10, 10_000):
            rate, plumed_ms = metad_run(model_calc, workdir / f"n{n}_{r}", short, n, grid=False)
            record(f"nogrid_{n}", rate)
            record(f"nogrid_{n}_plumed_ms", plumed_ms)

    med = {name: statistics.median(values) for name, values in rates.items()}
    result = {
        "benchmark": "walkers",
        "system": "MIL-53(Al) 38 atoms, np relaxed cell, MTKNPT 300 K 0 GPa, dt 0.5 fs",
        "model": str(model_path),
        "model_source": model_source,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "note": "2-core machine shared with other jobs: steps/s are noisy, PLUMED ms less so",
        "cpu_count": os.cpu_count(),
        "steps": steps,
        "repeats": args.repeats,
        "bare_steps_per_s": round(med["bare"], 2),
        "model_ms_per_step": round(1000 / med["bare"], 3),
        "metad_steps_per_s": round(med["metad"], 2),
        "metad_overhead_percent": round(100 * (med["bare"] / med["metad"] - 1), 1),
        "metad_ase_wrapper_steps_per_s": round(med["metad_ase_wrapper"], 2),
        "metad_ase_wrapper_overhead_percent": round(
            100 * (med["bare"] / med["metad_ase_wrapper"] - 1), 1
        ),
        "plumed_ms_per_step": round(med["metad_plumed_ms"], 4),
        "plumed_share_of_model_percent": round(
            100 * med["metad_plumed_ms"] * med["bare"] / 1000, 2
        ),
        "run_segment_steps_per_s": round(med["run_segment"], 2) if "run_segment" in med else None,
        "run_segment_overhead_percent": (
            round(100 * (med["bare"] / med["run_segment"] - 1), 1) if "run_segment" in med else None
        ),
        "hills": {
            "grid_10_steps_per_s": round(med["grid_10"], 2),
            "grid_10000_steps_per_s": round(med["grid_10000"], 2),
            "grid_10_plumed_ms_per_step": round(med["grid_10_plumed_ms"], 4),
            "grid_10000_plumed_ms_per_step": round(med["grid_10000_plumed_ms"], 4),
            "grid_plumed_cost_ratio_10000_vs_10": round(
                med["grid_10000_plumed_ms"] / med["grid_10_plumed_ms"], 3
            ),
            "nogrid_10_plumed_ms_per_step": round(med["nogrid_10_plumed_ms"], 4),
            "nogrid_10000_plumed_ms_per_step": round(med["nogrid_10000_plumed_ms"], 4),
            "nogrid_plumed_cost_ratio_10000_vs_10": round(
                med["nogrid_10000_plumed_ms"] / med["nogrid_10_plumed_ms"], 3
            ),
        },
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "all": {k: [round(v, 4) for v in vs] for k, vs in rates.items()},
        "workdir": str(workdir),
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
