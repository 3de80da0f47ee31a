"""A full disk in the middle of a generation: the run stops with a clear message, leaves nothing
half-written, and once space is freed resumes and finishes with nothing lost or redone.

The campaign lives on a size-limited tmpfs that the test mounts (conftest ``small_disk``). The
test fills it to the last byte while the generation-1 walker runs its MD, so the walker's next
writes (trajectory, log, PLUMED's HILLS) and the run's own fail with ENOSPC.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import fill_disk
from test_resume import (
    CONFIG,
    HILLWALKER,
    called_keys,
    make,
    records,
    run_to_end,
    start,
    walker_step,
)

from hillwalker.engines.dataset import read_frames
from hillwalker.engines.plumed import read_hills


def all_json_whole(root: Path) -> list[Path]:
    """Every JSON file of the campaign that does not parse (a half-written record or state)."""
    bad = []
    for path in root.rglob("*.json"):
        if ".hillwalker/parsl" in str(path):
            continue
        try:
            json.loads(path.read_text())
        except (OSError, ValueError):
            bad.append(path)
    return bad


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_disk_full_during_md_stops_cleanly_then_resumes(small_disk, tmp_path):
    root = small_disk / "campaign"
    # test_resume's campaign, one generation after generation 0 (the one the disk fills in)
    site, calls = make(root, tmp_path / "calls.txt", {**CONFIG, "stop": {"generations": 1}})
    log = tmp_path / "run.log"

    proc = start(root, site, log)
    deadline = time.monotonic() + 900
    while walker_step(root, 1) < 10:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the generation-1 walker never started"
        time.sleep(0.05)
    filler = fill_disk(small_disk)
    assert os.statvfs(small_disk).f_bavail == 0

    rc = proc.wait(timeout=600)
    out = log.read_text()
    assert rc != 0, out
    # one clear message that says what happened and what to do; no traceback
    assert "disk full" in out.lower() and str(root) in out, out
    assert "free space" in out.lower() and "run again" in out.lower(), out
    assert "Traceback" not in out, out

    # nothing half-written: every record parses, the dataset and the bias read back whole
    assert all_json_whole(root) == []
    done_before = {k for k, r in records(root, "single_point").items() if r["status"] == "done"}
    assert len(done_before) >= 6  # generation 0's
    n_dataset = len(read_frames(root / "dataset.extxyz"))
    hills = read_hills(root / "bias")
    calls_before = len(called_keys(calls))

    # space freed: the same command finishes the campaign, redoing no finished single point
    filler.unlink()
    out = run_to_end(root, site, timeout=1200)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not set(called_keys(calls)[calls_before:]) & done_before
    status = json.loads(
        subprocess.run(
            [HILLWALKER, "status", str(root), "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert status["state"] == "finished" and status["generations_done"] == 2  # 0 and 1
    assert len(read_frames(root / "dataset.extxyz")) > n_dataset
    after = read_hills(root / "bias")
    assert len(np.unique(after.times)) == len(after.times) >= len(hills)
    assert all_json_whole(root) == []
