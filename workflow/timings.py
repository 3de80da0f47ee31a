"""Where a generation's wall time went: MD, labeling, training, or nothing running."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hillwalker.engines.files import atomic_write_json

#: the task kinds whose time is split out
KINDS = ("md", "dft", "train")


class GenerationClock:
    """The intervals in which tasks of one generation ran, and the generation's wall time."""

    def __init__(self) -> None:
        self.intervals: list[tuple[str, float, float]] = []
        #: CPU seconds the tasks used, by kind (tasks that measured it)
        self.cpu: dict[str, float] = {}
        self.started = time.time()

    def add(self, kind: str, interval: tuple[float, float], cpu: float | None = None) -> None:
        self.intervals.append((kind, *interval))
        if cpu is not None:
            self.cpu[kind] = self.cpu.get(kind, 0.0) + cpu

    def summary(self, generation: int, *, cores: int, resumed: bool) -> dict[str, Any]:
        """Wall time split by what ran; 'idle' is time with no task running."""
        wall = time.time() - self.started
        busy = {kind: union([(a, b) for k, a, b in self.intervals if k == kind]) for kind in KINDS}
        any_task = union([(a, b) for _, a, b in self.intervals])
        return {
            "generation": generation,
            "wall_seconds": wall,
            "busy_seconds": busy,
            "idle_seconds": wall - any_task,
            "overhead_fraction": (wall - any_task) / wall if wall > 0 else None,
            "labeling": self._labeling(cores),
            # how busy the cores were over the whole generation: the CPU time its tasks used
            # (threads and the programs they ran) over cores x wall time
            "cpu_seconds": dict(self.cpu),
            "cores": cores,
            "core_busy_fraction": sum(self.cpu.values()) / (cores * wall) if wall > 0 else None,
            # a resumed generation's timings miss the tasks found done
            "resumed": resumed,
        }

    def write(self, path: Path, generation: int, *, cores: int, resumed: bool) -> None:
        atomic_write_json(path, self.summary(generation, cores=cores, resumed=resumed))

    def _labeling(self, cores: int) -> dict[str, Any]:
        dft = [(a, b) for k, a, b in self.intervals if k == "dft"]
        if not dft:
            return {}
        window = max(b for _, b in dft) - min(a for a, _ in dft)
        task_seconds = sum(b - a for a, b in dft)
        return {
            "window_seconds": window,
            "task_seconds": task_seconds,
            "cores": cores,
            "core_busy_fraction": task_seconds / (cores * window) if window > 0 else None,
        }


def union(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by a set of time intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total
