"""Site profiles: *where* a campaign's tasks run (what they compute is campaign.yaml).

A profile gives, per task kind (``md`` walker segments, ``dft`` CP2K single points, ``train``
NequIP training), the provider (``local`` or ``slurm``) and its resources, plus the CP2K launch
command for single points and how often a lost task is retried. ``execution.py`` turns it into a
Parsl configuration; nothing here imports Parsl, so profiles can be validated anywhere.

Errors name the file and the dotted key, e.g.
``cluster.yaml: tasks.dft.walltime: walltime must be [D-]HH:MM:SS``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hillwalker.config import ConfigError, load_model

TASK_KINDS: tuple[str, ...] = ("md", "dft", "train")
TaskKind = Literal["md", "dft", "train"]

_WALLTIME = re.compile(r"^(?:(?P<days>\d+)-)?(?P<h>\d{1,3}):(?P<m>[0-5]\d):(?P<s>[0-5]\d)$")


def walltime_seconds(text: str) -> int:
    """Seconds in a SLURM-style walltime ``[D-]HH:MM:SS``; ValueError if it is not one."""
    match = _WALLTIME.match(text.strip())
    if not match:
        raise ValueError(f"walltime must be [D-]HH:MM:SS (e.g. 01:30:00), got {text!r}")
    days = int(match["days"] or 0)
    return ((days * 24 + int(match["h"])) * 60 + int(match["m"])) * 60 + int(match["s"])


class TaskTooLongError(ValueError):
    """A task's expected duration exceeds the walltime of the blocks that would run it."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Blocks(_Model):
    init: int = Field(default=0, ge=0, description="Blocks (SLURM jobs) submitted at start.")
    min: int = Field(default=0, ge=0, description="Blocks kept alive even when idle.")
    max: int = Field(default=1, ge=1, description="Most blocks alive at once for this task kind.")

    @model_validator(mode="after")
    def _ordered(self) -> Blocks:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        if self.init > self.max:
            raise ValueError(f"init ({self.init}) must not exceed max ({self.max})")
        return self


class Cp2kLaunch(_Model):
    command: list[str] = Field(
        default_factory=lambda: ["cp2k.psmp"],
        min_length=1,
        description=(
            "Argument list that starts CP2K (no shell); the engine appends '-i input -o output'. "
            "E.g. ['srun', '--overlap', '--mpi=pmix', '-n', '2', 'cp2k.psmp'] under SLURM, or "
            "['mpirun', '--oversubscribe', '-np', '2', 'cp2k.psmp']."
        ),
    )
    omp_threads: int = Field(default=1, ge=1, description="OMP_NUM_THREADS for every CP2K process.")


