"""What a Parsl worker runs: thin, picklable top-level functions over the engines.

Each takes paths and plain settings (so they travel cheaply to a SLURM node), calls one engine,
writes its result files into its own task directory, and returns a small summary. The campaign
(``campaign.py``) turns the summaries into task records; nothing here knows about Parsl.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ase import Atoms


def _mark_started(workdir: str | Path) -> float:
    """``started.json`` in the task's directory: when a worker took it up (a killed task's
    lost work is the time since then)."""
    from hillwalker.engines.files import atomic_write_json

    started = time.time()
    Path(workdir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(workdir) / "started.json", {"started": started, "pid": os.getpid()})
    return started


def _threads(n: int) -> None:
    """Limit BLAS/torch threads of this worker (one worker per core on a local machine)."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass


def label_frame(
    frame: Atoms,
    level_path: str,
    workdir: str,
    *,
    command: list[str],
    omp_threads: int,
    timeout: float,
    min_distance: float,
    provenance: dict[str, Any],
) -> tuple[Atoms, dict[str, Any]]:
    """One CP2K single point → (the frame with labels or ``status=failed`` and its class, timing)."""
    from hillwalker.engines.cp2k import Level, single_point

    started = _mark_started(workdir)
    level = Level.from_file(level_path)
    result = single_point(
        frame,
        level,
        Path(workdir),
        command=command,
        omp_threads=omp_threads,
        timeout=timeout,
        min_distance=min_distance,
    )
    labeled = result.to_atoms(frame, **provenance)
    timing = {
        "interval": [started, time.time()],
        "cp2k_seconds": float(result.cp2k_seconds),
        "seconds": float(result.wall_seconds),
    }
    return labeled, timing


def train_generation(
    data: str,
    out_dir: str,
    *,
    template: str,
    settings: dict[str, Any],
    init_from: str | None,
    device: str = "auto",
) -> dict[str, Any]:
    """Train (or warm-start) one generation's model; returns paths and validation metrics."""
    from hillwalker.engines.nequip import TrainSettings, train

    started = _mark_started(out_dir)
    model = train(
        Path(data),
        Path(out_dir),
        template=Path(template),
        settings=TrainSettings.from_template(Path(template), **settings),
        init_from=Path(init_from) if init_from else None,
        device=device,
    )
    return {
        "directory": str(model.directory),
        "package": str(model.package),
        "compiled": str(model.compiled),
        "record": str(model.record),
        "metrics": dict(model.metrics),
        "interval": [started, time.time()],
        "seconds": time.time() - started,
    }


def explore(
    model: str,
    start: str,
    plumed_input: str,
    workdir: str,
    *,
    walker: int,
    generation: int,
    n_walkers: int,
    bias_dir: str,
    bias: str,
    settings: dict[str, Any],
    seed: int,
    last_safe: str | None,
    threads: int = 1,
) -> dict[str, Any]:
    """One walker's MD segment with the current model and the (shared) bias."""
    import ase.io

    from hillwalker.engines.walkers import WalkerSettings, run_segment_from_model

    _threads(threads)
    started = _mark_started(workdir)
    # a walker state is an ASE .traj (with momenta) or the start structure's extxyz
    safe = ase.io.read(last_safe, index=-1) if last_safe else None
    segment = run_segment_from_model(
        Path(model),
        Path(start),
        Path(plumed_input),
        Path(workdir),
        walker=walker,
        generation=generation,
        n_walkers=n_walkers,
        bias_dir=Path(bias_dir),
        bias=bias,
        settings=WalkerSettings(**settings),
        seed=seed,
        last_safe=safe,
    )
    return {
        "status": segment.status,
        "final": segment.final,
        "state_path": str(segment.state_path),
        "steps_done": int(segment.steps_done),
        "start_step": int(segment.start_step),
        "end_step": int(segment.end_step),
        "colvar": str(segment.colvar),
        "events": list(segment.events),
        "interval": [started, time.time()],
        "seconds": time.time() - started,
    }
