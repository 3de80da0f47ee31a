"""Wall time lost to a kill -9 at each stage of a campaign (work redone + restart cost).

    .venv/bin/python benchmarks/bench_resume.py

Runs a tiny MIL-53 campaign (real CP2K xTB, PLUMED, NequIP; gen 0 + 1 walker generation) once
uninterrupted, then once per stage with a SIGKILL of the whole run in that stage followed by a
resume. Lost time = (killed run until the kill + resumed run) − uninterrupted run. Goal: at most
one task's worth (a single point, an MD segment, or the epochs since the last checkpoint).
Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from hillwalker.material_templates import new_from_template

HILLWALKER = str(Path(sys.executable).parent / "hillwalker")
CONFIG = {
    "name": "bench-resume",
    "material": {
        "structure": "structure.cif",
        "level": "levels/xtb.inp",
        "plumed": "plumed.dat",
        "nequip": "nequip.yaml",
    },
    "generation0": {"frames": 6, "position_sigma": 0.03, "cell_strain": 0.02},
    "walkers": {
        "count": 1,
        "ensemble": "npt",
        "temperature": 100.0,
        "timestep": 0.25,
        "steps": 400,
    },
    "training": {
        "mode": "warm",
        "epochs": 8,
        "warm_epochs": 4,
        "validation_fraction": 0.25,
        "overrides": {"num_features": 8, "batch_size": 2},
    },
    "stop": {"generations": 1},
    "seed": 3,
}


def make(root: Path) -> Path:
    new_from_template(root, "mil53-al")
    (root / "campaign.yaml").write_text(yaml.safe_dump(CONFIG))
    return root


def records(root: Path, kind: str) -> int:
    return len(list((root / ".hillwalker/tasks" / kind).glob("*.json")))


def epoch(root: Path, g: int) -> int:
    try:
        return int(
            json.loads((root / f"generations/{g:03d}/model/progress.json").read_text())["epoch"]
            or 0
        )
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def md_started(root: Path) -> bool:
    log = root / "generations/001/walkers/w0/walker.log"
    return (
        log.exists() and sum(1 for line in log.read_text().splitlines() if line[:1].isdigit()) >= 3
    )


STAGES = {
    "labeling": lambda r: 2 <= records(r, "single_point") < 6,
    "walker_md": md_started,
    "training": lambda r: epoch(r, 1) >= 2,
}


def run(root: Path, kill_when=None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [HILLWALKER, "run", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    while proc.poll() is None:
        if kill_when is not None and kill_when(root):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return time.perf_counter() - t0
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"hillwalker run {root} failed with exit {proc.returncode}")
    if kill_when is not None:
        raise SystemExit(f"{root}: the run ended before the stage to kill in")
    return time.perf_counter() - t0


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    reference = run(make(work / "reference"))
    stages = {}
    for name, condition in STAGES.items():
        root = make(work / name)
        until_kill = run(root, condition)
        resumed = run(root)
        stages[name] = {
            "until_kill_s": round(until_kill, 1),
            "resume_s": round(resumed, 1),
            "lost_s": round(until_kill + resumed - reference, 1),
        }
    timings = json.loads((work / "reference/generations/000/timings.json").read_text())
    sps = [
        json.loads(p.read_text())
        for p in (work / "reference/.hillwalker/tasks/single_point").glob("*.json")
    ]
    print(
        json.dumps(
            {
                "benchmark": "resume",
                "uninterrupted_s": round(reference, 1),
                "stages": stages,
                "one_single_point_s": round(max(s.get("seconds") or 0 for s in sps), 1),
                "generation0_wall_s": round(timings["wall_seconds"], 1),
                "workdir": str(work),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
