"""Faults injected at the seams a campaign really has: the CP2K launch command and the NequIP config.

Real CP2K, NequIP and Parsl run; only the launch command is a wrapper that makes chosen calls
crash or hang, the way a broken node or a stuck MPI job does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_campaign import make_campaign

from hillwalker.engines.cp2k import Level, single_point
from hillwalker.engines.dataset import read_frames

HILLWALKER = str(Path(sys.executable).parent / "hillwalker")


def counted_cp2k(tmp_path: Path, *, scf: int, crash: tuple[int, ...], hang: int) -> Path:
    """A launch command that counts its calls: call ``scf`` runs CP2K with MAX_SCF 3 (the SCF does
    not converge), calls in ``crash`` exit 1 the way a lost node does, call ``hang`` sleeps past
    the timeout; every other call is real CP2K."""
    counter = tmp_path / "calls"
    script = tmp_path / "cp2k-faulty"
    script.write_text(
        "#!/bin/sh\n"
        f"n=$(($(cat {counter} 2>/dev/null || echo 0) + 1)); echo $n > {counter}\n"
        f'case " {" ".join(map(str, crash))} " in *" $n "*) echo "node failure" >&2; exit 1;; esac\n'
        f'if [ "$n" -eq {hang} ]; then sleep 300; fi\n'
        f'if [ "$n" -eq {scf} ]; then\n'
        '  sed "s/MAX_SCF [0-9]*/MAX_SCF 3/" "$2" > few-scf-steps.inp\n'
        '  exec cp2k.psmp -i few-scf-steps.inp -o "$4"\n'
        "fi\n"
        'exec cp2k.psmp "$@"\n'
    )
    script.chmod(0o755)
    site = tmp_path / "site.yaml"
    site.write_text(
        yaml.safe_dump(
            {
                "name": "faulty",
                "local_cores": 1,  # one single point at a time: call numbers are frame order
                "tasks": {
                    "dft": {
                        "provider": "local",
                        "cp2k": {"command": [str(script)], "omp_threads": 1},
                    },
                    "md": {"provider": "local"},
                    "train": {"provider": "local"},
                },
            }
        )
    )
    return site


def run(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HILLWALKER, "run", str(root), *extra], capture_output=True, text=True, timeout=1800
    )


def status(root: Path) -> dict:
    out = subprocess.run(
        [HILLWALKER, "status", str(root), "--json"], capture_output=True, text=True
    )
    return json.loads(out.stdout)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a generation-0 campaign, run twice
def test_failed_single_points_are_retried_per_the_ladder_recorded_and_the_campaign_goes_on(
    tmp_path,
):
    root = make_campaign(tmp_path / "c", stop={"generations": 0}, labeling={"timeout": 20.0})
    # One single point at a time, so calls come in frame order:
    #   frame 0: call 1 SCF not converged -> ladder rung more_scf_steps -> call 2 converges
    #   frame 1: calls 3 and 4 crash (the crash, then its one rerun) -> failed, crash
    #   frame 2: call 5 crashes -> rerun, call 6 converges
    #   frame 3: call 7 hangs -> killed at the 20 s timeout, not rerun -> failed, timeout
    site = counted_cp2k(tmp_path, scf=1, crash=(3, 4, 5), hang=7)
    out = run(root, "--site", str(site))
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "calls").read_text().strip() == "7"

    labeled = read_frames(root / "generations/000/labeled.extxyz")
    assert [f.info["status"] for f in labeled] == ["done", "failed", "done", "failed"]
    assert [f.info.get("failure") for f in labeled] == [None, "crash", None, "timeout"]
    corrections = [json.loads(f.info.get("corrections") or "[]") for f in labeled]
    assert corrections[0] == [{"name": "more_scf_steps", "set": {"DFT/SCF/MAX_SCF": 800}}]
    assert [c["name"] for c in corrections[1]] == ["rerun_after_crash"]
    assert "node failure" in corrections[1][0]["after"]
    assert "node failure" in labeled[1].info["failure_message"]
    assert [c["name"] for c in corrections[2]] == ["rerun_after_crash"]
    assert corrections[3] == []
    assert "timeout" in labeled[3].info["failure_message"]

    failed = read_frames(root / "failed.extxyz")
    assert sorted(f.info["failure"] for f in failed) == ["crash", "timeout"]
    assert all(f.info["status"] == "failed" and f.calc is None for f in failed)
    dataset = read_frames(root / "dataset.extxyz")
    assert len(dataset) == 2 and all(f.info["status"] == "done" for f in dataset)
    # the rescued labels are real: the ladder's label equals a plain CP2K run of that frame
    plain = single_point(labeled[0], Level.from_file(root / "levels/xtb.inp"), tmp_path / "plain")
    assert dataset[0].get_potential_energy() == pytest.approx(plain.energy, abs=1e-5)
    s = status(root)
    assert s["single_points"] == {
        "done": 2,
        "failed": 2,
        "failed_by_class": {"crash": 1, "timeout": 1},
        "retries": {"more_scf_steps": 1, "rerun_after_crash": 2},
        "by_level": {"xtb": 4},
    }
    human = subprocess.run([HILLWALKER, "status", str(root)], capture_output=True, text=True)
    assert "retries: more_scf_steps 1, rerun_after_crash 2" in " ".join(human.stdout.split())
    run_log = (root / ".hillwalker/run.log").read_text()
    assert "generation 0 frame 0: single point retried: more_scf_steps" in run_log
    assert "generation 0 frame 1: single point failed (crash): CP2K exit status 1" in run_log
    assert "generation 0 frame 3: single point failed (timeout)" in run_log
    assert s["generations_done"] == 1  # the model trained on the two good frames only
    assert (
        s["generations"][0]["validation"]["n_train"] + s["generations"][0]["validation"]["n_val"]
        == 2
    )

    # a failed single point is finished: running again redoes nothing
    assert run(root, "--site", str(site)).returncode == 0
    assert (tmp_path / "calls").read_text().strip() == "7"


@pytest.mark.slow
@pytest.mark.heavy  # CI time: 191 s (loaded); a diverging training in CI: test_nequip
@pytest.mark.timeout(1800)  # a 2-generation campaign, run twice
def test_a_diverged_training_stops_the_run_and_the_fixed_campaign_goes_on(tmp_path):
    """Then, in generation 1, a walker blows up: it is reset, recorded, and the run finishes."""
    # a learning rate that drives the weights to NaN in the first epoch (set in campaign.yaml):
    # the labels are made, then the training task fails in its worker. Generation 1's walker
    # gets a 5 fs time step at 600 K: its atoms collide within a few steps (a real MD blow-up,
    # caught by the min_distance check)
    root = make_campaign(
        tmp_path / "c",
        training={"overrides": {"num_features": 8, "batch_size": 2, "learning_rate": 1e30}},
        walkers={"count": 1, "timestep": 5.0, "steps": 300, "temperature": 600.0},
        stop={"generations": 1},
    )
    out = run(root)
    assert out.returncode == 1
    assert "training of generation 0 failed" in out.stderr
    assert "training diverged at epoch 1: validation force RMSE nan" in out.stderr
    assert "learning_rate" in out.stderr and "Traceback" not in out.stderr
    records = root / ".hillwalker/tasks/single_point"
    labeled = {p.name: p.read_bytes() for p in records.glob("*.json")}
    assert len(labeled) == 4
    s = status(root)
    assert s["state"] == "interrupted" and s["generations_done"] == 0
    assert "training diverged" in s["stopped_by"]
    assert [t["generation"] for t in s["failed_trainings"]] == [0]
    assert "learning_rate" in s["failed_trainings"][0]["error"]
    shown = subprocess.run([HILLWALKER, "status", str(root)], capture_output=True, text=True)
    assert "training of generation 0 failed" in shown.stdout

    # the cause fixed (a safe change of campaign.yaml), the campaign goes on: no label redone
    config = yaml.safe_load((root / "campaign.yaml").read_text())
    config["training"]["overrides"] = {"num_features": 8, "batch_size": 2}
    (root / "campaign.yaml").write_text(yaml.safe_dump(config))
    out = run(root)
    assert out.returncode == 0, out.stdout + out.stderr
    # the four records untouched (a redone single point rewrites its record), one new one
    after = {p.name: p.read_bytes() for p in records.glob("*.json")}
    assert {k: after[k] for k in labeled} == labeled and len(after) == 5
    s = status(root)
    assert s["generations_done"] == 2 and s["state"] == "finished"
    assert s["failed_trainings"] == [] and s["stopped_by"] is None
    # training.compile auto, 300 walker steps a generation: the walker ran the eager package
    assert all(g["model"].endswith("model.nequip.zip") for g in s["generations"])
    assert not list(root.glob("generations/*/model/*.nequip.pt2"))
    _assert_blow_up_reset_and_recorded(root, s)


def _assert_blow_up_reset_and_recorded(root: Path, s: dict) -> None:
    (record,) = [
        json.loads(p.read_text()) for p in (root / ".hillwalker/tasks/walker").glob("*.json")
    ]
    assert record["status"] == "blown_up"
    (event,) = [e for e in record["events"] if e["kind"] == "blow_up"]
    assert 0 < event["step"] < 300 and "min_distance" in event["reason"]
    assert event["reset_to_step"] < event["step"]
    # too close for a reference calculation: nothing kept to label but the reset state
    assert event["failed_frame"] is False and record["failed"] is None

    # the reset state, not the blown-up one, is what goes on: labeled fine, and the walker's
    # next generation starts from its last good state (the start structure), not the segment's
    (frame,) = read_frames(root / "generations/001/labeled.extxyz")
    assert frame.info["status"] == "done" and frame.info["walker"] == 0
    distances = frame.get_all_distances(mic=True)[np.triu_indices(len(frame), 1)]
    assert distances.min() > 0.6
    states = json.loads((root / "generations/001/walkers.json").read_text())
    assert states == {"0": str(root / ".hillwalker/start.extxyz")}

    # recorded where a user looks: status and the run log
    assert s["walker_blow_ups"] == [
        {
            "generation": 1,
            "walker": 0,
            "step": event["step"],
            "reason": event["reason"],
            "reset_to_step": event["reset_to_step"],
        }
    ]
    assert (
        f"generation 1 walker 0 blew up at step {event['step']} ({event['reason']})"
        in (root / ".hillwalker/run.log").read_text()
    )
