"""Execution on a real one-node SLURM cluster (munged, slurmctld, slurmd; see slurm_cluster.py)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from hillwalker.execution import Execution, read_blocks
from hillwalker.sites import SiteProfile

# campaigns through sbatch: generous, a block waits for its queue before it runs anything
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(1800)]

WATER_XTB = """\
&GLOBAL
  PROJECT water
  RUN_TYPE ENERGY_FORCE
  PRINT_LEVEL LOW
&END GLOBAL
&FORCE_EVAL
  METHOD QS
  &DFT
    &QS
      METHOD xTB
      &XTB
        DO_EWALD F
      &END XTB
    &END QS
    &SCF
      EPS_SCF 1.0E-8
      SCF_GUESS MOPAC
      MAX_SCF 100
    &END SCF
    &POISSON
      PERIODIC NONE
      POISSON_SOLVER ANALYTIC
    &END POISSON
  &END DFT
  &SUBSYS
    &CELL
      ABC 8.0 8.0 8.0
      PERIODIC NONE
    &END CELL
    &COORD
      O   0.000  0.000  0.117
      H   0.000  0.757 -0.469
      H   0.000 -0.757 -0.469
    &END COORD
  &END SUBSYS
&END FORCE_EVAL
"""


# ---- task functions (run in SLURM jobs; top-level so workers import them by name) ----------


def job_id() -> str:
    return os.environ["SLURM_JOB_ID"]


def cp2k_energy(command: list[str], input_text: str, workdir: str) -> dict[str, object]:
    """Run CP2K with ``command``; its energy (Ha), MPI rank count and the SLURM job."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "in.inp").write_text(input_text)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [*command, "-i", "in.inp", "-o", "out.log"], cwd=work, env=env, check=True, timeout=300
    )
    text = (work / "out.log").read_text()
    energy = re.search(r"ENERGY\| Total FORCE_EVAL \( QS \) energy \[a\.u\.\]:\s+(\S+)", text)
    ranks = re.search(r"Total number of message passing processes\s+(\d+)", text)
    assert energy and ranks, text[-2000:]
    return {
        "energy": float(energy[1]),
        "ranks": int(ranks[1]),
        "job": os.environ.get("SLURM_JOB_ID"),
    }


def single_point_step(index: int, seconds: float, log_dir: str) -> tuple[int, str]:
    """Stand-in for a single point: marks start and completion, so losses show."""
    job = os.environ["SLURM_JOB_ID"]
    log = Path(log_dir)
    (log / f"start-{index}-{job}-{os.getpid()}").touch()
    time.sleep(seconds)
    (log / f"done-{index}-{job}").touch()
    return index, job


@pytest.fixture(autouse=True)
def _importable_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    # sbatch exports the environment: SLURM workers find this module through PYTHONPATH
    here = str(Path(__file__).parent)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    )


def slurm_task(cluster, **extra: object) -> dict[str, object]:
    return {
        "provider": "slurm",
        "partition": cluster.partition,
        "walltime": "00:10:00",
        "cores_per_node": 1,
        "blocks": {"init": 0, "min": 0, "max": 1},
        **extra,
    }


def test_the_cluster_is_up(slurm_cluster) -> None:
    assert slurm_cluster.sinfo_state().startswith(("idle", "mix", "alloc"))


