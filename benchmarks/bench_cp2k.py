"""Seconds per MIL-53(Al) GFN1-xTB single point through the CP2K engine, and its overhead.

    .venv/bin/python benchmarks/bench_cp2k.py [--repeats 3]

Configurations: 1 core (1 rank, 1 thread), 2 OpenMP threads, 2 MPI ranks (mpirun). For each,
the median over repeats of:
- ``wall_s``: ``single_point`` from call to return (input generation, CP2K, parsing, records);
- ``cp2k_s``: CP2K's own total time (the "CP2K" row of its TIMING table);
- ``process_s``: the CP2K process(es) from start to exit, timed around the subprocess;
- ``bare_s``: the same input run again directly with ``subprocess.run`` (no hillwalker);
- ``overhead_pct``: (wall − CP2K) / wall, the issue's definition — it includes the process
  start of cp2k.psmp (MPI init, reading its input schema), which is outside CP2K's timer;
- ``python_overhead_pct``: (wall − process) / wall, what hillwalker itself adds around the
  process (input generation, parsing, records);
- ``launch_overhead_pct``: (process − CP2K) / wall, CP2K's own start-up and shutdown.
Prints one JSON object. Other processes on the machine slow every number: the load average
at the start and end is part of the output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.io

from hillwalker.engines.cp2k import Level, parse_output, single_point

ROOT = Path(__file__).resolve().parents[1]
LEVEL = ROOT / "templates" / "mil53-al" / "levels" / "xtb.inp"
FRAME = ROOT / "tests" / "data" / "mil53_np_relaxed_xtb.extxyz"


def configurations() -> dict[str, tuple[list[str], int]]:
    mpirun = ["mpirun", "-np", "2", "--oversubscribe"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        mpirun.insert(1, "--allow-run-as-root")
    return {
        "1_core": (["cp2k.psmp"], 1),
        "2_omp_threads": (["cp2k.psmp"], 2),
        "2_mpi_ranks": ([*mpirun, "cp2k.psmp"], 1),
    }


def bare_run(workdir: Path, command: list[str], threads: int) -> float:
    """The engine's own input, run again without hillwalker."""
    out = workdir / "bare.out"
    out.unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMPI_MCA_ess_singleton_isolated="1")
    start = time.perf_counter()
    subprocess.run([*command, "-i", "attempt-1.inp", "-o", out.name], cwd=workdir, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    seconds = time.perf_counter() - start
    if parse_output(out.read_text()).energy_hartree is None:
        raise RuntimeError(f"{out}: no energy")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("cp2k.psmp") is None:
        print(json.dumps({"error": "cp2k.psmp not on PATH"}))
        return 1
    level = Level.from_file(LEVEL)  # loads the input schema once, as a worker would
    atoms = ase.io.read(FRAME)
    load_before = os.getloadavg()[0]
    results: dict[str, dict[str, float | int]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_cp2k_") as tmp:
        for name, (command, threads) in configurations().items():
            walls, cp2ks, procs, bares = [], [], [], []
            for r in range(args.repeats):
                work = Path(tmp) / f"{name}_{r}"
                res = single_point(atoms, level, work, command=command, omp_threads=threads)
                if res.status != "done":
                    raise RuntimeError(f"{name}: {res.failure}: {res.message}")
                walls.append(res.wall_seconds)
                cp2ks.append(res.code_seconds)
                procs.append(res.process_seconds)
                bares.append(bare_run(work, command, threads))
            wall, cp2k, proc, bare = (statistics.median(x) for x in (walls, cp2ks, procs, bares))
            results[name] = {
                "wall_s": round(wall, 3),
                "cp2k_s": round(cp2k, 3),
                "process_s": round(proc, 3),
                "bare_s": round(bare, 3),
                "overhead_pct": round(100 * (wall - cp2k) / wall, 1),
                "python_overhead_pct": round(100 * (wall - proc) / wall, 1),
                "launch_overhead_pct": round(100 * (proc - cp2k) / wall, 1),
                "repeats": args.repeats,
            }
    report = {
        "benchmark": "cp2k_single_point",
        "system": "MIL-53(Al) np, 38 atoms, GFN1-xTB (templates/mil53-al/levels/xtb.inp)",
        "results": results,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
