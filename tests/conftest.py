"""Shared test fixtures."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from slurm_cluster import SlurmCluster, why_unavailable

if TYPE_CHECKING:
    from ase import Atoms

    from hillwalker.engines.nequip import TrainedModel, TrainSettings

DATA = Path(__file__).parent / "data"

#: torch threads for the NequIP tests: on 2 cores shared with other work, two threads spin
#: against each other (MIL-53 MD: 1.2 steps/s with 2 threads, 93 with 1)
NEQUIP_TEST_THREADS = 1


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A real one-node SLURM cluster (munged, slurmctld, slurmd) for the whole session.

    SLURM_CONF points at it while it runs, so Parsl's SlurmProvider (sbatch, squeue, scancel
    in subprocesses) talks to it; every daemon is stopped by PID at the end.
    """
    problem = why_unavailable()
    if problem:
        # a fresh CI machine has everything set-up.sh --tests installs: a skip there would hide
        # a broken install behind a green run
        if _under_ci():
            pytest.fail(f"CI=true and the SLURM cluster cannot start: {problem}", pytrace=False)
        pytest.skip(problem)
    cluster = SlurmCluster.start()
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        cluster.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs of its own (mounting needs root: as for SLURM, under CI a failed mount
    fails instead of skipping); unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        why = f"cannot mount a tmpfs (needs root): {out.stderr.strip()}"
        if _under_ci():
            pytest.fail(f"CI=true and {why}", pytrace=False)
        pytest.skip(why)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_disk(disk: Path, leave: int = 0) -> Path:
    """Write a file on ``disk`` until not one byte is left, then give back ``leave`` bytes
    (whole pages); the file's path: delete it to free the space."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    f.write(b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    if leave:
        os.truncate(filler, filler.stat().st_size - leave)
    return filler


@pytest.fixture(scope="session")
def mil53_frames_path() -> Path:
    """48 MIL-53(Al) frames (np -> lp) labeled by CP2K GFN1-xTB: energy, forces, stress."""
    return DATA / "mil53_xtb_frames.extxyz"


def _mil53_split(path: Path) -> tuple[list[Atoms], list[Atoms]]:
    from hillwalker.engines.dataset import read_frames

    frames = read_frames(path)
    # every 4th frame (np, lp and the path between) is held back from the session model
    return [f for i, f in enumerate(frames) if i % 4 != 3], frames[3::4]


@pytest.fixture(scope="session")
def mil53_held_out_frames(mil53_frames_path: Path) -> list[Atoms]:
    """The 12 xTB frames that ``mil53_model`` was not trained on (every 4th frame)."""
    return _mil53_split(mil53_frames_path)[1]


@pytest.fixture(scope="session")
def mil53_model(tmp_path_factory: pytest.TempPathFactory, mil53_frames_path: Path) -> TrainedModel:
    """A small NequIP model of MIL-53(Al), trained once per session with stress, compiled.

    36 of the 48 xTB frames (4 of them for validation), r 5 Å, l 1, 2 layers x 16 features,
    25 epochs. Good enough for a 38-atom NPT MD at 300 K (200 steps of 1 fs) to stay physical.
    ``model.package`` (.nequip.zip), ``model.compiled`` (.nequip.pt2, CPU), ``model.metrics``.
    """
    from filelock import FileLock

    from hillwalker.engines.dataset import write_frames
    from hillwalker.engines.nequip import train

    if os.environ.get("PYTEST_XDIST_WORKER"):
        # test processes side by side (pytest-xdist): the first to get here trains it in the
        # run's own directory (above each process's basetemp); the others wait, then find it
        # finished (train() returns a finished model instead of training again)
        root = tmp_path_factory.getbasetemp().parent / "mil53_model"
    else:
        root = tmp_path_factory.mktemp("mil53_model")
    root.mkdir(exist_ok=True)
    with FileLock(str(root) + ".lock"):
        train_frames, _ = _mil53_split(mil53_frames_path)
        data = root / "mil53_train.extxyz"
        write_frames(data, train_frames)
        return train(
            data,
            root / "model",
            settings=mil53_test_settings(),
            device="cpu",
            threads=NEQUIP_TEST_THREADS,
        )


def mil53_test_settings(**changes: object) -> TrainSettings:
    """The session model's settings: the MIL-53 template's, made small (``changes`` on top)."""
    from hillwalker.engines.nequip import TrainSettings

    base: dict[str, object] = {
        "epochs": 25,
        "num_features": 16,
        "learning_rate": 0.02,
        "batch_size": 2,
        "seed": 0,
    }
    return TrainSettings.from_template(None, **{**base, **changes})
