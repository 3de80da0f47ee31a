"""campaign.yaml → the engines' typed settings, in one place.

The pydantic models of :mod:`hillwalker.config` are the only source of the settings a user sets
and of their defaults; the engines take small dataclasses built here (and nowhere else).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hillwalker.config import Campaign
from hillwalker.engines.levels import RunOptions
from hillwalker.engines.nequip import TrainSettings
from hillwalker.engines.walkers import WalkerSettings


def walker_settings(cfg: Campaign) -> WalkerSettings:
    """How every walker of the campaign moves and when it counts as blown up."""
    w, s = cfg.walkers, cfg.safety
    return WalkerSettings(
        ensemble=w.ensemble,
        temperature=w.temperature,
        pressure=w.pressure if w.ensemble == "npt" else None,
        timestep_fs=w.timestep,
        steps=w.steps,
        max_force=s.max_force,
        min_distance=s.min_distance,
        max_temperature=s.max_temperature,
        trajectory_stride=snapshot_stride(cfg),
    )


def snapshot_stride(cfg: Campaign) -> int:
    """Every how many steps a walker writes its trajectory: its frames 1..n (steps stride, 2
    stride, ..., before the end) are the segment's ``labeling.baseline_snapshots`` labeled at the
    baseline level (0: no trajectory; a campaign without a baseline writes none)."""
    n = cfg.labeling.baseline_snapshots if cfg.material.baseline else 0
    return max(1, cfg.walkers.steps // (n + 1)) if n else 0


def single_point_options(
    cfg: Campaign, *, cores: int, command: list[str] | tuple[str, ...] | None
) -> RunOptions:
    """How one single point runs: the site's cores and launcher, the campaign's limits."""
    return RunOptions(
        cores=cores,
        timeout=cfg.labeling.timeout,
        min_distance=cfg.safety.min_distance,
        command=tuple(command) if command else None,
    )


def init_package(root: Path, cfg: Campaign) -> Path:
    """The package that training.init names (a model directory or .nequip.zip)."""
    from hillwalker.engines.nequip.model_files import package_path

    if cfg.training.init is None:
        raise ValueError("training.init is not set")
    return package_path(root / cfg.training.init)


def training_changes(cfg: Campaign, generation: int, *, warm: bool) -> dict[str, Any]:
    """The campaign's changes to the NequIP template's settings for one generation."""
    t = cfg.training
    epochs = (t.warm_epochs or t.epochs) if warm else t.epochs
    return {
        "epochs": epochs,
        "seed": cfg.seed + generation,
        "validation_fraction": t.validation_fraction,
        **t.overrides,
    }


#: CPU seconds a compiled model saves per MD step: compiled MIL-53 MD ran 55 steps/s, eager 23
#: (one thread each; benchmarks/bench_nequip.py, 2026-12-02)
SECONDS_SAVED_PER_STEP = 1 / 23 - 1 / 55
#: wall seconds of the AOTInductor compile of a MIL-53 model (the main job, 2026-12-03: 66 s)
COMPILE_SECONDS = 66.0


def compile_models(cfg: Campaign, parallel: int | None = None) -> bool:
    """Whether the campaign's models are AOTInductor-compiled for its walkers. ``auto``: when
    the MD wall time it saves exceeds the compile's; the walkers run ``parallel`` at a time
    (the local cores; None: all at once, as on a cluster), so the time saved is the steps'
    saving divided among them, while the compile holds the walkers back all that time."""
    choice = cfg.training.compile
    if choice == "auto":
        w = cfg.walkers
        side_by_side = max(1, min(w.count, parallel or w.count))
        return w.count * w.steps * SECONDS_SAVED_PER_STEP / side_by_side >= COMPILE_SECONDS
    return bool(choice)


def train_settings(template: Path, changes: dict[str, Any], *, split_seed: int) -> TrainSettings:
    """The template's knobs with the campaign's changes on top. The validation frames are
    picked with ``split_seed`` (the campaign's seed), not the generation's: each generation's
    validation set holds the previous one's, so its error is comparable and a warm-started
    model is never validated on frames it trained on. (Not part of ``changes``: a generation's task key, and
    so a campaign resumed from before this choice, stays as it was.)"""
    return TrainSettings.from_template(template, **{"split_seed": split_seed, **changes})
