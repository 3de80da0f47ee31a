"""Benchmark: walker MD speed on the 38-atom MIL-53(Al) cell with a compiled NequIP model.

    .venv/bin/python benchmarks/bench_walkers.py [--model MODEL] [--rounds 12] [--chunk 25]

Prints one JSON object:
- ``bare_steps_per_s``: NPT (MTKNPT, full cell) MD with the model calculator alone;
- ``metad_*``: the same with the walkers' ``BiasedCalculator`` running the template's
  ``plumed.dat`` (VOLUME, well-tempered METAD on a GRID, two walls, PRINT); its overhead in %
  (goal ≤ 10 %); ``metad_ase_wrapper_*`` the same through ASE's own ``Plumed``;
  ``plumed_ms_per_step``: the time inside PLUMED itself;
- ``safety_checks_ms_per_step`` and ``run_segment_steps_per_s``: the engine's own segment;
- ``hills``: the cost per step with 10 and with 10,000 hills already in the bias (a prefilled
  HILLS file read through PLUMED's RESTART), with the template's GRID (goal: flat) and, for
  contrast, without it.

Every setup is built once and run in chunks of ``--chunk`` steps, interleaved round by round
(the order rotated), so that a machine shared with other jobs loads all setups alike; rates
are medians over chunks, overheads medians of the per-round time ratios.
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

from hillwalker.engines.geometry import too_close
from hillwalker.engines.plumed import (
    BiasedCalculator,
    clean_input,
    init_bias_dir,
    prepare_input,
)
from hillwalker.engines.plumed_kernel import use_kernel
from hillwalker.engines.walkers import Walker, WalkerSettings, run_segment

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


class Setup:
    """One MD setup kept alive between timed chunks, so setups can be interleaved in time."""

    def __init__(self, calc: object, atoms: Atoms) -> None:
        self.atoms = atoms
        atoms.calc = calc
        self.calc = calc
        self.dyn = integrator(atoms)
        self.dyn.run(5)  # warm-up (and the first, step-0 evaluation)
        self.chunks: list[float] = []

    def chunk(self, steps: int) -> float:
        started = time.perf_counter()
        self.dyn.run(steps)
        elapsed = time.perf_counter() - started
        self.chunks.append(elapsed)
        return elapsed


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


def metad_setup(
    model_calc: object,
    workdir: Path,
    hills: int | None,
    grid: bool,
    wrapper: type[Plumed] = BiasedCalculator,
) -> tuple[Setup, list[float]]:
    """An MD setup under the template's PLUMED input and a [seconds, calls] counter of the time
    spent inside PLUMED (``compute_bias``). ``hills``: how many hills the bias starts from."""
    workdir.mkdir(parents=True, exist_ok=True)
    bias_dir = workdir / "bias"
    init_bias_dir(bias_dir, 1)
    if hills:
        prefill_hills(bias_dir / "HILLS.0", hills)
    atoms = start_atoms()
    calc = wrapper(
        model_calc,
        plumed_lines(workdir, bias_dir, grid),
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
    return Setup(calc, atoms), spent


def safety_check_ms(settings: WalkerSettings) -> float:
    """Per-step cost of run_segment's safety checks on the MIL-53 cell (amortised strides)."""
    from hillwalker.engines import walkers

    atoms = start_atoms()
    n = 200
    started = time.perf_counter()
    for _ in range(n):
        too_close(atoms, settings.min_distance)
        walkers._state_copy(atoms, None, {})
    every_stride = (time.perf_counter() - started) / n
    started = time.perf_counter()
    for _ in range(n):
        atoms.get_temperature()
    every_step = (time.perf_counter() - started) / n
    return 1000 * (every_step + every_stride / settings.check_stride)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help=".nequip.pt2 / .nequip.zip / model directory")
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds")
    parser.add_argument("--chunk", type=int, default=25, help="MD steps per setup per round")
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

    def model() -> object:  # a calculator per setup: no cache shared between setups
        return load_calculator(model_path, device="cpu")

    names = ["bare", "metad", "metad_ase_wrapper", "grid_10", "grid_10000"]
    names += ["nogrid_10", "nogrid_10000"]
    setups: dict[str, Setup] = {"bare": Setup(model(), start_atoms())}
    plumed_time: dict[str, list[float]] = {}
    for name, hills, grid, wrapper in [
        ("metad", None, True, BiasedCalculator),
        ("metad_ase_wrapper", None, True, Plumed),
        ("grid_10", 10, True, BiasedCalculator),
        ("grid_10000", 10_000, True, BiasedCalculator),
        ("nogrid_10", 10, False, BiasedCalculator),
        ("nogrid_10000", 10_000, False, BiasedCalculator),
    ]:
        setups[name], plumed_time[name] = metad_setup(model(), workdir / name, hills, grid, wrapper)
    for spent in plumed_time.values():
        spent[:] = [0.0, 0]  # count the timed chunks only
    # interleaved chunks, the order rotated every round: a shared machine's load changes by the
    # second, so each round compares setups under (nearly) the same load
    for r in range(args.rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            setups[name].chunk(args.chunk)

    def paired(a: str, b: str) -> float:
        """Median over rounds of time(a)/time(b)."""
        return statistics.median(
            x / y for x, y in zip(setups[a].chunks, setups[b].chunks, strict=True)
        )

    def rate(name: str) -> float:
        return args.chunk / statistics.median(setups[name].chunks)

    def plumed_ms(name: str) -> float:
        seconds, calls = plumed_time[name]
        return 1000 * seconds / max(calls, 1)

    for name in plumed_time:
        setups[name].calc.plumed.finalize()  # type: ignore[attr-defined]

    settings = WalkerSettings(
        ensemble="npt",
        temperature=TEMPERATURE,
        pressure=0.0,
        timestep_fs=TIMESTEP_FS,
        steps=args.rounds * args.chunk,
        max_force=25.0,
        min_distance=0.6,
        max_temperature=3000.0,
        thermostat_time_fs=100.0,
        barostat_time_fs=1000.0,
    )
    started = time.perf_counter()
    walker = Walker(index=0, generation=0, n_walkers=1, bias_dir=workdir / "segment" / "bias")
    segment = run_segment(
        start_atoms(), model(), TEMPLATE, workdir / "segment", walker, settings, seed=0
    )
    segment_rate = (settings.steps + 1) / (time.perf_counter() - started)

    result = {
        "benchmark": "walkers",
        "system": "MIL-53(Al) 38 atoms, np relaxed cell, MTKNPT 300 K 0 GPa, dt 0.5 fs",
        "model": str(model_path),
        "model_source": model_source,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "note": (
            "shared 2-core machine: rates are medians of interleaved chunks, overheads medians "
            "of per-round time ratios; PLUMED ms is the time inside compute_bias"
        ),
        "rounds": args.rounds,
        "chunk_steps": args.chunk,
        "bare_steps_per_s": round(rate("bare"), 2),
        "model_ms_per_step": round(1000 / rate("bare"), 3),
        "metad_steps_per_s": round(rate("metad"), 2),
        "metad_overhead_percent": round(100 * (paired("metad", "bare") - 1), 1),
        "metad_ase_wrapper_steps_per_s": round(rate("metad_ase_wrapper"), 2),
        "metad_ase_wrapper_overhead_percent": round(
            100 * (paired("metad_ase_wrapper", "bare") - 1), 1
        ),
        "plumed_ms_per_step": round(plumed_ms("metad"), 4),
        "safety_checks_ms_per_step": round(safety_check_ms(settings), 4),
        "run_segment_steps_per_s": round(segment_rate, 2),
        "run_segment_status": segment.status,
        "hills": {
            "grid_10_steps_per_s": round(rate("grid_10"), 2),
            "grid_10000_steps_per_s": round(rate("grid_10000"), 2),
            "grid_step_time_ratio_10000_vs_10": round(paired("grid_10000", "grid_10"), 3),
            "grid_10_plumed_ms_per_step": round(plumed_ms("grid_10"), 4),
            "grid_10000_plumed_ms_per_step": round(plumed_ms("grid_10000"), 4),
            "nogrid_10_plumed_ms_per_step": round(plumed_ms("nogrid_10"), 4),
            "nogrid_10000_plumed_ms_per_step": round(plumed_ms("nogrid_10000"), 4),
            "nogrid_step_time_ratio_10000_vs_10": round(paired("nogrid_10000", "nogrid_10"), 3),
        },
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "workdir": str(workdir),
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
