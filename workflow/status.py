"""`hillwalker status DIR`: what a campaign has done, read only from its directory."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from hillwalker.coverage import cv_ranges
from hillwalker.engines.dataset import STATUS_DONE, STATUS_FAILED
from hillwalker.engines.files import read_json
from hillwalker.state import CampaignDir, _alive, _read_lock, walker_material


def campaign_status(directory: str | Path) -> dict[str, Any]:
    """The status as a dict (the ``--json`` output; keys documented in the README)."""
    cdir = CampaignDir(Path(directory))
    if not (cdir.root / "campaign.yaml").is_file():
        raise FileNotFoundError(f"{cdir.root}: not a campaign directory (no campaign.yaml)")
    sps = cdir.records("single_point")
    walkers = cdir.records("walker")
    trains = cdir.records("train")
    models = _latest_per_generation(cdir, [r for r in trains if r["status"] == STATUS_DONE])
    run = read_json(cdir.run_state) or {}
    holder = _read_lock(cdir.lock)
    running = bool(holder and _alive(holder))
    finished = run.get("stage") == "finished"
    return {
        "directory": str(cdir.root),
        "generations_done": len(models),
        "generations": [_generation(cdir, r, sps) for r in models],
        "single_points": _single_points(sps),
        "cv_range": _cv_range(cdir, walkers),
        "wall_time_seconds": {
            "md": round(sum(w.get("seconds") or 0 for w in walkers), 2),
            "dft": round(sum(s.get("seconds") or 0 for s in sps), 2),
            "train": round(sum(t.get("seconds") or 0 for t in models), 2),
        },
        "state": "running"
        if running
        else ("finished" if finished else ("interrupted" if run else "new")),
        "last_progress": run,
        "stopped_by": run.get("stopped_by") if not running else None,
        "failed_trainings": _failed_trainings(trains, models),
        "walker_blow_ups": _blow_ups(walkers),
        "will_redo": _will_redo(cdir, walkers, models) if not running else {},
        "dataset": str(cdir.dataset),
        "slurm_blocks": _slurm_blocks(cdir),
        "materials": _materials(cdir, sps, walkers),
    }


def _materials(
    cdir: CampaignDir, sps: list[dict[str, Any]], walkers: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """A campaign of several materials, by material: the generation it joined, its single
    points, walker segments, blow-ups and the CV range its walkers visited ({} for one)."""
    joins = read_json(cdir.materials)
    if not isinstance(joins, dict):
        return {}
    material_of = {s["key"]: _header_value(cdir, s, "material") for s in sps}
    out = {}
    for name, joined in joins.items():
        own = [s for s in sps if material_of[s["key"]] == name]
        segments = [w for w in walkers if w.get("material") == name]
        out[name] = {
            "joined_generation": joined,
            "single_points_done": sum(s["status"] == STATUS_DONE for s in own),
            "single_points_failed": sum(s["status"] == STATUS_FAILED for s in own),
            "walker_segments": len(segments),
            "walker_blow_ups": len(_blow_ups(segments)),
            "cv_range": _cv_range(cdir, segments, name),
        }
    return out


def _generation(
    cdir: CampaignDir, model: dict[str, Any], sps: list[dict[str, Any]]
) -> dict[str, Any]:
    g = model["generation"]
    new = [s for s in sps if _generation_of(cdir, s) == g]
    return {
        "generation": g,
        # what the walkers ran: the compiled model, or the package (training.compile: false)
        "model": str(cdir.root / (model.get("compiled") or model["package"])),
        "package": str(cdir.root / model["package"]),
        "validation": model.get("metrics", {}),
        "single_points_done": sum(s["status"] == STATUS_DONE for s in new),
        "single_points_failed": sum(s["status"] == STATUS_FAILED for s in new),
        "training_seconds": model.get("seconds"),
        "test_sets": model.get("test_sets", {}),
    }


def _single_points(sps: list[dict[str, Any]]) -> dict[str, Any]:
    failed = [s for s in sps if s["status"] == STATUS_FAILED]
    return {
        "done": sum(s["status"] == STATUS_DONE for s in sps),
        "failed": len(failed),
        "failed_by_class": dict(Counter(s.get("failure") or "unknown" for s in failed)),
        # how often each retry (ladder rung, rerun after a crash) was needed
        "retries": dict(
            sorted(Counter(name for s in sps for name in s.get("corrections") or []).items())
        ),
        # single points by level of theory (a campaign with a baseline has two)
        "by_level": dict(sorted(Counter(s.get("level") or "unknown" for s in sps).items())),
    }


def _cv_range(
    cdir: CampaignDir, walkers: list[dict[str, Any]], material: str | None = None
) -> dict[str, list[float]]:
    """Min/max of each CV: the walkers' final frames, then every COLVAR trace (of
    ``material``'s walkers in a campaign of several)."""
    cv_range: dict[str, list[float]] = {}
    for w in walkers:
        for name, value in (w.get("cv") or {}).items():
            if isinstance(value, int | float):
                lo, hi = cv_range.get(name, [value, value])
                cv_range[name] = [min(lo, value), max(hi, value)]
    cv_range.update(cv_ranges(cdir, material=material))
    return cv_range


