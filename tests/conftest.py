"""Shared test fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from slurm_cluster import SlurmCluster, why_unavailable


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A real one-node SLURM cluster (munged, slurmctld, slurmd) for the whole session.

    SLURM_CONF points at it while it runs, so Parsl's SlurmProvider (sbatch, squeue, scancel
    in subprocesses) talks to it; every daemon is stopped by PID at the end.
    """
    problem = why_unavailable()
    if problem:
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
