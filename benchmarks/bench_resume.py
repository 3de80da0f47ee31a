"""Work lost to a kill -9 at each stage of a campaign, and what a restart costs.

    .venv/bin/python benchmarks/bench_resume.py [--repeats N]

Runs a tiny MIL-53 campaign (real CP2K xTB, PLUMED, NequIP; gen 0 + 1 walker generation) once
uninterrupted, then once per stage with a SIGKILL of the whole run (its process group: hillwalker,
interchange, workers, CP2K, nequip-train) in the middle of a task of that stage, followed by a
resume. Prints one JSON object. Per stage:

- ``redone_s``: the work the kill threw away, measured at the kill from the task's own files: a
  single point's time since its CP2K input was written, a walker segment's time since it began
  (a killed segment is redone from its start, its hills rolled back), a training's time since
  its last checkpoint (last.ckpt, written every epoch; the resumed training continues from it).
  Tasks running side by side are redone side by side: the wall time lost is the longest of
  them. Goal: at most one task's worth, ``one_task_s``: a single point, a walker segment, and
  for training one epoch (the unit a training resumes at; the whole training task is longer).
- ``restart_s``: the fixed cost of running ``hillwalker run`` again (validate, start and stop
  Parsl, find every finished task): a run on the finished reference campaign, which does nothing.
- ``lost_in_stage_s``: the killed stage's wall time (its part of the killed run until the kill +
  the resumed run until the stage ends) − the same stage in the uninterrupted run (stage ends
  from run.log): restart + redone + restarting the engines in fresh workers (imports, model
  load, nequip-train's start-up), without the noise of the other stages.
- ``lost_wall_s``: (killed run until the kill + resumed run) − uninterrupted run: the stage's
  loss plus stopping the dead run's leftover workers and run-to-run noise of the other stages
  (training and compile times vary by seconds).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import yaml

from hillwalker.material_templates import new_from_template

HILLWALKER = str(Path(sys.executable).parent / "hillwalker")
FRAMES = 10
STEPS = 400
CONFIG = {
    "name": "bench-resume",
    "material": {
        "structure": "structure.cif",
        "level": "levels/xtb.inp",
        "plumed": "plumed.dat",
        "nequip": "nequip.yaml",
    },
    "generation0": {"frames": FRAMES, "position_sigma": 0.03, "cell_strain": 0.02},
    "walkers": {
        "count": 1,
        "ensemble": "npt",
        "temperature": 100.0,
        "timestep": 0.25,
        "steps": STEPS,
    },
    "training": {
        "mode": "warm",
        # a model whose walker survives 400 steps (6 frames, 8 features: it blew up by step 50)
        "epochs": 60,
        "warm_epochs": 6,
        "validation_fraction": 0.25,
        "overrides": {"num_features": 16, "batch_size": 2},
    },
    "stop": {"generations": 1},
    "seed": 3,
}


def make(root: Path) -> Path:
    new_from_template(root, "mil53-al")
    (root / "campaign.yaml").write_text(yaml.safe_dump(CONFIG))
    return root


# ---- what the campaign directory says --------------------------------------------------------
def _records(root: Path, kind: str) -> list[Path]:
    return sorted((root / ".hillwalker/tasks" / kind).glob("*.json"))


def _in_flight_single_points(root: Path) -> list[Path]:
    """CP2K inputs of single points started but without a record."""
    folder = root / ".hillwalker/tasks/single_point"
    if not folder.is_dir():
        return []
    return [
        inp
        for d in folder.iterdir()
        if d.is_dir() and not (folder / f"{d.name}.json").exists()
        for inp in sorted(d.glob("attempt-*.inp"))[:1]
    ]


def _progress(root: Path, g: int) -> dict:
    try:
        return json.loads((root / f"generations/{g:03d}/model/progress.json").read_text())
    except (OSError, ValueError):
        return {}


def _walker_step(root: Path) -> int:
    log = root / "generations/001/walkers/w0/walker.log"
    try:
        lines = [line for line in log.read_text().splitlines() if line[:1].isdigit()]
    except OSError:
        return 0
    return int(lines[-1].split()[0]) if lines else 0


def _last_checkpoint(root: Path, g: int) -> Path:
    return root / f"generations/{g:03d}/model/train/last.ckpt"


def _started(task_dir: Path) -> float | None:
    try:
        return float(json.loads((task_dir / "started.json").read_text())["started"])
    except (OSError, ValueError, KeyError):
        return None


def redone_at_kill(root: Path, stage: str, t_kill: float) -> list[float]:
    """Seconds of work in flight at the kill, per task, that the resumed run must repeat."""
    if stage == "labeling":
        return [
            t_kill - (_started(p.parent) or p.stat().st_mtime)
            for p in _in_flight_single_points(root)
        ]
    if stage == "walker_md":
        return [t_kill - (_started(root / "generations/001/walkers/w0") or t_kill)]
    if stage == "training":
        # the resumed training goes on from the newest checkpoint of this run
        model = root / "generations/001/model"
        ckpt = _last_checkpoint(root, 1)
        began = _started(model) or t_kill
        saved = ckpt.stat().st_mtime if ckpt.exists() else began
        return [t_kill - max(began, saved)]
    return []  # between generations: nothing in flight


# ---- stage boundaries, from run.log ------------------------------------------------------------
_MARKS = {
    # stage: (what its start is logged as, what its end is logged as); None: the run's start
    "labeling": (None, "generation 0: "),
    "walker_md": ("generation 0 model", "generation 1: "),
    "training": ("generation 1: ", "generation 1 model"),
    "between_generations": ("generation 0 model", "generation 1: "),
}


def _log_times(root: Path) -> list[tuple[float, str]]:
    out = []
    for line in (root / ".hillwalker/run.log").read_text().splitlines():
        try:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        out.append((stamp, line[24:]))
    return out


def _runs(root: Path) -> list[list[tuple[float, str]]]:
    """run.log split into the runs it holds."""
    runs: list[list[tuple[float, str]]] = []
    for stamp, text in _log_times(root):
        if "hillwalker.campaign: run " in text:
            runs.append([])
        if runs:
            runs[-1].append((stamp, text))
    return runs


def _mark(run: list[tuple[float, str]], mark: str | None) -> float:
    if mark is None:
        return run[0][0]
    return next(stamp for stamp, text in run if mark in text)


def stage_seconds(root: Path, stage: str) -> float:
    """The stage's wall time in an uninterrupted run."""
    run = _runs(root)[0]  # later runs in its log: the restart measurements
    start, end = _MARKS[stage]
    return _mark(run, end) - _mark(run, start)


