"""NequIP engine cost on MIL-53(Al): training seconds per epoch, compile time, MD steps/s.

    .venv/bin/python benchmarks/bench_nequip.py [--epochs 4] [--threads 2] [--md-steps 200]

Trains the template's default model size (r 5 Å, l_max 1, 2 layers x 32 features) on the 48
GFN1-xTB frames of tests/data for a few epochs, AOTInductor-compiles it, and runs the 38-atom cell
with plain ASE MD (VelocityVerlet and Langevin) on the compiled and on the eager model. With a
CUDA GPU the same is measured on the GPU. Prints one JSON object. The machine's load average is
included: timings on a shared machine are only as good as its idleness. On 2 cores that other
work also uses, 2 torch threads spin against each other (MD fell to ~2 steps/s, epochs to
20-65 s); compare with --threads 1.
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
from typing import Any

import numpy as np
from ase import units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from hillwalker.engines.dataset import read_frames
from hillwalker.engines.nequip import TrainSettings, compile_model, load_calculator, train

ROOT = Path(__file__).resolve().parents[1]
FRAMES = ROOT / "tests" / "data" / "mil53_xtb_frames.extxyz"
START = ROOT / "tests" / "data" / "mil53_np_relaxed_xtb.extxyz"


def md_steps_per_second(model: Path, device: str, steps: int, integrator: str) -> float:
    atoms = read_frames(START)[0]
    atoms.calc = load_calculator(model, device=device)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    if integrator == "verlet":
        md = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    else:
        md = Langevin(
            atoms,
            timestep=1.0 * units.fs,
            temperature_K=300,
            friction=0.01,
            rng=np.random.default_rng(1),
        )
    md.run(10)  # warm-up: first calls build kernels / allocate
    started = time.perf_counter()
    md.run(steps)
    return steps / (time.perf_counter() - started)


def measure(device: str, workdir: Path, epochs: int, threads: int, md_steps: int) -> dict[str, Any]:
    settings = TrainSettings.from_template(None, epochs=epochs)
    started = time.perf_counter()
    model = train(
        FRAMES,
        workdir / f"model-{device}",
        settings=settings,
        device=device,
        compile=False,
        threads=threads,
    )
    train_wall = time.perf_counter() - started
    epoch_seconds = [h["seconds"] for h in model.metrics["history"]]
    started = time.perf_counter()
    compiled = compile_model(
        model.package, workdir / f"model-{device}.nequip.pt2", device=device, threads=threads
    )
    compile_seconds = time.perf_counter() - started
    return {
        "model": {
            key: model.metrics["config"]["settings"][key]
            for key in ("r_max", "l_max", "num_layers", "num_features", "batch_size")
        },
        "n_train": model.metrics["n_train"],
        "epochs": epochs,
        "seconds_per_epoch_median": statistics.median(epoch_seconds[1:] or epoch_seconds),
        "seconds_per_epoch": epoch_seconds,
        "train_call_seconds": round(train_wall, 2),
        "package_seconds": model.metrics["wall_seconds"]["package"],
        "compile_seconds": round(compile_seconds, 2),
        "md_atoms": 38,
        "md_steps_per_s": {
            "compiled_verlet": md_steps_per_second(compiled, device, md_steps, "verlet"),
            "compiled_langevin": md_steps_per_second(compiled, device, md_steps, "langevin"),
            "eager_verlet": md_steps_per_second(model.package, device, md_steps // 4, "verlet"),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--md-steps", type=int, default=200)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "benchmark": "nequip",
        "system": "MIL-53(Al), 38 atoms, 48 GFN1-xTB frames",
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="bench_nequip_") as tmp:
        result["cpu"] = measure("cpu", Path(tmp), args.epochs, args.threads, args.md_steps)
        if torch.cuda.is_available():
            result["cuda_device"] = torch.cuda.get_device_name(0)
            result["cuda"] = measure("cuda", Path(tmp), args.epochs, args.threads, args.md_steps)
        else:
            result["cuda"] = None
    result["load_average_end"] = os.getloadavg()
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