def _will_redo(
    cdir: CampaignDir, walkers: list[dict[str, Any]], models: list[dict[str, Any]]
) -> dict[str, int]:
    """Tasks that were started but not recorded: the next run redoes them."""
    walker_done = {(w.get("generation"), w.get("material"), w.get("walker")) for w in walkers}
    trained = {r["generation"] for r in models}
    return {
        "single_point": _unfinished(cdir, "single_point"),
        "walker": sum(
            (g, walker_material(d), w) not in walker_done for g, w, d in cdir.walker_dirs()
        ),
        "train": sum(g not in trained for g, _ in cdir.model_dirs()),
    }


def _latest_per_generation(cdir: CampaignDir, models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One finished training per generation, by generation: the newest record where a
    generation was trained again (e.g. after its training set changed), not both."""
    newest: dict[int, tuple[float, dict[str, Any]]] = {}
    for r in models:
        when = cdir.record_path("train", r["key"]).stat().st_mtime
        if r["generation"] not in newest or when >= newest[r["generation"]][0]:
            newest[r["generation"]] = (when, r)
    return [newest[g][1] for g in sorted(newest)]


def _failed_trainings(
    trains: list[dict[str, Any]], models: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Generations whose training failed and has not succeeded since."""
    trained = {r["generation"] for r in models}
    return [
        {"generation": r.get("generation"), "error": r.get("error")}
        for r in trains
        if r["status"] == STATUS_FAILED and r.get("generation") not in trained
    ]


def _blow_ups(walkers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "generation": w.get("generation"),
            "walker": w.get("walker"),
            **{k: e.get(k) for k in ("step", "reason", "reset_to", "reset_to_step") if k in e},
        }
        for w in sorted(walkers, key=lambda w: (w.get("generation", 0), w.get("walker", 0)))
        for e in w.get("events") or []
        if e.get("kind") == "blow_up"
    ]


def _slurm_blocks(cdir: CampaignDir) -> list[dict[str, Any]]:
    """SLURM jobs of the run, with their state now (squeue); none for a local run."""
    rows = _read_json_list(cdir.slurm_blocks)
    if not rows:
        return []
    from hillwalker.execution import read_blocks  # imports Parsl: only when there are jobs

    return read_blocks(cdir.root)


def _read_json_list(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


def _generation_of(cdir: CampaignDir, record: dict[str, Any]) -> int | None:
    value = _header_value(cdir, record, "generation")
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def _header_value(cdir: CampaignDir, record: dict[str, Any], key: str) -> str | None:
    """``key`` of a single point's labeled frame, read from its extxyz comment line."""
    result = cdir.root / record.get("result", "")
    try:
        with result.open() as handle:
            handle.readline()
            header = handle.readline()
    except OSError:
        return None
    for token in header.split():
        if token.startswith(f"{key}="):
            return token.split("=", 1)[1]
    return None


def _unfinished(cdir: CampaignDir, kind: str) -> int:
    """Task directories that were started but have no record: redone by the next run."""
    folder = cdir.state / "tasks" / kind
    if not folder.is_dir():
        return 0
    return sum(
        1 for p in folder.iterdir() if p.is_dir() and not (folder / f"{p.name}.json").exists()
    )
