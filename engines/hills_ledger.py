"""The hills ledger: which part of a walker's hills file each segment wrote, so a re-run can undo it.

Each walker's hills file (``<bias_dir>/HILLS.<walker>``) is written by that walker alone. Before
its MD starts a segment writes ``<bias_dir>/.segments/walker-<i>.json`` (atomically) with the
file's size in bytes and hill count, status ``running``; it is marked ``done`` as the last act of
the segment. A segment that finds its walker's record still ``running`` (the previous segment was
killed), or ``done`` for the same generation (the segment is being re-run), first cuts the hills
file back to the recorded size — checked against the recorded hill count — by an atomic rewrite.
A lock (``flock`` on ``walker-<i>.lock``, released by the OS even on SIGKILL) stops two live
copies of one walker. The record also keeps the walker's step counter, which never goes back.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hillwalker.engines.files import atomic_open, atomic_write_json
from hillwalker.engines.plumed import (
    HillsError,
    count_hills,
    count_hills_in_bytes,
    hills_file,
    hills_files,
    init_bias_dir,
    read_snapshot,
)

#: the ledger's folder inside a bias directory
LEDGER_DIR = ".segments"


class WalkerError(RuntimeError):
    """A segment that cannot start (bad state file, walker busy, hills that do not add up)."""


@dataclass
class LedgerEntry:
    """The open record of one walker's running segment."""

    record_path: Path
    own_hills: Path
    #: hills in the walker's own file when the segment started
    hills_at_start: int
    #: where the step counter starts (never before the end of the walker's last segment)
    start_step: int
    #: hills of a killed or re-run segment this one removed first (0: none)
    rolled_back: int


def record_path(bias_dir: Path, walker: int) -> Path:
    return bias_dir / LEDGER_DIR / f"walker-{walker}.json"


def open_segment(
    stack: contextlib.ExitStack[Any],
    bias_dir: Path,
    *,
    walker: int,
    n_walkers: int,
    generation: int,
    bias: str,
    start_step: int,
) -> LedgerEntry:
    """Lock the walker (until ``stack`` closes), undo an unfinished segment, record this one."""
    check_walker_count(bias_dir, n_walkers, bias)
    init_bias_dir(bias_dir, n_walkers)
    stack.enter_context(walker_lock(bias_dir, walker))
    own_hills = hills_file(bias_dir, walker)
    path = record_path(bias_dir, walker)
    # the step counter never goes back, not even on a reset to an older structure
    start_step = max(start_step, recorded_step(path, generation))
    check_intact(path, own_hills, generation)
    rolled = roll_back_unfinished(path, own_hills, generation)
    hills_at_start = count_hills(own_hills)
    atomic_write_json(
        path,
        {
            "walker": walker,
            "generation": generation,
            "start_step": start_step,
            "bytes": own_hills.stat().st_size,
            "hills": hills_at_start,
            "status": "running",
            "started": time.time(),
        },
    )
    return LedgerEntry(path, own_hills, hills_at_start, start_step, rolled)


def close_segment(entry: LedgerEntry, *, end_step: int, segment_status: str) -> int:
    """Mark the segment done (its last act: a kill before it means 'redo'); return hills added."""
    hills_added = count_hills(entry.own_hills) - entry.hills_at_start
    record = json.loads(entry.record_path.read_text())
    record.update(
        {
            "status": "done",
            "end_step": end_step,
            "hills_added": hills_added,
            "segment_status": segment_status,
        }
    )
    atomic_write_json(entry.record_path, record)
    return hills_added


@contextlib.contextmanager
def walker_lock(bias_dir: Path, walker: int) -> Iterator[None]:
    path = bias_dir / LEDGER_DIR / f"walker-{walker}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise WalkerError(
                f"walker {walker} is already running a segment ({path} is locked)"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_walker_count(bias_dir: Path, n_walkers: int, bias: str) -> None:
    """PLUMED reads HILLS.0 … HILLS.<n-1> only: hills of walkers beyond would silently drop out."""
    if bias != "shared":
        return
    for path in hills_files(bias_dir):
        walker = int(path.name.rsplit(".", 1)[1])
        if walker >= n_walkers and count_hills(path):
            raise WalkerError(
                f"{path} holds hills of walker {walker}, but n_walkers is {n_walkers}: the shared "
                "bias would lose them; keep n_walkers or merge the hills first"
            )


