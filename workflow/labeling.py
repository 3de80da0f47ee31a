"""Label a file of frames at a reference level, in parallel through the shared execution layer.

``hillwalker label LEVEL FRAMES.extxyz -o OUT.extxyz`` calls :func:`label_file`. The level is any
:class:`~hillwalker.engines.levels.ReferenceLevel` (:func:`~hillwalker.engines.levels.load_level`:
a CP2K input, or a YAML level file for tblite or PySCF). Each frame is one ``dft`` task
(``tasks.label_frame`` → the level's ``single_point``) in its own directory ``<work>/<key>/``,
where ``key`` hashes the frame's geometry and the level's settings. A finished frame is written
there as ``frame.extxyz`` (atomically, last), so running the same command again after an
interruption reruns only the frames that had not finished.

Failed frames go to the output too, unlabeled, with ``status="failed"`` and their ``failure``
class in ``info``; a frame whose task could not run at all (a lost worker) is reported as a
``crash`` but not stored, so the next run tries it again. Frames are refused with the same
geometry check and threshold (``DEFAULT_MIN_DISTANCE``) as in ``hillwalker run``.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ase import Atoms

from hillwalker import tasks
from hillwalker.engines.dataset import STATUS_DONE, STATUS_FAILED, read_frames, write_frames
from hillwalker.engines.geometry import DEFAULT_MIN_DISTANCE
from hillwalker.engines.levels import (
    LevelError,
    ReferenceLevel,
    RunOptions,
    check_frames,
    load_level,
)
from hillwalker.sites import SiteProfile
from hillwalker.state import frame_digest, task_key

if TYPE_CHECKING:
    from hillwalker.engines.levels import SinglePointResult
    from hillwalker.execution import Execution
    from hillwalker.tasks import Timed

#: name of a finished frame in its task directory (the completion marker)
FRAME_FILE = "frame.extxyz"


class LabelingError(ValueError):
    """The level or the frames cannot be labeled; the message names the file."""


@dataclass
class LabelingSummary:
    output: Path
    work_dir: Path
    total: int
    done: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # failure class → count
    reused: int = 0  # frames finished by an earlier run, not recomputed
    code_seconds: float = 0.0  # inside the reference code, all frames together
    wall_seconds: float = 0.0

    def line(self) -> str:
        failed = sum(self.failed.values())
        classes = ", ".join(f"{k} {v}" for k, v in sorted(self.failed.items()))
        text = f"{self.done} done, {failed} failed" + (f" ({classes})" if classes else "")
        return f"{text} of {self.total} frames" + (
            f"; {self.reused} from an earlier run" if self.reused else ""
        )


#: called after each frame: (frames finished so far, total, index of the frame, the frame)
ProgressCallback = Callable[[int, int, int, Atoms], None]


def default_work_dir(output: Path) -> Path:
    return output.with_name(output.name + ".work")


def label_file(
    level_path: str | Path,
    frames_path: str | Path,
    output: str | Path,
    *,
    cores: int | None = None,
    site: SiteProfile | None = None,
    work_dir: str | Path | None = None,
    timeout: float | None = None,
    min_distance: float = DEFAULT_MIN_DISTANCE,
    on_frame: ProgressCallback | None = None,
) -> LabelingSummary:
    """Label every frame of ``frames_path`` at the level in ``level_path``; write ``output``."""
    from hillwalker.execution import Execution  # Parsl: imported only when labeling for real

    start = time.perf_counter()
    level_path, output = Path(level_path), Path(output)
    level, frames = _load(level_path, frames_path)
    work = Path(work_dir) if work_dir is not None else default_work_dir(output)
    work.mkdir(parents=True, exist_ok=True)
    batch = _Batch(level, frames, work, LabelingSummary(output, work, len(frames)), on_frame)
    todo = batch.reuse_finished()
    if todo:
        with Execution(site=site, run_dir=work, cores=cores) as ex:
            options = RunOptions(
                cores=ex.cp2k_omp_threads,
                timeout=timeout,
                min_distance=min_distance,
                command=tuple(ex.cp2k_command),
            )
            batch.run(ex, level_path, todo, options)
    write_frames(output, [batch.results[i] for i in range(len(frames))])
    batch.summary.failed = dict(batch.failures)
    batch.summary.wall_seconds = time.perf_counter() - start
    return batch.summary


def _load(level_path: Path, frames_path: str | Path) -> tuple[ReferenceLevel, list[Atoms]]:
    """The level and the frames, checked against each other before anything runs."""
    from hillwalker.engines.dataset import DatasetError

    try:
        level = load_level(level_path)
        frames = read_frames(frames_path)
        check_frames(level, frames)
    except (LevelError, DatasetError) as exc:
        raise LabelingError(str(exc)) from None
    return level, frames


@dataclass
class _Batch:
    """The frames of one ``label`` command and what has become of each."""

    level: ReferenceLevel
    frames: list[Atoms]
    work: Path
    summary: LabelingSummary
    on_frame: ProgressCallback | None
    results: dict[int, Atoms] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    keys: list[str] = field(init=False)  # each frame's task key: its directory under work

    def __post_init__(self) -> None:
        digest = self.level.digest()
        self.keys = [task_key("single_point", frame_digest(f), digest) for f in self.frames]

    def finished(self, index: int, frame: Atoms) -> None:
        self.results[index] = frame
        if frame.info.get("status") == STATUS_DONE:
            self.summary.done += 1
        else:
            self.failures[str(frame.info.get("failure") or "crash")] += 1
        if self.on_frame is not None:
            self.on_frame(len(self.results), len(self.frames), index, frame)

    def reuse_finished(self) -> list[int]:
        """Take the frames an earlier run finished; the indices still to label."""
        todo = []
        for i, key in enumerate(self.keys):
            stored = self.work / key / FRAME_FILE
            if stored.is_file():
                self.summary.reused += 1
                self.finished(i, read_frames(stored)[-1])
            else:
                todo.append(i)
        return todo

    def run(self, ex: Execution, level_path: Path, todo: list[int], options: RunOptions) -> None:
        pending: dict[cf.Future[Timed[SinglePointResult]], int] = {}
        for i in todo:
            workdir = str((self.work / self.keys[i]).resolve())
            future = ex.submit(
                "dft",
                tasks.label_frame,
                self.frames[i],
                str(level_path.resolve()),
                workdir,
                options,
            )
            pending[future] = i
        for future in tasks.as_completed(pending):
            i = pending[future]
            error = future.exception()
            if error is None:
                self._store(i, future.result().result)
            else:
                lost = self.frames[i].copy()
                lost.calc = None
                lost.info.update(
                    status=STATUS_FAILED,
                    failure="crash",
                    failure_message=f"task could not run: {error}",
                )
                self.finished(i, lost)

    def _store(self, i: int, result: SinglePointResult) -> None:
        info = self.frames[i].info
        provenance: dict[str, Any] = {
            "level": self.level.name,
            "task_id": self.keys[i],
            **{k: info[k] for k in ("generation", "walker") if k in info},
        }
        frame = result.to_atoms(self.frames[i], **provenance)
        self.summary.code_seconds += result.code_seconds
        write_frames(self.work / self.keys[i] / FRAME_FILE, [frame])
        self.finished(i, frame)