def test_three_task_kinds_and_cp2k_on_two_ranks_run_in_slurm_jobs(
    slurm_cluster, tmp_path: Path
) -> None:
    # as in examples/sites/cpu-cluster.yaml: a job step of 2 ranks on the block's 2 CPUs
    two_ranks = ["srun", "--exact", "--mpi=pmix", "-n", "2", "--cpus-per-task=1", "cp2k.psmp"]
    site = SiteProfile.model_validate(
        {
            "name": "test-cluster",
            "tasks": {
                "md": slurm_task(slurm_cluster),
                "train": slurm_task(slurm_cluster),
                "dft": slurm_task(
                    slurm_cluster,
                    cores_per_node=2,
                    cores_per_task=2,
                    cp2k={"command": two_ranks, "omp_threads": 1},
                ),
            },
        }
    )
    serial = cp2k_energy(["cp2k.psmp"], WATER_XTB, str(tmp_path / "serial"))
    with Execution(site, run_dir=tmp_path) as ex:
        assert ex.cp2k_command == two_ranks
        futures = {kind: ex.submit(kind, job_id) for kind in ("md", "train")}
        parallel = ex.submit("dft", cp2k_energy, ex.cp2k_command, WATER_XTB, str(tmp_path / "mpi"))
        jobs = {kind: f.result(timeout=180) for kind, f in futures.items()}
        mpi = parallel.result(timeout=300)
        blocks = ex.blocks()
        # what `hillwalker status` shows from another process: the record + squeue
        live = read_blocks(tmp_path, live_only=True)
    jobs["dft"] = str(mpi["job"])
    known = slurm_cluster.jobs()
    # leaving the with-block ended every block
    assert {known[job] for job in jobs.values()} <= {"CANCELLED", "COMPLETED", "COMPLETING"}
    # each kind ran in its own real SLURM job, and `blocks()` reported exactly those jobs
    assert len(set(jobs.values())) == 3
    assert set(jobs.values()) <= set(known), (jobs, known)
    assert {row["kind"]: row["job_id"] for row in blocks} == jobs
    assert {row["state"] for row in blocks} <= {"RUNNING", "PENDING", "COMPLETED", "CANCELLED"}
    assert {row["kind"]: row["job_id"] for row in live} == jobs
    assert {row["state"] for row in live} == {"RUNNING"}
    after = read_blocks(tmp_path)
    assert {row["job_id"] for row in after} == set(jobs.values())
    assert {row["state"] for row in after} <= {"CANCELLED", "COMPLETED", "COMPLETING"}
    assert "Partition=" + slurm_cluster.partition in slurm_cluster.job_info(jobs["dft"])
    assert serial["ranks"] == 1 and serial["job"] is None
    assert mpi["ranks"] == 2
    assert mpi["energy"] == pytest.approx(serial["energy"], abs=1e-9)


