"""Seconds per MIL-53 single point at GFN1-xTB: tblite (in-process library) vs CP2K (subprocess),
one core each, and tblite as an ASE calculator for MD (steps/s) — the number that decides
whether a QM baseline at every MD step is practical.

    .venv/bin/python benchmarks/bench_levels.py [--calls 3] [--md-steps 30]

Prints one JSON object. Measured once (2026-12, 2 cores shared with other jobs, load ~8): CP2K
17.4 s, tblite level 9.4 s, tblite in-process 9.1 s per call, tblite MD 0.12 steps/s (20
steps) -- several times slower than on an idle machine, and far from the ~80 steps/s of a NequIP
walker on MIL-53: GFN1-xTB at every MD step is not practical here. ``tblite_level_s`` is the level's ``single_point`` (a child process per
call: Python start-up and imports included), ``tblite_inprocess_s`` the bare calculation
(a fresh calculator each call, as a label of an unrelated frame would be), ``cp2k_level_s``
CP2K's ``single_point`` (subprocess, its own SCF settings from levels/xtb.inp).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ROOT / "templates" / "mil53-al" / "levels"
FRAMES = ROOT / "tests" / "data" / "mil53_xtb_frames.extxyz"


def _frames(n: int) -> list:
    from hillwalker.engines.dataset import read_frames

    frames = read_frames(FRAMES)[:n]
    for atoms in frames:
        atoms.calc = None
    return frames


def _per_call(level_file: Path, frames: list, work: Path) -> list[float]:
    from hillwalker.engines.levels import RunOptions, load_level

    level = load_level(level_file)
    seconds = []
    for i, atoms in enumerate(frames):
        start = time.perf_counter()
        result = level.single_point(atoms, work / f"{level_file.stem}-{i}", RunOptions(cores=1))
        seconds.append(time.perf_counter() - start)
        if result.status != "done":
            raise RuntimeError(f"{level_file.name} frame {i}: {result.failure}: {result.message}")
    return seconds


def _inprocess(frames: list) -> list[float]:
    from hillwalker.engines.levels import load_level

    level = load_level(LEVELS / "gfn1-tblite.yaml")
    seconds = []
    for atoms in frames:
        probe = atoms.copy()
        probe.calc = level.calculator(cores=1)  # type: ignore[attr-defined]
        start = time.perf_counter()
        probe.get_forces()
        probe.get_stress()
        seconds.append(time.perf_counter() - start)
    return seconds


def _md(steps: int) -> float:
    import numpy as np
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from hillwalker.engines.levels import load_level

    level = load_level(LEVELS / "gfn1-tblite.yaml")
    atoms = _frames(1)[0]
    atoms.calc = level.calculator(cores=1)  # type: ignore[attr-defined]
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01, fixcm=False)
    atoms.get_forces()  # the first call (no previous wavefunction) is not an MD step
    start = time.perf_counter()
    dyn.run(steps)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--md-steps", type=int, default=30)
    args = parser.parse_args()
    frames = _frames(args.calls)
    with tempfile.TemporaryDirectory(prefix="bench-levels-") as tmp:
        work = Path(tmp)
        cp2k = _per_call(LEVELS / "xtb.inp", frames, work)
        tblite = _per_call(LEVELS / "gfn1-tblite.yaml", frames, work)
    inprocess = _inprocess(frames)
    steps_per_s = _md(args.md_steps)
    print(
        json.dumps(
            {
                "system": f"MIL-53(Al), {len(frames[0])} atoms, periodic, GFN1-xTB, 1 core",
                "calls": args.calls,
                "cp2k_level_s": round(statistics.median(cp2k), 3),
                "tblite_level_s": round(statistics.median(tblite), 3),
                "tblite_inprocess_s": round(statistics.median(inprocess), 3),
                "tblite_md_steps_per_s": round(steps_per_s, 3),
                "md_steps": args.md_steps,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
