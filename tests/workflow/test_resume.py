"""kill -9 at every stage, run again: nothing finished is redone and nothing is lost.

Real `hillwalker run` subprocesses (CP2K xTB, PLUMED, NequIP, Parsl HTEX) are SIGKILLed during
generation-0 labeling, during a walker's MD, between generations and during training, then
resumed. CP2K is launched through a wrapper script (the site profile's launch command, the one
seam) that logs every call, so the CP2K runs of each resume are counted exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from hillwalker.engines.dataset import labels, read_frames
from hillwalker.engines.plumed import read_hills
from hillwalker.material_templates import new_from_template
from hillwalker.state import reap_orphans

HILLWALKER = str(Path(sys.executable).parent / "hillwalker")

# One walker: its shared bias is its own, so a re-run MD segment is reproducible frame for frame
# (with several concurrent walkers, when a hill of one reaches another depends on timing).
CONFIG = {
    "name": "resume",
    "material": {
        "structure": "structure.cif",
        "level": "levels/xtb.inp",
        "plumed": "plumed.dat",
        "nequip": "nequip.yaml",
    },
    "generation0": {"frames": 6, "position_sigma": 0.03, "cell_strain": 0.02},
    # cold and short steps: a 4-epoch model blows up fast, and the MD must last long enough to
    # be killed in the middle
    "walkers": {
        "count": 1,
        "ensemble": "npt",
        "temperature": 100.0,
        "timestep": 0.25,
        "steps": 400,
        "bias": "shared",
    },
    "training": {
        "mode": "warm",
        "epochs": 4,
        "warm_epochs": 8,  # ~0.3 s each: the kill during training lands well before its end
        "validation_fraction": 0.25,
        "overrides": {"num_features": 8, "batch_size": 2},
    },
    "stop": {"generations": 2},
    "seed": 11,
}


def make(root: Path, calls: Path, config: dict | None = None) -> tuple[Path, Path]:
    new_from_template(root, "mil53-al")
    (root / "campaign.yaml").write_text(yaml.safe_dump(config or CONFIG))
    wrapper = root.parent / f"{root.name}-cp2k"
    # Armed (a file `<root>-armed` holding the run's process group), the third CP2K call leaves
    # a watcher behind that SIGKILLs the run the moment the single point's result file appears:
    # CP2K has exited and the engine has written its result, but the run has not recorded it.
    armed = root.parent / f"{root.name}-armed"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'echo "$PWD" >> {calls}\n'
        f'if [ "$(wc -l < {calls})" -ge 3 ] && mv {armed} {armed}.taken 2>/dev/null; then\n'
        f'  (while [ ! -f "$PWD/result.json" ]; do sleep 0.002; done; '
        f'kill -9 -"$(cat {armed}.taken)") &\n'
        "fi\n"
        'exec cp2k.psmp "$@"\n'
    )
    wrapper.chmod(0o755)
    site = root.parent / f"{root.name}-site.yaml"
    site.write_text(
        yaml.safe_dump(
            {
                "name": "local-counted",
                # one worker: single-threaded training is bitwise reproducible (two threads gave
                # generation-0 models 1e-9 apart, hence walker frames 1e-11 nm³ apart), and the
                # comparison with the reference run is bitwise
                "local_cores": 1,
                "tasks": {
                    "dft": {
                        "provider": "local",
                        "cp2k": {"command": [str(wrapper)], "omp_threads": 1},
                    },
                    "md": {"provider": "local"},
                    "train": {"provider": "local"},
                },
            }
        )
    )
    return site, calls


def start(root: Path, site: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [HILLWALKER, "run", str(root), "--site", str(site)],
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def run_to_end(root: Path, site: Path, timeout: float) -> subprocess.CompletedProcess:
    """`hillwalker run` in the foreground, its output captured."""
    return subprocess.run(
        [HILLWALKER, "run", str(root), "--site", str(site)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def records(root: Path, kind: str) -> dict[str, dict]:
    folder = root / ".hillwalker/tasks" / kind
    return (
        {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
        if folder.is_dir()
        else {}
    )


def called_keys(calls: Path) -> list[str]:
    if not calls.exists():
        return []
    keys = []
    for line in calls.read_text().splitlines():
        parts = Path(line).parts
        if "single_point" in parts:
            keys.append(parts[parts.index("single_point") + 1])
    return keys


def kill_when(proc: subprocess.Popen, condition, what: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"run ended (exit {proc.returncode}) before {what}")
        if condition():
            os.killpg(proc.pid, signal.SIGKILL)  # the run and its interchange; workers are orphaned
            proc.wait()
            return
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"timed out waiting for {what}")


def walker_step(root: Path, g: int) -> int:
    log = root / f"generations/{g:03d}/walkers/w0/walker.log"
    try:
        steps = [line.split()[0] for line in log.read_text().splitlines() if line.strip()]
        steps = [int(s) for s in steps if not s.startswith("#")]
        return steps[-1] - steps[0]
    except (OSError, IndexError, ValueError):
        return 0


def epoch(root: Path, g: int) -> int:
    try:
        return int(
            json.loads((root / f"generations/{g:03d}/model/progress.json").read_text())["epoch"]
            or 0
        )
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def trained(root: Path, g: int) -> bool:
    return any(
        r["status"] == "done" and r.get("generation") == g for r in records(root, "train").values()
    )


@pytest.mark.slow
@pytest.mark.heavy  # out of CI until rerun: the adoption kill (stage 1) is new, see the #21 note
@pytest.mark.timeout(3600)  # its waits allow 900-1800 s per stage; the suite default (900) cut it
def test_kill_at_every_stage_then_resume(tmp_path):
    # the reference: the same campaign, never interrupted
    ref = tmp_path / "ref"
    site, ref_calls = make(ref, tmp_path / "ref-calls.txt")
    out = run_to_end(ref, site, timeout=1800)
    assert out.returncode == 0, out.stdout + out.stderr

    root = tmp_path / "killed"
    site, calls = make(root, tmp_path / "calls.txt")
    log = tmp_path / "killed.log"

    # 1. during generation-0 labeling, right after the third single point's CP2K run exited and
    # its result was written, before the run recorded it (the wrapper's watcher kills the run)
    proc = start(root, site, log)
    (tmp_path / "killed-armed").write_text(str(proc.pid))  # its own process group
    assert proc.wait(timeout=900) == -signal.SIGKILL
    # the killed run's workers are orphans that may still finish or start a single point: stop
    # them as the next run would, so the counts below are the killed run's and nothing else's
    reap_orphans(root)
    done_at_kill = set(records(root, "single_point"))
    calls_at_kill = len(called_keys(calls))
    # one worker labels one frame at a time: the kill comes at the third call, with the first
    # two recorded and no fourth started (the interchange died with the run)
    assert len(done_at_kill) == 2 and calls_at_kill == 3, (done_at_kill, calls_at_kill)
    unrecorded = {
        p.parent.name
        for p in (root / ".hillwalker/tasks/single_point").glob("*/result.json")
        if p.parent.name not in done_at_kill and json.loads(p.read_text())["status"] == "done"
    }
    assert called_keys(calls)[2] in unrecorded  # finished, result on disk, no record
    checkpoints = [(calls_at_kill, done_at_kill | unrecorded)]

    # 2. during the walker's MD of generation 1
    proc = start(root, site, log)
    kill_when(proc, lambda: walker_step(root, 1) >= 10, "generation-1 MD")
    gen0 = {k for k, r in records(root, "single_point").items() if r.get("generation") == 0}
    redone = called_keys(calls)[calls_at_kill:]
    # exactly the unfinished single points ran again, none of the finished ones: a result
    # complete on disk but not recorded at the kill was adopted, not recomputed
    assert sorted(redone) == sorted(gen0 - done_at_kill - unrecorded)
    assert unrecorded <= gen0
    hills_mid_md = len(read_hills(root / "bias"))
    checkpoints.append((len(called_keys(calls)), set(records(root, "single_point"))))

    # 3. between generations: as soon as model 1 is recorded
    proc = start(root, site, log)
    kill_when(proc, lambda: trained(root, 1), "the end of generation 1")
    assert len(read_hills(root / "bias")) >= hills_mid_md
    checkpoints.append((len(called_keys(calls)), set(records(root, "single_point"))))

    # 4. during the training of generation 2
    proc = start(root, site, log)
    # (once its first checkpoint is saved: before it, a rerun starts afresh, by design)
    model2 = root / "generations/002/model"
    kill_when(
        proc,
        lambda: epoch(root, 2) >= 1 and (model2 / "train/last.ckpt").is_file(),
        "generation-2 training",
    )
    # at once, as in 1.: an orphaned worker left running would finish the training (a second or
    # two) and record the model before the next run reaps it, leaving nothing to resume
    reap_orphans(root)
    first_epoch = json.loads((model2 / "progress.json").read_text())["history"][0]
    checkpoints.append((len(called_keys(calls)), set(records(root, "single_point"))))

    # 5. to the end
    out = run_to_end(root, site, timeout=1800)
    assert out.returncode == 0, out.stdout + out.stderr + log.read_text()

    # after each kill, no finished single point ran again; in all, the same ones as uninterrupted
    keys = called_keys(calls)
    for offset, finished in checkpoints:
        assert not set(keys[offset:]) & finished
    assert set(keys) == set(called_keys(ref_calls)) == set(records(root, "single_point"))

    # the dataset equals the uninterrupted run's, frame for frame
    got, want = read_frames(root / "dataset.extxyz"), read_frames(ref / "dataset.extxyz")
    assert len(got) == len(want) == 6 + 1 + 1 - len(read_frames(ref / "failed.extxyz"))
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a.positions, b.positions)
        assert np.array_equal(a.cell.array, b.cell.array)
        la, lb = labels(a), labels(b)
        assert la["energy"] == lb["energy"]
        assert np.array_equal(la["forces"], lb["forces"])

    # the hills were not duplicated: same count and times as without the kills
    h, h_ref = read_hills(root / "bias"), read_hills(ref / "bias")
    assert len(h) == len(h_ref) > 0
    assert np.array_equal(np.sort(h.times), np.sort(h_ref.times))
    assert len(np.unique(h.times)) == len(h.times)

    status = json.loads(
        subprocess.run(
            [HILLWALKER, "status", str(root), "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert status["state"] == "finished" and status["generations_done"] == 3
    _assert_training_resumed(model2, first_epoch)


def _assert_training_resumed(model: Path, first_epoch: dict) -> None:
    """The killed training went on from its checkpoint instead of starting over: Lightning says
    it restored it, and epoch 1's entry is the one measured before the kill (its wall time
    included: a restart would have run epoch 1 again and timed it anew)."""
    assert "Continuing training with checkpoint" in (model / "train.log").read_text()
    metrics = json.loads((model / "model.json").read_text())["metrics"]
    assert metrics["resumed"] is True
    assert metrics["history"][0] == first_epoch
    epochs = [h["epoch"] for h in metrics["history"]]
    assert epochs == list(range(1, CONFIG["training"]["warm_epochs"] + 1)), epochs
