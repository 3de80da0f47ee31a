"""Campaign directory state: records are the completion markers; the lock keeps one runner."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from ase.build import bulk

from hillwalker.state import CampaignDir, CampaignLocked, StateError, frame_digest, task_key


def test_record_round_trip_and_corrupt_record_is_named(tmp_path):
    cdir = CampaignDir(tmp_path)
    assert cdir.record("single_point", "abc") is None
    cdir.save_record("single_point", "abc", {"status": "done", "result": "x.extxyz"})
    assert cdir.record("single_point", "abc")["status"] == "done"
    path = tmp_path / ".hillwalker/tasks/single_point/abc.json"
    path.write_text('{"status": "do')  # a truncated file
    with pytest.raises(StateError, match=r"abc\.json: corrupt task record.*Delete this file"):
        cdir.record("single_point", "abc")


def test_keys_follow_content():
    a = bulk("Al", cubic=True)
    b = a.copy()
    assert frame_digest(a) == frame_digest(b)
    b.positions[0, 0] += 1e-12
    assert frame_digest(a) != frame_digest(b)
    assert task_key("sp", frame_digest(a), "lvl") == task_key("sp", frame_digest(a), "lvl")
    assert task_key("sp", frame_digest(a), "lvl") != task_key("sp", frame_digest(a), "lvl2")


def test_second_runner_is_refused_and_stale_lock_taken_over(tmp_path):
    cdir = CampaignDir(tmp_path)
    with cdir.locked():
        # another process trying the same directory
        code = (
            "import sys; from hillwalker.state import CampaignDir, CampaignLocked\n"
            f"try:\n    CampaignDir({str(tmp_path)!r}).locked().__enter__()\n"
            "except CampaignLocked as e:\n    print(e); sys.exit(3)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == 3
        assert f"in use by process {os.getpid()}" in out.stdout
        with pytest.raises(CampaignLocked), cdir.locked():
            pass
    assert not (tmp_path / ".hillwalker/lock").exists()
    # a lock left by a dead process
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    import json
    import socket

    (tmp_path / ".hillwalker/lock").write_text(
        json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "since": 0})
    )
    with cdir.locked():
        assert json.loads((tmp_path / ".hillwalker/lock").read_text())["pid"] == os.getpid()


def test_status_shows_a_retrained_generation_once_with_its_newest_model(tmp_path):
    from hillwalker.status import campaign_status

    (tmp_path / "campaign.yaml").write_text("material: {}\n")
    cdir = CampaignDir(tmp_path)
    for key, g, rmse, age in (
        ("old3", 3, 758.0, 100),
        ("g2", 2, 320.0, 200),
        ("new3", 3, 300.0, 0),
    ):
        cdir.save_record(
            "train",
            key,
            {
                "status": "done",
                "generation": g,
                "package": f"generations/{g:03d}/model/model.nequip.zip",
                "metrics": {"force_rmse_mev_per_ang": rmse},
            },
        )
        stamp = cdir.record_path("train", key).stat().st_mtime - age
        os.utime(cdir.record_path("train", key), (stamp, stamp))
    status = campaign_status(tmp_path)
    assert [g["generation"] for g in status["generations"]] == [2, 3]
    assert status["generations"][1]["validation"] == {"force_rmse_mev_per_ang": 300.0}
    assert status["generations_done"] == 2
