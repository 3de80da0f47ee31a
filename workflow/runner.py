"""`hillwalker run DIR`: everything around the loop — validation, the lock, change detection,
Parsl up and down, the run log, and why a run stopped. The loop itself is ``campaign.py``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hillwalker.campaign import CampaignError, CampaignRun, Progress
from hillwalker.changes import check_changes
from hillwalker.config import Campaign, ConfigError, load_campaign
from hillwalker.engines.files import (
    atomic_write_json,
    atomic_write_text,
    disk_full,
    free_bytes,
    read_json,
)
from hillwalker.state import CampaignDir, reap_orphans

if TYPE_CHECKING:
    from hillwalker.engines.nequip import TrainedModel

log = logging.getLogger("hillwalker.campaign")


def run_campaign(
    directory: str | Path,
    *,
    site: Any = None,
    generations: int | None = None,
    smoke: bool = False,
    force: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> list[TrainedModel]:
    """Lock the campaign directory, start Parsl for the site, run the loop, always clean up."""
    from hillwalker.execution import Execution

    root = Path(directory).resolve()
    cfg = load_campaign(root)
    if generations is not None:
        cfg = _with(cfg, "stop", generations=generations)
    if smoke:
        root = _smoke_dir(root, cfg)
        cfg = load_campaign(root)
    preflight(root)
    if site is not None:
        # a single point may run up to labeling.timeout: refuse before submitting anything if
        # a dft block could not hold one, instead of SLURM killing it silently at the limit
        site.check_task_fits("dft", cfg.labeling.timeout)
    cdir = CampaignDir(root)
    # a log line that cannot be written (a full disk) is dropped, not printed as a traceback
    # to the terminal by every logger of this process (Parsl's included): the run stops on
    # the first write of its own that fails, with one message
    logging.raiseExceptions = False
    with cdir.locked():
        handler = _file_log(cdir.log)
        try:
            log.info("run %s (site: %s)", root, getattr(site, "name", None) or "local")
            if cdir.took_over_stale_lock:
                reaped = reap_orphans(root)
                log.warning(
                    "took over the lock of a dead run; stopped %d leftover processes", len(reaped)
                )
            for note in check_changes(cdir, cfg, force=force):
                log.warning("%s", note)
            runner = CampaignRun(root, config=cfg, on_progress=on_progress)
            with Execution(site, run_dir=root) as ex:
                return runner.run(ex)
        except BaseException as exc:
            if disk_full(exc):
                exc = DiskFullError(root)
            log.error("run stopped: %s: %s", type(exc).__name__, exc)
            _note_stop(cdir, exc)
            if isinstance(exc, DiskFullError):
                raise exc from None
            raise
        finally:
            logging.getLogger("hillwalker").removeHandler(handler)
            handler.close()


def preflight(root: Path) -> None:
    """`hillwalker validate` before anything runs: every mistake at once, nothing submitted."""
    from hillwalker.validate import validate_campaign

    report = validate_campaign(root)
    if not report.ok:
        raise ConfigError(
            ["campaign not valid (run 'hillwalker validate' for details):", *report.problems]
        )


def smoke_config(cfg: Campaign) -> Campaign:
    """One generation with tiny settings: checks the whole path in minutes."""
    cfg = _with(cfg, "generation0", frames=min(cfg.generation0.frames, 4))
    cfg = _with(cfg, "walkers", count=min(cfg.walkers.count, 2), steps=min(cfg.walkers.steps, 20))
    cfg = _with(cfg, "training", epochs=min(cfg.training.epochs, 5), warm_epochs=None)
    if cfg.materials is not None:  # each material's own walkers and frames, as small
        data = cfg.model_dump()
        for entry, (_, view) in zip(data["materials"], cfg.views(), strict=True):
            w, g0 = view.walkers, view.generation0
            entry["walkers"].update(count=min(w.count, 2), steps=min(w.steps, 20))
            entry["generation0"].update(frames=min(g0.frames, 4))
        cfg = Campaign.model_validate(data)
    return _with(cfg, "stop", generations=1, max_single_points=None, target_force_rmse=None)


def _with(cfg: Campaign, section: str, **changes: Any) -> Campaign:
    """``cfg`` with some keys of one section changed, validated again."""
    data = cfg.model_dump()
    data[section].update(changes)
    return Campaign.model_validate(data)


def _smoke_dir(root: Path, cfg: Campaign) -> Path:
    """A scratch campaign in DIR/.hillwalker/smoke: tiny settings, same material files.

    The smoke run leaves the real campaign's records, dataset and bias alone.
    """
    smoke = CampaignDir(root).smoke
    data = smoke_config(cfg).model_dump()
    data["material"] = {
        k: str((root / v).resolve()) for k, v in data["material"].items() if v is not None
    }
    for entry in data.get("materials") or []:
        for key in ("structure", "plumed"):
            entry[key] = str((root / entry[key]).resolve())
    smoke.mkdir(parents=True, exist_ok=True)
    atomic_write_text(smoke / "campaign.yaml", yaml.safe_dump(data, sort_keys=False))
    return smoke


class DiskFullError(CampaignError):
    """The campaign's filesystem (or quota) is full: the run stopped at its first failed write."""

    def __init__(self, root: Path) -> None:
        free = free_bytes(root)
        room = f"{free / 2**20:.1f} MiB free" if free is not None else "free space unknown"
        super().__init__(
            f"disk full: {root} ({room} on its filesystem). Free space and run again with the "
            "same command: every finished step is recorded and kept, and nothing half-written "
            "is used"
        )


def _note_stop(cdir: CampaignDir, exc: BaseException) -> None:
    """Why the run stopped, for `status` (run.json; the next run's first report clears it).
    On a full disk this note may not fit either: the run still stops with its message."""
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        why = f"interrupted ({type(exc).__name__}{f' {exc}' if str(exc) else ''})"
    else:
        why = str(exc) or type(exc).__name__
    run = read_json(cdir.run_state) or {}
    try:
        atomic_write_json(cdir.run_state, {**run, "stopped_by": why})
    except OSError as err:
        if not disk_full(err):
            raise


def _file_log(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("hillwalker")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler
