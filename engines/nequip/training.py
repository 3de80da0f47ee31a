"""Training one generation's model with nequip-train (from scratch or warm start), resumable.

A model directory holds::

    config.yaml          the template used (hydra reads it from here)
    data/train.extxyz    the frames trained on, data/val.extxyz the validation frames
    inputs.json          fingerprint of everything that defines the run (for resuming)
    train/               hydra run dir: best.ckpt, last.ckpt, nequip-train's own log
    train.log            stdout/stderr of nequip-train
    progress.json        {"stage", "epoch", "max_epochs", "history", ...}, updated every epoch
    model.nequip.zip     the packaged model (best validation force RMSE)
    model.nequip.pt2     the same, AOTInductor-compiled for ASE
    model.json           the record, written last: its presence means the model is complete

A warm start (``init_from``) takes the previous package's weights, type names, energy shifts and
cutoff; the package must stay where it is while the run (or a resume of it) needs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ase import Atoms

from hillwalker.engines.dataset import write_frames
from hillwalker.engines.files import atomic_write_json, atomic_write_text, file_digest
from hillwalker.engines.nequip.callback import diverged_epoch
from hillwalker.engines.nequip.commands import run_logged
from hillwalker.engines.nequip.data import (
    energy_shifts,
    forces_in_validation,
    forces_mode,
    species_of,
    split,
    stress_mode,
    training_frames,
    with_nan_forces,
    with_nan_stress,
)
from hillwalker.engines.nequip.deploy import (
    compile_model,
    evaluate,
    model_species,
    package_checkpoint,
    package_r_max,
    resolve_device,
)
from hillwalker.engines.nequip.model_files import (
    COMPILED_NAME,
    PACKAGE_NAME,
    PROGRESS_NAME,
    RECORD_NAME,
    ModelError,
    TrainedModel,
    package_path,
    read_json,
    write_progress,
)
from hillwalker.engines.nequip.settings import TrainSettings, run_overrides
from hillwalker.engines.nequip.template import (
    default_template,
    hydra_str,
    read_template,
    without_stress,
)
from hillwalker.engines.nequip.train_and_package import DONE_NAME

#: where the training's own process leaves the package it made (``train_and_package``)
STAGED_DIR = ".staged"


@dataclass
class _Plan:
    """A training prepared in its directory: what nequip-train runs on, and its fingerprint."""

    out_dir: Path
    template: Path
    settings: TrainSettings
    paths: list[Path]
    species: list[str]
    shifts: dict[str, float]
    stress_mode: str
    package_from: Path | None
    isolated_atom_energies: dict[str, float] | None
    device: str
    train_frames: list[Atoms]
    val_frames: list[Atoms]
    overrides: list[str]
    fingerprint: str


def train(
    data: Path | Sequence[Path],
    out_dir: Path,
    *,
    template: Path | None = None,
    settings: TrainSettings | None = None,
    init_from: Path | None = None,
    isolated_atom_energies: dict[str, float] | None = None,
    device: str = "auto",
    compile: bool = True,
    threads: int | None = None,
) -> TrainedModel:
    """Train a NequIP model on labeled frames; package it and (by default) compile it.

    ``init_from``: a previous generation's ``.nequip.zip`` (or model directory) to start from
    (warm start). A call on a directory whose run was interrupted resumes from its last.ckpt
    if the inputs are the same; a directory whose model is complete for the same inputs is
    returned as it is. ``threads``: CPU threads of training, packaging, compilation and the
    final evaluation (OMP_NUM_THREADS of each subprocess); None: every core this process may
    use, never an OMP_NUM_THREADS this process inherited. On a loaded machine one thread can
    be several times faster than two oversubscribed ones.
    """
    started = time.perf_counter()
    plan = _plan(
        data, out_dir, template, settings, init_from, isolated_atom_energies, device, compile
    )
    done = _completed(plan.out_dir, plan.fingerprint)
    if done is not None:
        return done
    resume = _prepare_run_dir(plan)
    seconds = {"train": _run_training(plan, resume, threads)}
    history, checkpoint = _finished_training(plan)
    package, compiled = _deploy(plan, checkpoint, history, compile, threads, seconds)
    t0 = time.perf_counter()
    validation = evaluate(package, plan.val_frames, device=plan.device, threads=threads)
    seconds["evaluate"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    metrics = _metrics(plan, validation, history, resume, seconds)
    record = {
        "fingerprint": plan.fingerprint,
        "package": package.name,
        "compiled": compiled.name if compiled else None,
        "compiled_device": plan.device if compiled else None,
        "metrics": metrics,
    }
    write_progress(plan.out_dir, stage="done", max_epochs=plan.settings.epochs, history=history)
    # written last: its presence marks the model complete
    atomic_write_json(plan.out_dir / RECORD_NAME, record)
    return TrainedModel.from_record(plan.out_dir)


def _plan(
    data: Path | Sequence[Path],
    out_dir: Path,
    template: Path | None,
    settings: TrainSettings | None,
    init_from: Path | None,
    isolated: dict[str, float] | None,
    device: str,
    compile: bool,
) -> _Plan:
    """Check the inputs (cheap checks first), write config and data, build the overrides."""
    out_dir = Path(out_dir).resolve()
    template = Path(template).resolve() if template is not None else default_template()
    settings = settings if settings is not None else TrainSettings.from_template(template)
    settings.check()
    paths = [Path(data)] if isinstance(data, (str, os.PathLike)) else [Path(p) for p in data]

    frames = training_frames(paths)
    package_from = package_path(init_from) if init_from is not None else None
    species = _species(frames, package_from, paths)
    if package_from is not None:
        # a warm start keeps the package's architecture (l_max, layers, features are unused);
        # its cutoff must also be the data's neighbour-list cutoff
        settings = dataclasses.replace(settings, r_max=package_r_max(package_from))
    else:
        # frozen layers keep trained weights: from random ones (a campaign's first model, a
        # transfer's pretraining) everything trains
        settings = dataclasses.replace(settings, frozen_layers=0)
    forces = forces_mode(frames)
    frames = [with_nan_forces(f) for f in frames]  # energy-only labels: NaN, skipped by the loss
    mode = stress_mode(frames)
    if mode == "some":
        # nequip skips NaN stress labels when told to (ignore_nan), so frames without stress
        # still teach energies and forces
        frames = [with_nan_stress(f) for f in frames]
    shifts = energy_shifts(frames, species, isolated, paths)
    train_frames, val_frames = split(frames, settings.validation_fraction, settings.validation_seed)
    train_frames, val_frames = forces_in_validation(train_frames, val_frames)
    device = resolve_device(device)  # imports torch: after the quick checks of the input

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", template.read_text())
    write_frames(out_dir / "data" / "train.extxyz", train_frames)
    write_frames(out_dir / "data" / "val.extxyz", val_frames)
    overrides = _overrides(settings, out_dir, species, shifts, mode, package_from, device)
    if mode == "none":
        overrides += without_stress(read_template(template), template)
    if forces == "some":
        overrides = _skip_missing_overrides(overrides, read_template(template), mode)
    fingerprint = _fingerprint(out_dir, overrides, package_from, compile, device)
    return _Plan(
        out_dir=out_dir,
        template=template,
        settings=settings,
        paths=paths,
        species=species,
        shifts=shifts,
        stress_mode=mode,
        package_from=package_from,
        isolated_atom_energies=isolated,
        device=device,
        train_frames=train_frames,
        val_frames=val_frames,
        overrides=overrides,
        fingerprint=fingerprint,
    )


def _species(frames: list[Atoms], package_from: Path | None, paths: list[Path]) -> list[str]:
    """The model's species: the data's, or a warm start's package's (which must cover the data)."""
    data_species = species_of(frames)
    if package_from is None:
        return data_species
    species = model_species(package_from)
    missing = sorted(set(data_species) - set(species))
    if missing:
        raise ModelError(
            f"{package_from}: model has no type for element(s) {', '.join(missing)} found in "
            f"{', '.join(map(str, paths))} (model species: {' '.join(species)})"
        )
    return species


def _prepare_run_dir(plan: _Plan) -> bool:
    """Clear a stale run, or keep an interrupted one of the same inputs; True: resume it."""
    out_dir = plan.out_dir
    run_dir = out_dir / "train"
    previous = read_json(out_dir / "inputs.json")
    resume = (run_dir / "last.ckpt").is_file() and previous.get("fingerprint") == plan.fingerprint
    if not resume:
        # different inputs (or nothing to resume from): start clean, never mix runs
        for stale in (run_dir, out_dir / RECORD_NAME, out_dir / PROGRESS_NAME):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
    atomic_write_json(
        out_dir / "inputs.json", {"fingerprint": plan.fingerprint, "overrides": plan.overrides}
    )
    # a resumed run keeps its history (the callback also restores it from last.ckpt; this
    # covers a run killed after its last epoch, which trains no further epoch)
    earlier = read_json(out_dir / PROGRESS_NAME).get("history", []) if resume else []
    write_progress(out_dir, stage="training", max_epochs=plan.settings.epochs, history=earlier)
    return resume


def _run_training(plan: _Plan, resume: bool, threads: int | None) -> float:
    """Run nequip-train (to its end or its divergence), and package the checkpoint to deploy in
    the same process (``train_and_package``: one start-up of torch and nequip, not two); returns
    the wall time in seconds."""
    run_dir = plan.out_dir / "train"
    staged = plan.out_dir / STAGED_DIR
    shutil.rmtree(staged, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "hillwalker.engines.nequip.train_and_package",
        "--package",
        str(_checkpoint(plan)),
        str(staged / PACKAGE_NAME),
        "--",
        "nequip-train",
        "--config-path",
        str(plan.out_dir),
        "--config-name",
        "config",
        f"hydra.run.dir={hydra_str(str(run_dir))}",
        *plan.overrides,
    ]
    if resume:
        command.append(f"++ckpt_path={hydra_str(str(run_dir / 'last.ckpt'))}")
    t0 = time.perf_counter()
    run_logged(
        command,
        plan.out_dir / "train.log",
        cwd=plan.out_dir,
        what="nequip-train",
        append=resume,
        threads=threads,
    )
    return time.perf_counter() - t0


def _finished_training(plan: _Plan) -> tuple[list[dict[str, Any]], Path]:
    """(history, checkpoint to deploy) of a finished run; a ModelError if it diverged."""
    out_dir, settings = plan.out_dir, plan.settings
    history = read_json(out_dir / PROGRESS_NAME).get("history", [])
    diverged = diverged_epoch(history)
    if diverged is not None:
        raise ModelError(
            f"{out_dir / PROGRESS_NAME}: training diverged at epoch {diverged['epoch']}: "
            f"validation force RMSE {diverged.get('val_forces_rmse')} eV/Å (learning_rate "
            f"{settings.learning_rate}). Lower learning_rate and train again; no model was made."
        )
    ckpt = _checkpoint(plan)
    if not ckpt.is_file():
        raise ModelError(f"{out_dir / 'train.log'}: nequip-train wrote no {ckpt.name}")
    return history, ckpt


def _checkpoint(plan: _Plan) -> Path:
    """The checkpoint a finished training deploys (settings.checkpoint: best or last)."""
    name = "best.ckpt" if plan.settings.checkpoint == "best" else "last.ckpt"
    return plan.out_dir / "train" / name


def staged_package(out_dir: Path, checkpoint: Path) -> tuple[Path, float] | None:
    """(package, seconds it took) made in the training's own process, moved into place, if it
    is complete (``done.json``) and of ``checkpoint`` as it is now; else None."""
    staged = out_dir / STAGED_DIR
    done = read_json(staged / DONE_NAME)
    package = staged / PACKAGE_NAME
    if (
        done.get("checkpoint") != str(checkpoint)
        or done.get("checkpoint_mtime_ns") != checkpoint.stat().st_mtime_ns
        or not package.is_file()
    ):
        return None
    package.replace(out_dir / PACKAGE_NAME)
    return out_dir / PACKAGE_NAME, float(done.get("seconds", 0.0))


def _deploy(
    plan: _Plan,
    checkpoint: Path,
    history: list[dict[str, Any]],
    compile: bool,
    threads: int | None,
    seconds: dict[str, float],
) -> tuple[Path, Path | None]:
    """Package the checkpoint and (if asked) compile it; their wall times go into ``seconds``."""
    out_dir, epochs = plan.out_dir, plan.settings.epochs
    write_progress(out_dir, stage="packaging", max_epochs=epochs, history=history)
    staged = staged_package(out_dir, checkpoint)
    if staged is not None:  # packaged by the training's own process
        package, seconds["package"] = staged
    else:  # e.g. a run resumed after a kill between training and packaging
        t0 = time.perf_counter()
        package = package_checkpoint(checkpoint, out_dir / PACKAGE_NAME, threads=threads)
        seconds["package"] = time.perf_counter() - t0
    shutil.rmtree(out_dir / STAGED_DIR, ignore_errors=True)

    compiled: Path | None = None
    seconds["compile"] = 0.0
    if compile:
        write_progress(out_dir, stage="compiling", max_epochs=epochs, history=history)
        t0 = time.perf_counter()
        # a frame without a cell (a molecule) has no volume, hence no stress to compile
        periodic = all(f.cell.rank == 3 for f in [*plan.train_frames, *plan.val_frames])
        compiled = compile_model(
            package,
            out_dir / COMPILED_NAME,
            device=plan.device,
            threads=threads,
            stress=periodic,
        )
        seconds["compile"] = time.perf_counter() - t0
    return package, compiled


def _metrics(
    plan: _Plan,
    validation: dict[str, Any],
    history: list[dict[str, Any]],
    resume: bool,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The record's metrics: the deployed model's validation errors and how it was made."""
    settings = plan.settings
    deployed_epoch = None
    if history:
        best = min(history, key=lambda h: h.get("val_forces_rmse", float("inf")))
        deployed_epoch = best["epoch"] if settings.checkpoint == "best" else history[-1]["epoch"]
    wall = ("train", "package", "compile", "evaluate", "total")
    return {
        **{k: v for k, v in validation.items() if k != "n_frames"},
        "n_train": len(plan.train_frames),
        "n_val": len(plan.val_frames),
        "species": plan.species,
        "stress_trained": plan.stress_mode != "none",
        "epochs_run": history[-1]["epoch"] if history else 0,
        "deployed_epoch": deployed_epoch,
        "resumed": resume,
        "history": history,
        "wall_seconds": {name: round(seconds[name], 2) for name in wall},
        "config": {
            "template": str(plan.template),
            "settings": dataclasses.asdict(settings),
            "overrides": plan.overrides,
            "init_from": str(plan.package_from) if plan.package_from else None,
            "isolated_atom_energies": plan.isolated_atom_energies,
            "per_type_energy_shifts": plan.shifts,
            "data": [str(p.resolve()) for p in plan.paths],
            "device": plan.device,
        },
        "versions": _versions(),
    }


