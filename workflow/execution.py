"""Parsl at one edge: the only module of hillwalker that imports Parsl.

``Execution`` turns a site profile (``sites.py``; the local machine by default) into a Parsl
DataFlowKernel and runs plain engine functions on it::

    with Execution(site, run_dir=campaign_dir) as ex:
        future = ex.submit("dft", single_point, atoms, level, command=ex.cp2k_command)
        result = future.result()

Engines never see Parsl: ``submit`` wraps any picklable top-level function as a Parsl app bound
to the executor of its task kind. Walltime, cores and executors live here and in the profile,
never in an engine's signature.

Executors. Local task kinds share ONE HighThroughputExecutor with one worker per core: on one
machine, separate pools per kind would each be sized to the whole machine and oversubscribe it,
while a shared pool lets walkers, single points and training take whichever cores are free (so
single points start as soon as frames arrive). Each SLURM task kind gets its own executor, since
its blocks are jobs with that kind's partition, walltime and resources.

Parsl memoization/checkpointing is deliberately off: resume comes from the campaign's own task
records (Parsl identifies a function by its name only). ``retries`` from the profile reruns a
task whose worker was lost (e.g. its SLURM block was cancelled).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from parsl.app.app import python_app
from parsl.config import Config
from parsl.dataflow.dflow import DataFlowKernel
from parsl.executors import HighThroughputExecutor
from parsl.jobs.error_handlers import windowed_error_handler
from parsl.launchers import SimpleLauncher, SingleNodeLauncher, SrunLauncher
from parsl.providers import LocalProvider, SlurmProvider

from hillwalker.engines.files import atomic_write_json
from hillwalker.engines.plumed_kernel import use_kernel
from hillwalker.sites import TASK_KINDS, SiteProfile, TaskSite, local_site
from hillwalker.state import parsl_dir, slurm_blocks_file

LOCAL_LABEL = "local"
#: a first result ~1.7 s after start instead of ~5.7 s with Parsl's default of 5 s
STRATEGY_PERIOD = 0.5


def machine_cores() -> int:
    """Cores this process may use (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _environment_lines() -> str:
    """Shell lines that give workers this venv's programs and the PLUMED kernel.

    HTEX starts ``process_worker_pool.py`` from PATH, and engines start ``cp2k.psmp``,
    ``nequip-train`` etc. as subprocesses; on a SLURM node the job's environment is the
    user's login environment, not this process's.
    """
    venv_bin = Path(sys.prefix) / "bin"
    lines = [f'export PATH={shlex.quote(str(venv_bin))}:"$PATH"']
    kernel = os.environ.get("PLUMED_KERNEL")
    if kernel:
        lines.append(f"export PLUMED_KERNEL={shlex.quote(kernel)}")
    return "\n".join(lines)


def _interchange_command() -> list[str]:
    # HTEX runs "interchange.py" from PATH; name this venv's copy so that a shell without the venv
    # activated (a test runner, a cron job) still starts the right one
    return [sys.executable, str(Path(sys.prefix) / "bin" / "interchange.py")]


class _SlurmProvider(SlurmProvider):
    """Parsl's SlurmProvider with the squeue interval from the profile (Parsl fixes it at 60 s).

    The interval bounds how fast a cancelled block is noticed and replaced.
    """

    def __init__(
        self,
        *args: Any,
        status_poll_seconds: int = 60,
        on_submit: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._status_poll_seconds = status_poll_seconds
        self._on_submit = on_submit

    @property
    def status_polling_interval(self) -> int:
        return self._status_poll_seconds

    def submit(self, command: str, tasks_per_node: int, job_name: str = "parsl.slurm") -> str:
        job_id: str = super().submit(command, tasks_per_node, job_name)
        if self._on_submit is not None:
            self._on_submit(job_id)
        return job_id


def gpu_groups(gpus_per_node: int, gpus_per_task: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES of each worker of a node: 4 GPUs, 2 per task -> ["0,1", "2,3"].

    Parsl starts one worker per entry and pins it to that entry's GPUs.
    """
    return [
        ",".join(str(k * gpus_per_task + i) for i in range(gpus_per_task))
        for k in range(gpus_per_node // gpus_per_task)
    ]


def _launcher(name: str) -> Any:
    if name == "srun":
        return SrunLauncher()
    if name == "simple":
        return SimpleLauncher()
    return SingleNodeLauncher()


class Execution:
    """Parsl at one edge. ``with Execution(site=None, run_dir=Path, cores=None) as ex:``.

    Nothing starts in the constructor; Parsl (interchange, workers, SLURM blocks) lives exactly
    as long as the ``with`` block and is always cleaned up, also after an exception or Ctrl-C.
    """

    def __init__(
        self,
        site: SiteProfile | None = None,
        run_dir: str | Path = ".",
        *,
        cores: int | None = None,
    ) -> None:
        self.site = site if site is not None else local_site()
        self.run_dir = Path(run_dir)
        self.cores = cores or self.site.local_cores or machine_cores()
        self._dfk: DataFlowKernel | None = None
        self._apps: dict[tuple[str, Callable[..., Any]], Any] = {}
        self._labels = {kind: self._label(kind) for kind in TASK_KINDS}
        self._record_lock = threading.Lock()

    @property
    def blocks_file(self) -> Path:
        """Every SLURM job this run submitted, for ``hillwalker status`` in another process."""
        return slurm_blocks_file(Path(self.run_dir))

    # ---- configuration -------------------------------------------------------------------

    def _label(self, kind: str) -> str:
        return LOCAL_LABEL if self.site.task(kind).provider == "local" else f"slurm-{kind}"

    def _local_executor(self, worker_init: str) -> HighThroughputExecutor:
        return HighThroughputExecutor(
            label=LOCAL_LABEL,
            address="127.0.0.1",
            interchange_launch_cmd=_interchange_command(),
            max_workers_per_node=self.cores,
            cores_per_worker=1,
            heartbeat_period=max(1, self.site.heartbeat_threshold // 4),
            heartbeat_threshold=self.site.heartbeat_threshold,
            provider=LocalProvider(
                init_blocks=1, min_blocks=1, max_blocks=1, worker_init=worker_init
            ),
        )

    def _slurm_executor(self, kind: str, task: TaskSite, env_lines: str) -> HighThroughputExecutor:
        options = list(task.scheduler_options)
        if task.gpus_per_node:
            options.append(f"#SBATCH --gpus-per-node={task.gpus_per_node}")
        worker_init = "\n".join(line for line in (env_lines, task.worker_init) if line)
        provider = _SlurmProvider(
            status_poll_seconds=self.site.status_poll_seconds,
            on_submit=lambda job_id: self._record_block(kind, job_id),
            partition=task.partition,
            account=task.account,
            qos=task.qos,
            constraint=task.constraint,
            nodes_per_block=task.nodes_per_block,
            cores_per_node=task.cores_per_node,
            mem_per_node=task.mem_per_node,
            init_blocks=task.blocks.init,
            min_blocks=task.blocks.min,
            max_blocks=task.blocks.max,
            walltime=task.walltime,
            scheduler_options="\n".join(options),
            worker_init=worker_init,
            exclusive=task.exclusive,
            launcher=_launcher(task.launcher),
        )
        extra: dict[str, Any] = {}
        if self.site.interchange_address:
            extra["address"] = self.site.interchange_address
        if task.gpus_per_task:
            extra["available_accelerators"] = gpu_groups(task.gpus_per_node, task.gpus_per_task)
        return HighThroughputExecutor(
            label=self._labels[kind],
            interchange_launch_cmd=_interchange_command(),
            cores_per_worker=task.cores_per_task,
            max_workers_per_node=task.workers_per_node,
            heartbeat_period=max(1, self.site.heartbeat_threshold // 4),
            heartbeat_threshold=self.site.heartbeat_threshold,
            # Parsl's default gives up on the executor as soon as its only block fails (e.g. a
            # node failure): tolerate lost blocks, give up after 3 failed blocks in a row (a
            # broken worker_init fails every block at once)
            block_error_handler=windowed_error_handler,
            provider=provider,
            **extra,
        )

    def parsl_config(self) -> Config:
        """The Parsl configuration for this site (built, not started)."""
        env_lines = _environment_lines()
        executors: list[HighThroughputExecutor] = []
        if any(self.site.task(kind).provider == "local" for kind in TASK_KINDS):
            executors.append(self._local_executor(env_lines))
        for kind in TASK_KINDS:
            task = self.site.task(kind)
            if task.provider == "slurm":
                executors.append(self._slurm_executor(kind, task, env_lines))
        return Config(
            executors=executors,
            retries=self.site.retries,
            run_dir=str(parsl_dir(self.run_dir)),
            strategy="htex_auto_scale",
            strategy_period=STRATEGY_PERIOD,
            max_idletime=self.site.block_idle_seconds,
            usage_tracking=0,
        )

    # ---- lifetime ------------------------------------------------------------------------

    def __enter__(self) -> Execution:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(
            interrupted=exc_type is not None
            and issubclass(exc_type, KeyboardInterrupt | SystemExit)
        )

    def start(self) -> None:
        if self._dfk is not None:
            return
        # workers inherit the environment (local) or get it from worker_init (SLURM): set the
        # kernel first so both see it
        use_kernel()
        parsl_dir(self.run_dir).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.blocks_file, [])  # a new run: earlier runs' jobs are over
        config = self.parsl_config()
        try:
            self._dfk = DataFlowKernel(config)
            for executor in self._dfk.executors.values():
                _watch_interchange(executor)
        except BaseException:
            # no DFK to clean up: stop whatever executors (interchange, blocks) already started
            for executor in config.executors:
                with contextlib.suppress(Exception):
                    executor.shutdown()
            raise

    def close(self, *, interrupted: bool = False) -> None:
        """Stop interchange, workers and SLURM blocks. Safe to call twice.

        ``interrupted``: closing on a signal (Ctrl-C, SIGTERM). The same signal may have hit the
        interchange (it shares hillwalker's process group) and left it alive but deaf: it is
        stopped first, and the blocks are cancelled through their provider without asking it.
        """
        dfk, self._dfk = self._dfk, None
        self._apps.clear()
        if dfk is None:
            return
        for executor in dfk.executors.values():
            if interrupted:
                _stop_interchange(executor)
            _stop_if_interchange_gone(executor)
        try:
            dfk.cleanup()
        except Exception:
            # an interchange that died during the clean-up: stop the blocks without it
            for executor in dfk.executors.values():
                _cancel_blocks(executor)
            raise

    # ---- work ----------------------------------------------------------------------------

    def submit(
        self, kind: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args, **kwargs)`` as a task of ``kind`` (md, dft or train); a Future.

        ``fn`` must be a picklable top-level function (workers import it by name).
        """
        if self._dfk is None:
            raise RuntimeError("Execution is not started: use it as 'with Execution(...) as ex:'")
        label = self._labels.get(kind)
        if label is None:
            raise ValueError(f"unknown task kind {kind!r}; expected one of {', '.join(TASK_KINDS)}")
        app = self._apps.get((kind, fn))
        if app is None:
            app = python_app(fn, executors=[label], data_flow_kernel=self._dfk)
            self._apps[(kind, fn)] = app
        future: concurrent.futures.Future[Any] = app(*args, **kwargs)
        return future

    def check_task_fits(self, kind: str, seconds: float) -> None:
        """Refuse a task expected to take longer than its blocks' walltime (before submitting)."""
        self.site.check_task_fits(kind, seconds)

    def parallel(self, kind: str) -> int | None:
        """How many tasks of ``kind`` run side by side: the local pool's cores, or None for a
        SLURM kind (as many as its blocks hold)."""
        return self.cores if self.site.task(kind).provider == "local" else None

    def threads(self, kind: str) -> int:
        """CPU threads one task of ``kind`` may use: a SLURM task its ``cores_per_task``; on the
        local pool a training (which runs alone in the loop) every core, anything else one."""
        task = self.site.task(kind)
        if task.provider == "local":
            return self.cores if kind == "train" else 1
        return task.cores_per_task

    @property
    def cp2k_command(self) -> list[str]:
        """The site's CP2K launch command for dft tasks (default ``["cp2k.psmp"]``)."""
        return list(self.site.cp2k.command)

    @property
    def cp2k_omp_threads(self) -> int:
        return self.site.cp2k.omp_threads

    def _record_block(self, kind: str, job_id: str) -> None:
        # called from Parsl's scaling thread, one provider per SLURM task kind
        with self._record_lock:
            try:
                rows = json.loads(self.blocks_file.read_text())
            except (OSError, ValueError):
                rows = []
            rows.append(
                {
                    "kind": kind,
                    "executor": self._labels[kind],
                    "job_id": str(job_id),
                    "submitted": datetime.now(UTC).isoformat(timespec="seconds"),
                }
            )
            atomic_write_json(self.blocks_file, rows)

    def blocks(self) -> list[dict[str, Any]]:
        """Live SLURM blocks of this run: kind, executor, block id, job id, state.

        Empty for a local site (its pool is not a scheduler job) or before ``start``.
        """
        if self._dfk is None:
            return []
        rows: list[dict[str, Any]] = []
        for kind in TASK_KINDS:
            label = self._labels[kind]
            if not label.startswith("slurm-"):
                continue
            executor = self._dfk.executors[label]
            if not isinstance(executor, HighThroughputExecutor):
                continue
            statuses = executor.status()
            for block_id, job_id in sorted(executor.blocks_to_job_id.items()):
                status = statuses.get(block_id)
                rows.append(
                    {
                        "kind": kind,
                        "executor": label,
                        "block": block_id,
                        "job_id": str(job_id),
                        "state": status.state.name if status is not None else "UNKNOWN",
                    }
                )
        return rows


#: SLURM states of a block that still holds or waits for resources
LIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED"})


def read_blocks(run_dir: str | Path, *, live_only: bool = False) -> list[dict[str, Any]]:
    """The SLURM jobs (blocks) a run in ``run_dir`` submitted, with their state now.

    For ``hillwalker status`` while ``run`` works in another process: job ids come from the
    record the running Execution keeps, states from ``squeue`` (``FINISHED`` once SLURM has
    forgotten the job, ``UNKNOWN`` if squeue cannot be asked). Each row: kind, executor, job_id,
    submitted (ISO time), state, live (bool).
    """
    try:
        rows: list[dict[str, Any]] = json.loads(slurm_blocks_file(Path(run_dir)).read_text())
    except (OSError, ValueError):
        return []
    states: dict[str, str] | None = {}
    if rows:
        ids = ",".join(row["job_id"] for row in rows)
        try:
            done = subprocess.run(
                ["squeue", "-h", "-t", "all", "-j", ids, "-o", "%i %T"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
            lines = done.stdout.splitlines() if done.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            lines = None
        if lines is None:
            states = None
        else:
            states = dict(line.split(maxsplit=1) for line in lines if line.strip())
    for row in rows:
        state = "UNKNOWN" if states is None else states.get(row["job_id"], "FINISHED").strip()
        row["state"] = state
        row["live"] = state in LIVE_STATES
    return [row for row in rows if row["live"]] if live_only else rows


__all__ = ["LIVE_STATES", "Execution", "gpu_groups", "machine_cores", "read_blocks"]


#: how long a command to the interchange may wait for its answer, s (answers take ms)
INTERCHANGE_REPLY_TIMEOUT = 120.0


class InterchangeGoneError(RuntimeError):
    """Parsl's interchange process exited (or stopped answering)."""


def _watch_interchange(executor: Any) -> None:
    """Make every command to an HTEX interchange give up when the interchange is gone.

    The interchange is a child process in hillwalker's process group: a signal to the whole
    group (Ctrl-C in a terminal, ``kill -- -PGID``, ``timeout``, ``scancel`` of the job running
    hillwalker) kills it along with hillwalker. Parsl's own command client then waits for its
    answer for ever, in the status poller's thread or in the clean-up. Here a command waits in
    short slices and stops as soon as the interchange process has exited. Tied to Parsl's
    ``CommandClient`` (zmq_pipes.py, parsl 2026.10); left alone if that changes shape.
    """
    proc = getattr(executor, "interchange_proc", None)
    client = getattr(executor, "command_client", None)
    needed = ("zmq_socket", "_lock", "ok")
    if proc is None or client is None or not all(hasattr(client, a) for a in needed):
        return
    import zmq

    def run(message: Any, max_retries: int = 3, timeout_s: float | None = None) -> Any:
        deadline = time.monotonic() + (timeout_s or INTERCHANGE_REPLY_TIMEOUT)
        with client._lock:
            if not client.ok or proc.poll() is not None:
                raise InterchangeGoneError(f"Parsl interchange of {executor.label} is not running")
            client.zmq_socket.send_pyobj(message, copy=True)
            while not client.zmq_socket.poll(timeout=250, flags=zmq.POLLIN):
                if proc.poll() is not None or time.monotonic() > deadline:
                    client.ok = False  # a REQ socket without its reply is unusable
                    raise InterchangeGoneError(
                        f"Parsl interchange of {executor.label} did not answer {message!r}"
                    )
            return client.zmq_socket.recv_pyobj()

    client.run = run


def _stop_if_interchange_gone(executor: Any) -> None:
    """A dead interchange's blocks are cancelled through the provider, and Parsl told to skip
    it (a local block's process group is killed, a SLURM job scancel'd)."""
    proc = getattr(executor, "interchange_proc", None)
    if proc is None:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=0.2)  # a group signal reaches it at the same moment as us
    if proc.poll() is None:
        return
    _cancel_blocks(executor)
    executor.set_bad_state_and_fail_all(
        InterchangeGoneError(f"Parsl interchange of {executor.label} exited ({proc.returncode})")
    )


def _stop_interchange(executor: Any) -> None:
    proc = getattr(executor, "interchange_proc", None)
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _cancel_blocks(executor: Any) -> None:
    provider = getattr(executor, "provider", None)
    jobs = [j for j in getattr(executor, "blocks_to_job_id", {}).values() if j is not None]
    if provider is None or not jobs:
        return
    with contextlib.suppress(Exception):
        provider.cancel(jobs)
