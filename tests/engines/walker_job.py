"""One walker segment in its own process, as a workflow task would run it (used by test_walkers).

    python walker_job.py JOB.json

JOB.json: workdir, bias_dir, walker, n_walkers, generation, steps, seed, and optionally
``pause_at`` (model call number) + ``pause_until`` (a file): the model calculator waits there
until the file exists — lets a test order two real concurrent walkers without timing guesses.
Writes ``<workdir>/result.json`` when the segment is done.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ase import Atoms
from ase.calculators.lj import LennardJones

from hillwalker.engines.walkers import Walker, WalkerSettings, run_segment

#: LJ trimer, CV = distance of atoms 1 and 2 (nm); exact (no grid) hills every 5 steps
PLUMED_INPUT = """
d: DISTANCE ATOMS=1,2
metad: METAD ARG=d SIGMA=0.02 HEIGHT=0.5 PACE=5
PRINT ARG=d,metad.bias STRIDE=1 FILE=COLVAR FMT=%24.14f
"""


def lj_settings(**changes: object) -> WalkerSettings:
    """The trimer's walker settings: cold, long steps; every campaign-set field spelled out."""
    fields: dict[str, object] = {
        "ensemble": "nvt",
        "temperature": 60.0,
        "pressure": None,
        "timestep_fs": 5.0,
        "steps": 50,
        "max_force": 25.0,
        "min_distance": 0.6,
        "max_temperature": 3000.0,
    }
    return WalkerSettings(**{**fields, **changes})  # type: ignore[arg-type]


def trimer() -> Atoms:
    return Atoms("Ar3", positions=[[0.0, 0.0, 0.0], [3.8, 0.0, 0.0], [1.9, 3.3, 0.0]])


class PausingLJ(LennardJones):
    """A Lennard-Jones trimer that can wait, at one call, for a file to appear.

    The well (0.1 eV, ten times argon's) keeps the trimer bound under the bias of these tests,
    so concurrent walkers explore the same range of the CV and feel each other's hills.
    """

    def __init__(self, pause_at: int | None = None, pause_until: str | None = None) -> None:
        super().__init__(sigma=3.4, epsilon=0.1, rc=10.0)
        self.calls = 0
        self.pause_at = pause_at
        self.pause_until = Path(pause_until) if pause_until else None

    def calculate(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == self.pause_at and self.pause_until is not None:
            deadline = time.monotonic() + 120
            while not self.pause_until.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.pause_until} never appeared")
                time.sleep(0.05)
        super().calculate(*args, **kwargs)


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    workdir = Path(job["workdir"])
    settings = lj_settings(steps=job["steps"], walkers_rstride=5, log_stride=1)
    walker = Walker(
        index=job["walker"],
        generation=job.get("generation", 1),
        n_walkers=job["n_walkers"],
        bias_dir=Path(job["bias_dir"]),
        bias=job.get("bias", "shared"),
    )
    segment = run_segment(
        trimer(),
        PausingLJ(job.get("pause_at"), job.get("pause_until")),
        PLUMED_INPUT,
        workdir,
        walker,
        settings,
        seed=job["seed"],
    )
    result = {
        "status": segment.status,
        "start_step": segment.start_step,
        "end_step": segment.end_step,
        "hills_added": segment.hills_added,
        "bias": segment.final.info["bias"],
        "cv": segment.final.info["cv"],
        "colvar": str(segment.colvar),
    }
    tmp = workdir / "result.json.tmp"
    tmp.write_text(json.dumps(result))
    tmp.replace(workdir / "result.json")


if __name__ == "__main__":
    main(sys.argv[1])
