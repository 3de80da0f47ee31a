"""What a Parsl worker runs: thin, picklable top-level functions over the engines.

Each takes paths and the engines' own settings objects (so they travel cheaply to a SLURM node),
calls one engine, and returns the engine's typed result (a picklable dataclass) with the time
interval it ran in. The campaign (``campaign.py``) turns results into task records; nothing here
knows about Parsl.

No task changes the worker's process-wide state (environment variables, thread counts) for the
tasks that come after it in the same worker: resources are passed to each engine explicitly.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ase import Atoms

from hillwalker.engines.files import atomic_write_json

if TYPE_CHECKING:
    from hillwalker.engines.levels import RunOptions, SinglePointResult
    from hillwalker.engines.nequip import TrainedModel, TrainSettings
    from hillwalker.engines.potentials import Potential
    from hillwalker.engines.walkers import Walker, WalkerSegment, WalkerSettings

T = TypeVar("T")

#: written in a task's directory when a worker takes it up
STARTED_NAME = "started.json"


@dataclass
class Timed(Generic[T]):
    """An engine's result, when the task that made it ran (``time.time()`` seconds) and the CPU
    time it used (its worker process's threads and the programs it waited for, such as CP2K and
    nequip-train; None where not measured)."""

    result: T
    started: float
    finished: float
    cpu_seconds: float | None = None

    @property
    def interval(self) -> tuple[float, float]:
        return (self.started, self.finished)

    @property
    def seconds(self) -> float:
        return self.finished - self.started


def _cpu() -> float:
    """CPU seconds of this process (all its threads) and of the children it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass(frozen=True)
class _Start:
    wall: float
    cpu: float

    def done(self, result: T) -> Timed[T]:
        """``result`` timed from this start; a worker process runs one task at a time, so the
        process's CPU time since the start is the task's."""
        return Timed(result, self.wall, time.time(), _cpu() - self.cpu)


def _mark_started(workdir: str | Path) -> _Start:
    """``started.json`` in the task's directory: when a worker took it up (a killed task's
    lost work is the time since then)."""
    start = _Start(time.time(), _cpu())
    Path(workdir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(workdir) / STARTED_NAME, {"started": start.wall, "pid": os.getpid()})
    return start


def label_frame(
    frame: Atoms, level_path: str, workdir: str, options: RunOptions
) -> Timed[SinglePointResult]:
    """One single point of ``frame`` at the level in ``level_path`` (any code)."""
    from hillwalker.engines.levels import load_level

    clock = _mark_started(workdir)
    result = load_level(level_path).single_point(frame, Path(workdir), options)
    return clock.done(result)


def train_generation(
    data: str,
    out_dir: str,
    *,
    template: str,
    settings: TrainSettings,
    init_from: str | None,
    threads: int,
    device: str = "auto",
    compile: bool = True,
    species_map: dict[str, str] | None = None,
    refit_references: bool = False,
) -> Timed[TrainedModel]:
    """Train (or warm-start) one generation's model with ``threads`` CPU threads; ``compile``:
    AOTInductor-compile it for the walkers (else they run the eager package). ``species_map``
    (new element -> element of ``init_from``): start from ``init_from`` with each new element
    copied from its source (model surgery), the new elements' energy references fitted to
    ``data``; ``refit_references``: every element's reference fitted to ``data``."""
    from hillwalker.engines.nequip import train

    clock = _mark_started(out_dir)
    if init_from and (species_map or refit_references):
        from hillwalker.engines.dataset import read_frames
        from hillwalker.modeling import transferred_start

        surgery = transferred_start(
            Path(init_from),
            Path(out_dir),
            species_map or {},
            read_frames(data),
            threads,
            refit_all=refit_references,
        )
        init_from = str(surgery)
    model = train(
        Path(data),
        Path(out_dir),
        template=Path(template),
        settings=settings,
        init_from=Path(init_from) if init_from else None,
        device=device,
        threads=threads,
        compile=compile,
    )
    return clock.done(model)