def stage_seconds_with_kill(root: Path, stage: str, t_kill: float) -> float:
    """The stage's wall time in the killed run until the kill plus in the resumed run."""
    killed, resumed = _runs(root)[:2]
    start, end = _MARKS[stage]
    return (t_kill - _mark(killed, start)) + (_mark(resumed, end) - resumed[0][0])


# ---- when to kill: in the middle of a task of the stage ----------------------------------------
def _labeling(root: Path, one_task: float) -> bool:
    # two single points done, and the ones now running half-way
    inputs = _in_flight_single_points(root)
    return (
        2 <= len(_records(root, "single_point")) < FRAMES
        and bool(inputs)
        and time.time() - max(p.stat().st_mtime for p in inputs) >= one_task / 2
    )


def _walker_md(root: Path, one_task: float) -> bool:
    return _walker_step(root) >= STEPS // 2


def _training(root: Path, one_task: float) -> bool:
    ckpt = _last_checkpoint(root, 1)
    return (
        int(_progress(root, 1).get("epoch") or 0) >= 2
        and ckpt.exists()
        and time.time() - ckpt.stat().st_mtime >= one_task / 2
    )


def _between_generations(root: Path, one_task: float) -> bool:
    # generation 0's model recorded, no walker step of generation 1 made
    return bool(_records(root, "train")) and _walker_step(root) == 0


