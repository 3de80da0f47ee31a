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


def test_models_are_compiled_only_where_the_walker_time_saved_outweighs_the_compile() -> None:
    import yaml

    from hillwalker.config import Campaign
    from hillwalker.settings import compile_models

    root = Path(__file__).resolve().parents[2]
    raw = yaml.safe_load((root / "examples/mil53-xtb/campaign.yaml").read_text())

    def cfg(count: int, steps: int, compile: object = "auto") -> Campaign:
        walkers = {**raw["walkers"], "count": count, "steps": steps}
        return Campaign.model_validate(
            {**raw, "walkers": walkers, "training": {**raw["training"], "compile": compile}}
        )

    # the main job, 4 walkers x 1000 steps: on 2 cores they save ~51 s of walker time, less
    # than the 66 s compile; one walker of 4000 steps saves ~101 s; on a cluster (None) the 4
    # walkers run at once and save ~25 s; 64 walkers x 4000 steps on 16 cores: ~405 s
    assert not compile_models(cfg(4, 1000), 2)
    assert compile_models(cfg(1, 4000), 2)
    assert not compile_models(cfg(4, 1000), None)
    assert compile_models(cfg(64, 4000), 16)
    assert compile_models(cfg(4, 1000, True), 2) and not compile_models(cfg(1, 10**6, False), 2)