class TaskSite(_Model):
    provider: Literal["local", "slurm"] = Field(
        default="local", description="local: worker processes on this machine; slurm: SLURM jobs."
    )
    partition: str | None = Field(default=None, description="SLURM partition (sbatch --partition).")
    account: str | None = Field(
        default=None, description="SLURM account charged (sbatch --account)."
    )
    qos: str | None = Field(default=None, description="SLURM quality of service (sbatch --qos).")
    constraint: str | None = Field(
        default=None, description="SLURM node features (sbatch --constraint)."
    )
    walltime: str = Field(
        default="01:00:00",
        description="Walltime of one block (SLURM job), [D-]HH:MM:SS; slurm only.",
    )
    task_walltime: str | None = Field(
        default=None,
        description=(
            "Longest expected duration of one task of this kind, [D-]HH:MM:SS. Must fit in the "
            "block walltime; a task known to take longer is refused before it is submitted."
        ),
    )
    nodes_per_block: int = Field(default=1, ge=1, description="Nodes in one block (SLURM job).")
    cores_per_node: int | None = Field(
        default=None,
        ge=1,
        description="Cores requested per node (sbatch --cpus-per-task); slurm only.",
    )
    cores_per_task: int = Field(
        default=1,
        ge=1,
        description="Cores one task uses (workers per node = cores_per_node // cores_per_task).",
    )
    gpus_per_node: int = Field(
        default=0, ge=0, description="GPUs requested per node (--gpus-per-node)."
    )
    gpus_per_task: int = Field(
        default=0, ge=0, description="GPUs one task uses; each worker is pinned to its own GPU(s)."
    )
    mem_per_node: int | None = Field(
        default=None, ge=1, description="Memory per node in GB (--mem)."
    )
    exclusive: bool = Field(default=False, description="Ask for whole nodes (sbatch --exclusive).")
    blocks: Blocks = Field(default_factory=Blocks, description="How many blocks Parsl may run.")
    launcher: Literal["single_node", "srun", "simple"] = Field(
        default="single_node",
        description=(
            "How the worker pool starts inside a block: single_node (one pool per node via the "
            "batch script; right for nodes_per_block=1), srun (one pool per node via srun), "
            "simple (one pool on the first node, e.g. when tasks are themselves MPI jobs)."
        ),
    )
    worker_init: str = Field(
        default="",
        description=(
            "Shell lines run at the start of each block before the workers start: module loads, "
            "venv activation, PLUMED_KERNEL. hillwalker already puts its own venv's bin on PATH "
            "and exports PLUMED_KERNEL before these lines."
        ),
    )
    scheduler_options: list[str] = Field(
        default_factory=list,
        description="Extra '#SBATCH …' lines for the block's batch script, verbatim.",
    )
    cp2k: Cp2kLaunch | None = Field(
        default=None, description="CP2K launch command and threads; only for the dft task kind."
    )

    @field_validator("walltime", "task_walltime")
    @classmethod
    def _walltime_format(cls, value: str | None) -> str | None:
        if value is not None:
            walltime_seconds(value)
        return value

    @field_validator("scheduler_options")
    @classmethod
    def _sbatch_lines(cls, lines: list[str]) -> list[str]:
        for line in lines:
            if not line.startswith("#SBATCH") or "\n" in line:
                raise ValueError(f"each line must be one '#SBATCH …' directive, got {line!r}")
        return lines

    @model_validator(mode="after")
    def _consistent(self) -> TaskSite:
        if self.provider == "slurm":
            block = walltime_seconds(self.walltime)
            if self.task_walltime is not None and walltime_seconds(self.task_walltime) > block:
                raise ValueError(
                    f"task_walltime {self.task_walltime} is longer than the block walltime "
                    f"{self.walltime}: no block could finish such a task"
                )
            if self.cores_per_node is not None and self.cores_per_task > self.cores_per_node:
                raise ValueError(
                    f"cores_per_task ({self.cores_per_task}) exceeds cores_per_node "
                    f"({self.cores_per_node})"
                )
            if self.gpus_per_task > self.gpus_per_node:
                raise ValueError(
                    f"gpus_per_task ({self.gpus_per_task}) exceeds gpus_per_node "
                    f"({self.gpus_per_node})"
                )
        return self

    @property
    def block_seconds(self) -> int | None:
        """Walltime of one block in seconds; None for local (no limit)."""
        return walltime_seconds(self.walltime) if self.provider == "slurm" else None

    @property
    def workers_per_node(self) -> int | None:
        """Tasks one node of a block runs at once (None: let the provider decide, local)."""
        if self.gpus_per_task:
            return max(1, self.gpus_per_node // self.gpus_per_task)
        if self.cores_per_node is not None:
            return max(1, self.cores_per_node // self.cores_per_task)
        return None


class Tasks(_Model):
    md: TaskSite = Field(default_factory=TaskSite, description="Walker MD segments.")
    dft: TaskSite = Field(default_factory=TaskSite, description="CP2K single points.")
    train: TaskSite = Field(default_factory=TaskSite, description="NequIP training runs.")

    @model_validator(mode="after")
    def _cp2k_only_for_dft(self) -> Tasks:
        for kind in ("md", "train"):
            if getattr(self, kind).cp2k is not None:
                raise ValueError(f"{kind}.cp2k: the CP2K launch belongs to the dft task kind")
        return self


class SiteProfile(_Model):
    name: str = Field(default="local", description="Name shown in logs and `status`.")
    retries: int = Field(
        default=2,
        ge=0,
        description=(
            "How often a failed or lost task is rerun (e.g. its SLURM job was cancelled or its "
            "node died). Tasks handle their own science failures; this is for lost workers."
        ),
    )
    heartbeat_threshold: int = Field(
        default=120,
        ge=2,
        description=(
            "Seconds without a heartbeat after which a worker pool (a block) counts as lost and "
            "its running tasks are retried. Short values react faster to cancelled jobs."
        ),
    )
    status_poll_seconds: int = Field(
        default=60,
        ge=1,
        description=(
            "How often SLURM is asked (squeue) for the state of the blocks. A block that was "
            "cancelled or died is replaced within about this time; keep it >= 30 on a shared "
            "cluster to spare the scheduler."
        ),
    )
    block_idle_seconds: float = Field(
        default=120,
        gt=0,
        description=(
            "Seconds a block may sit idle before it is released (above blocks.min). Short "
            "values free nodes between stages; long ones save the queue wait of a new block."
        ),
    )
    interchange_address: str | None = Field(
        default=None,
        description=(
            "Address of this machine that SLURM workers connect back to (e.g. its InfiniBand "
            "or internal IP). Default: workers try every address of this machine."
        ),
    )
    local_cores: int | None = Field(
        default=None,
        ge=1,
        description="Workers of the local pool (default: the cores of this machine).",
    )
    tasks: Tasks = Field(default_factory=Tasks, description="Where each task kind runs.")

    def task(self, kind: str) -> TaskSite:
        if kind not in TASK_KINDS:
            raise ValueError(f"unknown task kind {kind!r}; expected one of {', '.join(TASK_KINDS)}")
        site: TaskSite = getattr(self.tasks, kind)
        return site

    @property
    def cp2k(self) -> Cp2kLaunch:
        return self.tasks.dft.cp2k or Cp2kLaunch()

    def check_task_fits(self, kind: str, seconds: float) -> None:
        """Refuse (TaskTooLongError) a task expected to take ``seconds`` that no block can finish.

        Called before submitting, so a task too long for the block walltime is a clear error
        instead of a job SLURM kills silently at the limit.
        """
        site = self.task(kind)
        block = site.block_seconds
        if block is not None and seconds > block:
            raise TaskTooLongError(
                f"site {self.name!r}: a {kind} task expected to take {seconds:.0f} s does not fit "
                f"in the block walltime tasks.{kind}.walltime={site.walltime} ({block} s); raise "
                f"the walltime or make the task shorter (e.g. fewer MD steps per generation)"
            )


def local_site(cores: int | None = None) -> SiteProfile:
    """The default: every task kind on this machine."""
    return SiteProfile(name="local", local_cores=cores)


def load_site(path: str | Path | None) -> SiteProfile:
    """Read and validate a site profile YAML; ``None`` gives the local default."""
    if path is None:
        return local_site()
    return load_model(Path(path), SiteProfile, empty_ok=True)


__all__ = [
    "TASK_KINDS",
    "Blocks",
    "ConfigError",
    "Cp2kLaunch",
    "SiteProfile",
    "TaskSite",
    "TaskTooLongError",
    "load_site",
    "local_site",
    "walltime_seconds",
]
