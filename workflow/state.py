"""The campaign directory as the campaign's only memory.

Every task (a single point, a walker segment, a training run) has a *record*: a JSON file named by
a content hash of the task's inputs, written atomically and only once the task's result files are
complete, so the record is the completion marker. Resuming a campaign replays its loop and skips
every task whose record says ``done``. Parsl's own memoization is never used for this (it keys
functions by name only).

Layout::

    campaign.yaml, structure, levels/, plumed.dat, nequip.yaml   the material (from a template)
    dataset.extxyz        every labeled frame, in loop order (derived from the records)
    failed.extxyz         frames whose labeling failed, with their failure class
    generations/NNN/      frames.extxyz (new frames), model/, hills/ (bias snapshot), walkers/
                          (several materials: walkers/NAME/wK, hills/NAME/)
    bias/                 the live HILLS files the walkers share (several materials: bias/NAME/)
    .hillwalker/          tasks/<kind>/<key>.json records, tasks/<kind>/<key>/ work dirs,
                          lock, run.log, run.json (what the last run was doing)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from hillwalker.engines.files import atomic_write_json

STATE_DIR = ".hillwalker"


def parsl_dir(root: Path) -> Path:
    """Parsl's run directory of a campaign (also how a killed run's workers are found)."""
    return Path(root).resolve() / STATE_DIR / "parsl"


def slurm_blocks_file(root: Path) -> Path:
    """The SLURM jobs a run submitted (for `status` and for cancelling them)."""
    return Path(root).resolve() / STATE_DIR / "slurm-blocks.json"


class StateError(RuntimeError):
    """A state file is corrupt or the campaign directory is in use; the message says what to do."""


class CampaignLocked(StateError):  # noqa: N818 - reads as a state, like FileExistsError
    pass


def frame_digest(atoms: Atoms) -> str:
    """Content hash of a frame's geometry (species, positions, cell, periodicity)."""
    h = hashlib.sha256()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(atoms.positions, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(atoms.cell.array, dtype=np.float64).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=np.bool_).tobytes())
    return h.hexdigest()


