"""A task's CPU time (its threads and the programs it waited for) and a generation's core use."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from hillwalker import tasks
from hillwalker.timings import GenerationClock

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


def test_a_task_counts_the_cpu_time_of_its_programs_not_its_waits(tmp_path: Path) -> None:
    # a program it waits for (as CP2K or nequip-train): its CPU time counts
    clock = tasks._mark_started(tmp_path / "burn")
    subprocess.run([sys.executable, "-c", BURN.format(s=0.8)], check=True)
    burned = clock.done("result")
    assert burned.result == "result" and (tmp_path / "burn" / tasks.STARTED_NAME).is_file()
    assert burned.cpu_seconds is not None and 0.75 <= burned.cpu_seconds < burned.seconds + 0.5

    # waiting uses wall time, not CPU time
    clock = tasks._mark_started(tmp_path / "wait")
    time.sleep(0.8)
    waited = clock.done(None)
    assert waited.seconds >= 0.8 and waited.cpu_seconds is not None and waited.cpu_seconds < 0.2


def test_a_generations_core_use_is_its_tasks_cpu_time_over_cores_and_wall() -> None:
    clock = GenerationClock()
    clock.started = time.time() - 100.0  # a generation 100 s long
    clock.add("md", (clock.started, clock.started + 40), cpu=80.0)  # two walkers, two cores
    clock.add("dft", (clock.started + 40, clock.started + 50), cpu=10.0)
    clock.add("train", (clock.started + 50, clock.started + 100), cpu=70.0)
    clock.add("train", (clock.started + 99, clock.started + 100))  # not measured: left out
    summary = clock.summary(1, cores=2, resumed=False)
    assert summary["cpu_seconds"] == {"md": 80.0, "dft": 10.0, "train": 70.0}
    assert summary["cores"] == 2
    assert summary["core_busy_fraction"] == pytest.approx(160.0 / 200.0, rel=0.01)