def test_a_cancelled_block_loses_and_duplicates_nothing(slurm_cluster, tmp_path: Path) -> None:
    site = SiteProfile.model_validate(
        {
            "name": "test-cluster",
            "retries": 2,
            # the interchange counts a cancelled block's pool as lost after ~4 s
            "heartbeat_threshold": 4,
            # ... and squeue shows the block gone within 2 s, so a new one is started
            "status_poll_seconds": 2,
            "tasks": {"dft": slurm_task(slurm_cluster, blocks={"init": 1, "min": 0, "max": 1})},
        }
    )
    log = tmp_path / "log"
    log.mkdir()
    with Execution(site, run_dir=tmp_path) as ex:
        futures = [ex.submit("dft", single_point_step, i, 3.0, str(log)) for i in range(3)]
        deadline = time.monotonic() + 120
        while not list(log.glob("start-*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        started = sorted(log.glob("start-*"))
        assert started, "no task started within 120 s"
        first_index, cancelled_job = started[0].name.split("-")[1:3]
        slurm_cluster.run("scancel", cancelled_job)
        results = [f.result(timeout=240) for f in futures]
    assert sorted(index for index, _ in results) == [0, 1, 2]
    done = sorted(p.name for p in log.glob("done-*"))
    # every single point completed exactly once ...
    assert sorted(name.split("-")[1] for name in done) == ["0", "1", "2"]
    # ... the interrupted one in a later block, after Parsl retried it
    assert f"done-{first_index}-{cancelled_job}" not in done
    assert dict(results)[int(first_index)] != cancelled_job
    assert slurm_cluster.jobs()[cancelled_job] == "CANCELLED"


def test_an_exception_leaves_no_slurm_block(slurm_cluster, tmp_path: Path) -> None:
    site = SiteProfile.model_validate(
        {"tasks": {"md": slurm_task(slurm_cluster, blocks={"init": 1, "min": 0, "max": 1})}}
    )
    live: list[str] = []
    with pytest.raises(RuntimeError, match="walker blew up"), Execution(site, tmp_path) as ex:
        live.append(ex.submit("md", job_id).result(timeout=120))
        assert [row["job_id"] for row in ex.blocks()] == live
        raise RuntimeError("walker blew up")
    assert slurm_cluster.jobs()[live[0]] in {"CANCELLED", "COMPLETED", "COMPLETING"}
    assert slurm_cluster.run("squeue", "-h", "-t", "PD,R", "-o", "%i").split() == []


def test_a_campaign_runs_on_slurm_and_survives_a_cancelled_block(
    slurm_cluster, tmp_path: Path
) -> None:
    """`hillwalker run --site` on the cluster: every task kind in SLURM jobs; the dft block is
    scancel'd while CP2K labels, and the campaign completes without a lost or doubled label."""
    import json
    import sys

    import yaml
    from test_campaign import make_campaign

    from hillwalker.engines.dataset import read_frames

    # generation 0 (4 frames labeled, a model) and one walker generation (2 walkers, 5 steps:
    # frames stay near the start, so CP2K converges quickly even with a 4-epoch model)
    root = make_campaign(tmp_path / "camp", stop={"generations": 1}, walkers={"steps": 5})
    site = {
        "name": "test-cluster",
        "retries": 2,
        "heartbeat_threshold": 4,
        "status_poll_seconds": 2,
        # release blocks soon after their stage, as a cluster user would want
        "block_idle_seconds": 10,
        "tasks": {
            "md": slurm_task(slurm_cluster, cores_per_node=2),
            "dft": slurm_task(slurm_cluster, cp2k={"command": ["cp2k.psmp"]}),
            "train": slurm_task(slurm_cluster, cores_per_node=2, cores_per_task=2),
        },
    }
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
    hillwalker = str(Path(sys.executable).parent / "hillwalker")
    with (tmp_path / "run.out").open("w") as out:
        run = subprocess.Popen(
            [hillwalker, "run", str(root), "--site", str(tmp_path / "site.yaml")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    cancelled = None
    try:
        deadline = time.monotonic() + 300
        while cancelled is None and run.poll() is None and time.monotonic() < deadline:
            # the first CP2K running inside a dft block: cancel that block under it
            dft_jobs = [r["job_id"] for r in read_blocks(root) if r["kind"] == "dft"]
            # (only a CP2K in one of our jobs: other work on the machine may run CP2K too)
            if dft_jobs and slurm_cluster.job_processes("cp2k.psmp"):
                cancelled = dft_jobs[0]
                slurm_cluster.run("scancel", cancelled)
            time.sleep(0.2)
        assert run.wait(timeout=900) == 0, (tmp_path / "run.out").read_text()[-3000:]
    finally:
        if run.poll() is None:
            run.send_signal(2)
            run.wait(timeout=60)
    assert cancelled is not None, "no CP2K was seen running in a dft block"
    assert slurm_cluster.jobs()[cancelled] == "CANCELLED"
    blocks = read_blocks(root)
    # no local executor exists when all kinds are slurm: every task ran in these jobs
    assert {row["kind"] for row in blocks} == {"md", "dft", "train"}
    assert sum(row["kind"] == "dft" for row in blocks) >= 2  # the cancelled one was replaced
    status = json.loads(
        subprocess.run(
            [hillwalker, "status", str(root), "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert status["generations_done"] == 2
    # every frame that was submitted was labeled once: generation 0's 4 and one per walker (the
    # walker count and gen-0 frames come from this test's campaign.yaml, not from the run)
    labeled = [
        f for g in ("000", "001") for f in read_frames(root / f"generations/{g}/labeled.extxyz")
    ]
    assert len(labeled) == 4 + 2
    # a cancelled block reruns its task (Parsl retries): it never turns into a failed label, and
    # 5-step walkers stay near the start, where xTB converges
    assert [f.info["status"] for f in labeled] == ["done"] * 6, [
        f.info.get("failure") for f in labeled
    ]
    frames = read_frames(root / "dataset.extxyz")
    assert len(frames) == 6 and status["single_points"]["failed"] == 0
    positions = {f.positions.round(6).tobytes() for f in frames}
    assert len(positions) == len(frames), "a frame was labeled twice"