def task_key(*parts: Any) -> str:
    """Content hash of a task's inputs (strings, numbers, dicts, lists — JSON-serialisable)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class CampaignDir:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.took_over_stale_lock = False

    # -- paths ---------------------------------------------------------------------------------
    @property
    def state(self) -> Path:
        return self.root / STATE_DIR

    @property
    def dataset(self) -> Path:
        return self.root / "dataset.extxyz"

    @property
    def failed(self) -> Path:
        return self.root / "failed.extxyz"

    @property
    def bias(self) -> Path:
        return self.root / "bias"

    def bias_of(self, material: str | None) -> Path:
        """The live HILLS of ``material``'s walkers (None: the one material of a campaign)."""
        return self.bias if material is None else self.bias / material

    @property
    def materials(self) -> Path:
        """The generation each material of a campaign of several joined in (materials.json)."""
        return self.state / "materials.json"

    @property
    def log(self) -> Path:
        return self.state / "run.log"

    @property
    def run_state(self) -> Path:
        """What the last run was doing (progress, why it stopped)."""
        return self.state / "run.json"

    @property
    def inputs(self) -> Path:
        """Digests of what the last run used (change detection of campaign.yaml)."""
        return self.state / "inputs.json"

    @property
    def lock(self) -> Path:
        return self.state / "lock"

    @property
    def start_frame(self) -> Path:
        """The start structure as extxyz (where a walker without a state starts)."""
        return self.state / "start.extxyz"

    @property
    def smoke(self) -> Path:
        return self.state / "smoke"

    @property
    def parsl(self) -> Path:
        return parsl_dir(self.root)

    @property
    def slurm_blocks(self) -> Path:
        return slurm_blocks_file(self.root)

    def generation(self, n: int) -> Path:
        return self.root / "generations" / f"{n:03d}"

    def walker_dir(self, n: int, walker: int, material: str | None = None) -> Path:
        """Walker ``walker``'s MD segment of generation ``n`` (COLVAR, log, state); with several
        materials, each material's walkers are numbered in a directory of their own."""
        walkers = self.generation(n) / "walkers"
        return (walkers if material is None else walkers / material) / f"w{walker}"

    def walker_dirs(self) -> list[tuple[int, int, Path]]:
        """(generation, walker, directory) of every walker segment ever started (the material
        of a campaign of several: :func:`walker_material` of the directory)."""
        found = []
        for pattern in ("generations/*/walkers/w*", "generations/*/walkers/*/w*"):
            for d in self.root.glob(pattern):
                g = (d.parent if d.parent.name == "walkers" else d.parent.parent).parent.name
                w = d.name[1:]
                if d.is_dir() and g.isdigit() and w.isdigit():
                    found.append((int(g), int(w), d))
        return sorted(found)

    def walker_states(self, n: int) -> Path:
        """Where each walker goes on from after generation ``n`` (walkers.json)."""
        return self.generation(n) / "walkers.json"

    def model_dir(self, n: int) -> Path:
        return self.generation(n) / "model"

    def model_dirs(self) -> list[tuple[int, Path]]:
        """(generation, directory) of every model whose training was started."""
        found = [(d.parent.name, d) for d in self.root.glob("generations/*/model")]
        return sorted((int(g), d) for g, d in found if g.isdigit())

    def timings(self, n: int) -> Path:
        return self.generation(n) / "timings.json"

    def task_dir(self, kind: str, key: str) -> Path:
        return self.state / "tasks" / kind / key

    def record_path(self, kind: str, key: str) -> Path:
        return self.state / "tasks" / kind / f"{key}.json"

    # -- records -------------------------------------------------------------------------------
    def record(self, kind: str, key: str) -> dict[str, Any] | None:
        """The record of a task, or None if it never finished."""
        path = self.record_path(kind, key)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StateError(
                f"{path}: corrupt task record ({exc.msg} at line {exc.lineno}). Delete this file "
                "and run again: that one task will be redone."
            ) from None
        if not isinstance(data, dict) or "status" not in data:
            raise StateError(f"{path}: task record without 'status'. Delete it and run again.")
        return data

    def save_record(self, kind: str, key: str, data: dict[str, Any]) -> None:
        atomic_write_json(self.record_path(kind, key), {"key": key, "kind": kind, **data})

    def records(self, kind: str) -> list[dict[str, Any]]:
        folder = self.state / "tasks" / kind
        if not folder.is_dir():
            return []
        return [r for p in sorted(folder.glob("*.json")) if (r := self.record(kind, p.stem))]

    # -- lock ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the campaign lock; refuse if a live process holds it, take over a stale one."""
        self.state.mkdir(parents=True, exist_ok=True)
        path = self.lock
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(path)
                if holder and _alive(holder):
                    raise CampaignLocked(
                        f"{self.root} is in use by process {holder['pid']} on {holder['host']} "
                        f"(lock {path}); wait for it to finish or stop it first"
                    ) from None
                path.unlink(missing_ok=True)  # stale: its process is gone
                self.took_over_stale_lock = True
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            break
        else:
            raise CampaignLocked(f"could not take the lock {path}")
        try:
            yield
        finally:
            holder = _read_lock(path)
            if holder and holder.get("pid") == me["pid"]:
                path.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # half-written by a killed process: stale
    return data if isinstance(data, dict) else None


def _alive(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # can't tell for another host: assume it is alive
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans(root: Path) -> list[int]:
    """SIGKILL what a killed run of this campaign left behind; the killed pids.

    A ``kill -9`` of ``hillwalker run`` leaves its Parsl interchange and worker pools (and their
    CP2K, MD or training children) running until their heartbeats time out; a walker among them
    would still hold its hills lock. They are found by their command line or open files naming
    this campaign's Parsl directory, and killed with all their descendants. Only called after a
    stale lock was taken over, i.e. when the run that started them is known to be dead.
    """
    parsl = str(parsl_dir(root))
    parents = _process_parents()
    protected = set()
    pid = os.getpid()
    while pid > 1 and pid not in protected:  # never this process or its ancestors
        protected.add(pid)
        pid = parents.get(pid, 1)
    roots = [p for p in parents if p not in protected and _mentions(p, parsl)]
    victims = set(roots)
    changed = True
    while changed:
        changed = False
        for child, parent in parents.items():
            if parent in victims and child not in victims and child not in protected:
                victims.add(child)
                changed = True
    for victim in sorted(victims):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, 9)
    return sorted(victims)


def _process_parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _mentions(pid: int, path: str) -> bool:
    proc = Path("/proc") / str(pid)
    try:
        if path in (proc / "cmdline").read_bytes().decode(errors="replace"):
            return True
        for fd in (proc / "fd").iterdir():
            with contextlib.suppress(OSError):
                if str(fd.readlink()).startswith(path):
                    return True
    except OSError:
        return False
    return False


def walker_material(directory: Path) -> str | None:
    """The material of a walker directory (None in a campaign of one material)."""
    parent = directory.parent.name
    return None if parent == "walkers" else parent