def recorded_step(record_path: Path, generation: int) -> int:
    """Where the walker's step counter stands: the end of its last segment, or the start of
    the segment being redone (killed, or re-run for the same generation)."""
    if not record_path.is_file():
        return 0
    try:
        record = json.loads(record_path.read_text())
        redo = record["status"] != "done" or int(record["generation"]) == generation
        return int(record["start_step"] if redo else record.get("end_step", record["start_step"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WalkerError(f"{record_path}: unreadable segment record ({exc})") from exc


def check_intact(record_path: Path, own_hills: Path, generation: int) -> None:
    """A finished segment's hills file must still hold every hill it had when that segment
    ended: a file cut short since (a full disk, a bad copy, an edit) would silently lose bias."""
    if not record_path.is_file():
        return
    try:
        record = json.loads(record_path.read_text())
        done_elsewhere = record["status"] == "done" and int(record["generation"]) != generation
        expected = int(record["hills"]) + int(record.get("hills_added", 0))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WalkerError(f"{record_path}: unreadable segment record ({exc})") from exc
    if not done_elsewhere:
        return  # a killed or re-run segment: roll_back_unfinished checks and cuts
    data = own_hills.read_bytes() if own_hills.is_file() else b""
    found = count_hills_in_bytes(data)
    if found != expected or (data and not data.endswith(b"\n")):
        raise WalkerError(
            f"{own_hills}: holds {found} complete hills, but its last segment "
            f"(generation {record['generation']}, {record_path}) ended with {expected}: the file "
            "was cut or changed since; restore the bias directory from a snapshot taken before "
            "(a campaign keeps one per generation: generations/NNN/hills, restored with "
            "hillwalker.engines.plumed.restore_hills) and run again"
        )


def roll_back_unfinished(record_path: Path, own_hills: Path, generation: int) -> int:
    """Undo the hills of a killed segment, or of the segment being re-run; return how many."""
    if not record_path.is_file():
        return 0
    try:
        record = json.loads(record_path.read_text())
        size, expected = int(record["bytes"]), int(record["hills"])
        status, recorded_generation = record["status"], int(record["generation"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WalkerError(f"{record_path}: unreadable segment record ({exc})") from exc
    if status == "done" and recorded_generation != generation:
        return 0
    data = own_hills.read_bytes()
    kept = data[:size]
    if len(data) < size or count_hills_in_bytes(kept) != expected:
        raise WalkerError(
            f"{own_hills}: cannot roll back to the {expected} hills recorded in {record_path} "
            f"(the file has {len(data)} bytes, the record {size}); restore the bias from a "
            "snapshot (hillwalker.engines.plumed.restore_hills)"
        )
    removed = count_hills_in_bytes(data) - expected
    if len(data) != size:
        # a new file (rename), so walkers still reading the old one never see a cut line
        with atomic_open(own_hills, "wb") as handle:
            handle.write(kept)
    return removed


def rewind(
    bias_dir: Path,
    generation: int,
    replayed: dict[int, bool],
    snapshots: dict[int, Path | None],
) -> dict[int, int]:
    """Put each walker's hills back to where they stood when ``generation`` began, before a
    segment of it runs again; return the hills removed, by walker.

    A campaign that re-runs generation g (its model or walker settings changed) while its
    walkers had gone on to later generations would otherwise deposit on top of the hills of
    the generations being replaced, and with a shared bias every walker would feel them.
    ``replayed`` says, for each walker, whether its segment of ``generation`` is kept as
    recorded (its hills stay: the file goes back to the end of that segment) or runs again
    (back to the end of the generation before). ``snapshots`` gives the campaign's hills
    snapshot taken after each generation (``generations/NNN/hills``; None: no hills yet).
    Each walker's own file is cut where the ledger records its segments (this generation's,
    run or killed) or taken from the snapshot (later generations'), and its record set to
    match; the step counter keeps its place (it never goes back).
    """
    # (walker, record path, own file, snapshot bytes or None: cut, settled generation, step)
    plans: list[tuple[int, Path, Path, bytes | None, int, int]] = []
    loaded: dict[int, dict[str, bytes]] = {}
    for walker, kept in replayed.items():
        path = record_path(bias_dir, walker)
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
            recorded = int(record["generation"])
            done = record["status"] == "done"
            step = int(record["end_step"] if done else record["start_step"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WalkerError(f"{path}: unreadable segment record ({exc})") from exc
        own = hills_file(bias_dir, walker)
        if recorded < generation or (recorded == generation and kept):
            continue
        if recorded == generation:  # cut back to the start of its segment of this generation
            plans.append((walker, path, own, None, generation - 1, int(record["start_step"])))
            continue
        settled = generation if kept else generation - 1
        snapshot = snapshots.get(settled)
        if settled not in loaded:
            try:
                loaded[settled] = read_snapshot(snapshot) if snapshot is not None else {}
            except (HillsError, OSError) as exc:
                raise WalkerError(
                    f"{own}: cannot go back to generation {settled}'s hills: {exc}"
                ) from exc
        plans.append((walker, path, own, loaded[settled].get(own.name, b""), settled, step))
    # every snapshot read and checked before any file changes: nothing half rewound
    removed: dict[int, int] = {}
    for walker, path, own, data, settled, step in plans:
        before = count_hills(own)
        if data is None:
            roll_back_unfinished(path, own, generation)
        else:
            with atomic_open(own, "wb") as handle:
                handle.write(data)
        _settle(path, own, walker, settled, step)
        removed[walker] = before - count_hills(own)
    return removed


def _settle(path: Path, own: Path, walker: int, generation: int, step: int) -> None:
    """A record of a finished segment of ``generation`` that left ``own`` as it is now."""
    atomic_write_json(
        path,
        {
            "walker": walker,
            "generation": generation,
            "start_step": step,
            "end_step": step,
            "bytes": own.stat().st_size,
            "hills": count_hills(own),
            "hills_added": 0,
            "status": "done",
            "rewound": True,
        },
    )