def train_levels_generation(
    data: str,
    out_dir: str,
    *,
    method: str,
    target: str,
    baseline: str,
    baseline_level: str,
    template: str,
    settings: TrainSettings,
    init_from: str | None,
    threads: int,
    device: str = "auto",
    compile: bool = True,
    intermediates: Sequence[str] = (),
) -> Timed[Potential]:
    """Train one generation's potential on frames labeled at two levels or more
    (``training.method``; hierarchical: ``intermediates`` between the baseline and the
    target), each NequIP part warm-started from its namesake in ``init_from`` when given."""
    from hillwalker.engines.multilevel import read_levels
    from hillwalker.engines.potentials import train_potential

    clock = _mark_started(out_dir)
    potential = train_potential(
        read_levels([data]), Path(out_dir), method=method, target=target, baseline=baseline,
        baseline_level=Path(baseline_level), intermediates=intermediates,
        template=Path(template), settings=settings,
        init_from=Path(init_from) if init_from else None, device=device, compile=compile,
        threads=threads,
    )  # fmt: skip
    return clock.done(potential)


def explore(
    model: str,
    start: str,
    plumed_input: str,
    workdir: str,
    *,
    walker: Walker,
    settings: WalkerSettings,
    seed: int,
    last_safe: str | None,
    threads: int = 1,
    bonds_of: str | None = None,
) -> Timed[WalkerSegment]:
    """One walker's MD segment with the current model (or potential: the sum of its parts, an
    in-process baseline level included) and the (shared) bias; ``bonds_of``: the structure file
    whose covalent bonds the walker keeps."""
    import ase.io

    from hillwalker.engines.geometry import bond_graph
    from hillwalker.engines.potentials import load_potential
    from hillwalker.engines.walkers import run_segment

    clock = _mark_started(workdir)
    # a walker state is an ASE .traj (with momenta) or the start structure's extxyz
    safe = ase.io.read(last_safe, index=-1) if last_safe else None
    segment = run_segment(
        Path(start),
        load_potential(Path(model), threads=threads, cores=threads),
        Path(plumed_input),
        Path(workdir),
        walker,
        settings,
        seed=seed,
        last_safe=safe if isinstance(safe, Atoms) else None,
        model=model,
        bonds=bond_graph(ase.io.read(bonds_of, index=0)) if bonds_of else None,
    )
    return clock.done(segment)


def score_model(
    model: str, frames: str, *, threads: int, level: str | None = None
) -> Timed[dict[str, Any]]:
    """Errors of a model or potential on labeled frames (the keys of ``hillwalker evaluate
    --json``); ``level``: only the frames labeled at that level (or naming none)."""
    from hillwalker.engines.dataset import read_frames
    from hillwalker.engines.potentials import score_frames

    clock = _Start(time.time(), _cpu())
    found = read_frames(frames)
    if level is not None:
        found = [f for f in found if f.info.get("level", level) == level]
    errors = score_frames(Path(model), found, source=frames, threads=threads)
    return clock.done(errors)


#: seconds a waiting main thread sleeps at a time (see :func:`result_of`)
WAIT_SLICE = 1.0


def result_of(future: cf.Future[T]) -> T:
    """``future.result()``, waited for in slices: a Ctrl-C (SIGINT) that the kernel delivers to
    another thread (Parsl's, ZMQ's) does not wake a main thread blocked in an untimed lock wait
    (CPython), so an untimed wait could outlast Ctrl-C by the whole task."""
    while True:
        try:
            return future.result(timeout=WAIT_SLICE)
        except cf.TimeoutError:
            continue


def as_completed(futures: Iterable[cf.Future[Any]]) -> Iterator[cf.Future[Any]]:
    """``concurrent.futures.as_completed``, waited for in slices (see :func:`result_of`)."""
    pending = set(futures)
    while pending:
        done, pending = cf.wait(pending, timeout=WAIT_SLICE, return_when=cf.FIRST_COMPLETED)
        yield from done