def _overrides(
    settings: TrainSettings,
    out_dir: Path,
    species: list[str],
    shifts: dict[str, float],
    stress_mode: str,
    package_from: Path | None,
    device: str,
) -> list[str]:
    """nequip-train's command-line overrides: the knobs, the data, the species, a warm start."""
    accelerator = _accelerator(settings.accelerator, device)
    overrides = run_overrides(
        settings, accelerator, species, out_dir / "data", shifts, out_dir / PROGRESS_NAME
    )
    if stress_mode == "some":
        overrides += [
            "++training_module.loss.ignore_nan={stress:true}",
            "++training_module.val_metrics.ignore_nan={stress:true}",
        ]
    if settings.frozen_layers:
        overrides.append(
            "++training_module.optimizer.param_groups={_target_:"
            f"hillwalker.engines.nequip.surgery.frozen_layers,layers:{settings.frozen_layers}}}"
        )
    if package_from is not None:
        # warm start: the previous generation's weights, type names and energy shifts
        overrides += [
            "~training_module.model",
            "+training_module.model={_target_:nequip.model.ModelFromPackage,"
            f"package_path:{hydra_str(str(package_from))}}}",
        ]
    return overrides


def _skip_missing_overrides(
    overrides: list[str], config: dict[str, Any], stress_mode: str
) -> list[str]:
    """``overrides`` with the loss and validation metrics wrapped by ``losses.skipping_missing``
    (frames without forces, or stress, contribute nothing; a batch without any gives 0, not
    NaN), and the data statistics by ``losses.statistics_skipping_missing``; the wrapped
    target is the template's, or the one an override already chose."""
    nan_fields = "[forces,stress]" if stress_mode == "some" else "[forces]"
    stats = (config.get("data") or {}).get("stats_manager") or {}
    overrides = [
        *overrides,
        "data.stats_manager._target_=hillwalker.engines.nequip.losses.statistics_skipping_missing",
        f"++data.stats_manager.inner={stats.get('_target_', '')}",
        f"++data.stats_manager.nan_fields={nan_fields}",
    ]
    module = config.get("training_module") or {}
    for section in ("loss", "val_metrics"):
        key = f"training_module.{section}._target_"
        inner = str((module.get(section) or {}).get("_target_", ""))
        for item in overrides:
            if item.startswith(f"{key}="):
                inner = item.split("=", 1)[1]
        overrides = [
            o for o in overrides
            if not o.startswith((f"{key}=", f"++training_module.{section}.ignore_nan="))
        ]  # fmt: skip
        overrides += [
            f"{key}=hillwalker.engines.nequip.losses.skipping_missing",
            f"++training_module.{section}.inner={inner}",
            f"++training_module.{section}.nan_fields={nan_fields}",
        ]
    return overrides


def _accelerator(accelerator: str, device: str) -> str:
    """Lightning's accelerator: "auto" follows the device; "cuda" is Lightning's "gpu"."""
    if accelerator == "auto":
        return "gpu" if device.startswith("cuda") else "cpu"
    return "gpu" if accelerator == "cuda" else accelerator


def _fingerprint(
    out_dir: Path, overrides: list[str], package_from: Path | None, compile: bool, device: str
) -> str:
    digest = hashlib.sha256()
    for path in (
        out_dir / "config.yaml",
        out_dir / "data/train.extxyz",
        out_dir / "data/val.extxyz",
    ):
        digest.update(path.read_bytes())
    digest.update("\n".join(overrides).encode())
    if package_from is not None:
        digest.update(file_digest(package_from).encode())
    digest.update(f"compile={compile} device={device}".encode())
    return digest.hexdigest()


def _completed(out_dir: Path, fingerprint: str) -> TrainedModel | None:
    record = read_json(out_dir / RECORD_NAME)
    if record.get("fingerprint") != fingerprint:
        return None
    model = TrainedModel.from_record(out_dir)
    if not model.package.is_file() or (model.compiled is not None and not model.compiled.is_file()):
        return None
    return model


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("nequip", "torch", "lightning")}
