"""Label a file of frames with CP2K, in parallel through the shared execution layer.

``hillwalker label LEVEL.inp FRAMES.extxyz -o OUT.extxyz`` calls :func:`label_file`. Each frame
is one ``dft`` task (``tasks.label_frame`` → ``engines.cp2k.single_point``) in its own directory
``<work>/<key>/``, where ``key`` hashes the frame's geometry and the level's settings. A finished
frame is written there as ``frame.extxyz`` (atomically, last), so running the same command again
after an interruption reruns only the frames that had not finished.

Failed frames go to the output too, unlabeled, with ``status="failed"`` and their ``failure``
class in ``info``; a frame whose task could not run at all (a lost worker) is reported as a
``crash`` but not stored, so the next run tries it again.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ase import Atoms

from hillwalker import tasks
from hillwalker.engines.cp2k import Level, LevelError
from hillwalker.engines.dataset import STATUS_DONE, STATUS_FAILED, read_frames, write_frames
from hillwalker.engines.geometry import DEFAULT_MIN_DISTANCE
from hillwalker.sites import SiteProfile
from hillwalker.state import frame_digest, task_key

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
    cp2k_seconds: float = 0.0
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
    from hillwalker.engines.dataset import DatasetError
    from hillwalker.execution import Execution  # Parsl: imported only when labeling for real

    start = time.perf_counter()
    level_path, output = Path(level_path), Path(output)
    try:
        level = Level.from_file(level_path)
        frames = read_frames(frames_path)
        level.check_elements({s for f in frames for s in f.get_chemical_symbols()})
    except (LevelError, DatasetError) as exc:
        raise LabelingError(str(exc)) from None
    work = Path(work_dir) if work_dir is not None else default_work_dir(output)
    work.mkdir(parents=True, exist_ok=True)
    summary = LabelingSummary(output=output, work_dir=work, total=len(frames))
    results: dict[int, Atoms] = {}
    failures: Counter[str] = Counter()

    def finished(index: int, frame: Atoms) -> None:
        results[index] = frame
        if frame.info.get("status") == STATUS_DONE:
            summary.done += 1
        else:
            failures[str(frame.info.get("failure") or "crash")] += 1
        if on_frame is not None:
            on_frame(len(results), len(frames), index, frame)

    keys = [task_key("single_point", frame_digest(f), level.digest()) for f in frames]
    todo = []
    for i, key in enumerate(keys):
        stored = work / key / FRAME_FILE
        if stored.is_file():
            summary.reused += 1
            finished(i, read_frames(stored)[-1])
        else:
            todo.append(i)

    if todo:
        with Execution(site=site, run_dir=work, cores=cores) as ex:
            pending: dict[cf.Future[tuple[Atoms, dict[str, float]]], int] = {}
            for i in todo:
                info = frames[i].info
                provenance = {
                    "level": level.name,
                    "task_id": keys[i],
                    **{k: info[k] for k in ("generation", "walker") if k in info},
                }
                future = ex.submit(
                    "dft",
                    tasks.label_frame,
                    frames[i],
                    str(level_path.resolve()),
                    str((work / keys[i]).resolve()),
                    command=ex.cp2k_command,
                    omp_threads=ex.cp2k_omp_threads,
                    timeout=timeout,
                    min_distance=min_distance,
                    provenance=provenance,
                )
                pending[future] = i
            for future in cf.as_completed(pending):
                i = pending[future]
                error = future.exception()
                if error is not None:
                    lost = frames[i].copy()
                    lost.calc = None
                    lost.info.update(
                        status=STATUS_FAILED,
                        failure="crash",
                        failure_message=f"task could not run: {error}",
                    )
                    finished(i, lost)
                    continue
                frame, timing = future.result()
                summary.cp2k_seconds += timing.get("cp2k_seconds", 0.0)
                write_frames(work / keys[i] / FRAME_FILE, [frame])
                finished(i, frame)

    write_frames(output, [results[i] for i in range(len(frames))])
    summary.failed = dict(failures)
    summary.wall_seconds = time.perf_counter() - start
    return summary
