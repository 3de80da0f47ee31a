"""Faults injected at the seams a campaign really has: the CP2K launch command and the NequIP config.

Real CP2K, NequIP and Parsl run; only the launch command is a wrapper that makes chosen calls
crash or hang, the way a broken node or a stuck MPI job does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_campaign import make_campaign

from hillwalker.dataset import read_frames

HILLWALKER = str(Path(sys.executable).parent / "hillwalker")


def counted_cp2k(tmp_path: Path, *, crash: int, hang: int) -> Path:
    """A launch command: call number ``crash`` exits 1, call ``hang`` sleeps past the timeout."""
    counter = tmp_path / "calls"
    script = tmp_path / "cp2k-faulty"
    script.write_text(
        "#!/bin/sh\n"
        f"n=$(($(cat {counter} 2>/dev/null || echo 0) + 1)); echo $n > {counter}\n"
        f'if [ "$n" -eq {crash} ]; then echo "node failure" >&2; exit 1; fi\n'
        f'if [ "$n" -eq {hang} ]; then sleep 300; fi\n'
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
def test_crashed_and_hung_single_points_are_recorded_and_the_campaign_goes_on(tmp_path):
    root = make_campaign(tmp_path / "c", stop={"generations": 0}, labeling={"timeout": 20.0})
    site = counted_cp2k(tmp_path, crash=2, hang=4)
    out = run(root, "--site", str(site))
    assert out.returncode == 0, out.stdout + out.stderr

    failed = read_frames(root / "failed.extxyz")
    assert sorted(f.info["failure"] for f in failed) == ["crash", "timeout"]
    assert all(f.info["status"] == "failed" and f.calc is None for f in failed)
    dataset = read_frames(root / "dataset.extxyz")
    assert len(dataset) == 2 and all(f.info["status"] == "done" for f in dataset)
    s = status(root)
    assert s["single_points"] == {
        "done": 2,
        "failed": 2,
        "failed_by_class": {"crash": 1, "timeout": 1},
    }
    assert s["generations_done"] == 1  # the model trained on the two good frames only
    assert (
        s["generations"][0]["validation"]["n_train"] + s["generations"][0]["validation"]["n_val"]
        == 2
    )

    # a failed single point is finished: running again redoes nothing
    calls = (tmp_path / "calls").read_text()
    assert run(root, "--site", str(site)).returncode == 0
    assert (tmp_path / "calls").read_text() == calls


@pytest.mark.slow
def test_a_failed_training_says_why_and_the_fixed_campaign_continues(tmp_path):
    # a training setting nequip cannot use, in campaign.yaml: the labels are made, then the
    # training task fails in its worker
    root = make_campaign(
        tmp_path / "c", stop={"generations": 0}, training={"overrides": {"num_features": 0}}
    )
    out = run(root)
    assert out.returncode == 1
    assert "training of generation 0 failed" in out.stderr and "num_features" in out.stderr
    assert "Traceback" not in out.stderr
    labeled = sorted(p.name for p in (root / ".hillwalker/tasks/single_point").glob("*.json"))
    assert len(labeled) == 4
    assert status(root)["state"] == "interrupted"

    # the cause fixed (a safe change of campaign.yaml), the campaign continues: no label redone
    config = yaml.safe_load((root / "campaign.yaml").read_text())
    config["training"]["overrides"] = {"num_features": 8, "batch_size": 2}
    (root / "campaign.yaml").write_text(yaml.safe_dump(config))
    out = run(root)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (
        sorted(p.name for p in (root / ".hillwalker/tasks/single_point").glob("*.json")) == labeled
    )
    s = status(root)
    assert s["generations_done"] == 1 and s["state"] == "finished"