STAGES: dict[str, Callable[[Path, float], bool]] = {
    "labeling": _labeling,
    "walker_md": _walker_md,
    "training": _training,
    "between_generations": _between_generations,
}


def run(root: Path, kill_when: Callable[[Path], bool] | None = None) -> tuple[float, float]:
    """(wall seconds, time of the kill or nan)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [HILLWALKER, "run", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    while proc.poll() is None:
        if kill_when is not None and kill_when(root):
            t_kill = time.time()
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return time.perf_counter() - t0, t_kill
        time.sleep(0.02)
    if proc.returncode != 0:
        raise SystemExit(f"hillwalker run {root} failed with exit {proc.returncode}")
    if kill_when is not None:
        raise SystemExit(f"{root}: the run ended before the stage to kill in")
    return time.perf_counter() - t0, float("nan")


def one_task_seconds(reference: Path) -> dict[str, float]:
    sps = [json.loads(p.read_text()) for p in _records(reference, "single_point")]
    walker = [json.loads(p.read_text()) for p in _records(reference, "walker")]
    history = _progress(reference, 1).get("history") or []
    return {
        "labeling": max(s.get("seconds") or 0.0 for s in sps),
        "walker_md": max(w.get("seconds") or 0.0 for w in walker),
        "training": statistics.median(h["seconds"] for h in history),  # one epoch
        "between_generations": 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="kill/resume cycles per stage")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-resume-"))

    references = [run(make(work / f"reference-{n}"))[0] for n in range(args.repeats)]
    reference_dir = work / "reference-0"
    one_task = one_task_seconds(reference_dir)
    restart = [run(reference_dir)[0] for _ in range(3)]  # finished: a run that only checks
    uninterrupted = statistics.mean(references)

    stages = {}
    for name, condition in STAGES.items():
        cycles = []
        for n in range(args.repeats):
            root = make(work / f"{name}-{n}")
            until_kill, t_kill = run(root, functools.partial(condition, one_task=one_task[name]))
            redone = redone_at_kill(root, name, t_kill)
            resumed, _ = run(root)
            sps = len(_records(root, "single_point"))
            if sps != FRAMES + 1:
                raise SystemExit(f"{root}: {sps} single-point records, expected {FRAMES + 1}")
            stage_lost = stage_seconds_with_kill(root, name, t_kill) - stage_seconds(
                reference_dir, name
            )
            cycles.append(
                {
                    "until_kill_s": round(until_kill, 2),
                    "resume_s": round(resumed, 2),
                    "lost_wall_s": round(until_kill + resumed - uninterrupted, 2),
                    "lost_in_stage_s": round(stage_lost, 2),
                    "redone_tasks_s": [round(r, 2) for r in redone],
                    "redone_s": round(max(redone, default=0.0), 2),
                }
            )
        worst = max(c["redone_s"] for c in cycles)
        stages[name] = {
            "one_task_s": round(one_task[name], 2),
            "redone_s": round(statistics.mean(c["redone_s"] for c in cycles), 2),
            "lost_wall_s": round(statistics.mean(c["lost_wall_s"] for c in cycles), 2),
            "lost_in_stage_s": round(statistics.mean(c["lost_in_stage_s"] for c in cycles), 2),
            "redone_within_one_task": worst <= one_task[name] + 0.5,
            "cycles": cycles,
        }
    print(
        json.dumps(
            {
                "benchmark": "resume",
                "uninterrupted_s": [round(r, 2) for r in references],
                "restart_s": round(statistics.median(restart), 2),
                "stages": stages,
                "goal": "redone_s <= one_task_s at every stage",
                "goal_met": all(s["redone_within_one_task"] for s in stages.values()),
                "workdir": str(work),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
