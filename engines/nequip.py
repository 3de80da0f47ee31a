"""NequIP models for one generation: train (from scratch or warm start), package, compile, load.

The training configuration is nequip's own hydra YAML (a material template such as
``templates/mil53-al/nequip.yaml``); hillwalker only overrides top-level keys on the
``nequip-train`` command line. Values never go through ``${oc.env:...}``, which yields strings.

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

Units are ASE's inside (eV, Å, eV/Å³); reported errors are meV/atom, meV/Å and GPa.
torch, lightning and nequip are imported inside functions so that importing this module (the CLI,
the workflow) stays cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ase import Atoms
from ase.data import atomic_numbers
from ase.units import GPa

from hillwalker.engines.dataset import (
    STATUS_FAILED,
    DatasetError,
    label,
    labels,
    read_frames,
    write_frames,
)
from hillwalker.engines.files import atomic_write_json, atomic_write_text, file_digest
from hillwalker.engines.processes import die_with_parent

PACKAGE_NAME = "model.nequip.zip"
COMPILED_NAME = "model.nequip.pt2"
RECORD_NAME = "model.json"
PROGRESS_NAME = "progress.json"

#: TrainSettings field -> top-level key of the template YAML
TEMPLATE_KEYS = {
    "epochs": "max_epochs",
    "r_max": "cutoff_radius",
    "l_max": "l_max",
    "num_layers": "num_layers",
    "num_features": "num_features",
    "batch_size": "batch_size",
    "learning_rate": "learning_rate",
    "energy_weight": "energy_weight",
    "force_weight": "force_weight",
    "stress_weight": "stress_weight",
    "seed": "seed",
    "accelerator": "accelerator",
}


class ModelError(ValueError):
    """A model file, training input or training run is unusable; the message names the file."""


def default_template() -> Path:
    """The MIL-53(Al) NequIP template shipped as package data."""
    return Path(str(resources.files("hillwalker.templates") / "mil53-al" / "nequip.yaml"))


@dataclass
class TrainSettings:
    """hillwalker's knobs; each is a top-level key of the template YAML (see TEMPLATE_KEYS)."""

    epochs: int = 200
    r_max: float = 5.0
    l_max: int = 1
    num_layers: int = 2
    num_features: int = 32
    batch_size: int = 4
    learning_rate: float = 0.005
    # loss coefficients: per-atom energy MSE, force MSE, stress MSE (ASE units, see template)
    energy_weight: float = 1.0
    force_weight: float = 1.0
    stress_weight: float = 1000.0
    seed: int = 0
    # "auto": the device passed to train() decides (GPU when CUDA is there)
    accelerator: str = "auto"
    # share of the frames held out for validation (and the checkpoint choice); at least one
    validation_fraction: float = 0.1
    # which checkpoint becomes the deployed model: lowest validation force RMSE, or the last
    checkpoint: str = "best"

    @classmethod
    def from_template(cls, template: Path | None = None, **changes: Any) -> TrainSettings:
        """Settings whose knobs are the template's values, with ``changes`` applied on top."""
        path = Path(template) if template is not None else default_template()
        config = _read_template(path)
        values: dict[str, Any] = {}
        for name, key in TEMPLATE_KEYS.items():
            if key not in config:
                continue
            wanted = type(getattr(cls(), name))
            value = config[key]
            if wanted is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, wanted) or isinstance(value, bool):
                raise ModelError(f"{path}: {key}: expected {wanted.__name__}, found {value!r}")
            values[name] = value
        values.update(changes)
        return cls(**values)

    def check(self) -> None:
        problems = []
        for name in ("epochs", "num_layers", "num_features", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.l_max < 0:
            problems.append("l_max must be >= 0")
        if self.r_max <= 0 or self.learning_rate <= 0:
            problems.append("r_max and learning_rate must be > 0")
        if min(self.energy_weight, self.force_weight, self.stress_weight) < 0:
            problems.append("loss weights must be >= 0")
        if not 0.0 < self.validation_fraction < 1.0:
            problems.append("validation_fraction must be between 0 and 1")
        if self.checkpoint not in ("best", "last"):
            problems.append("checkpoint must be 'best' or 'last'")
        if self.accelerator not in ("auto", "cpu", "gpu", "cuda"):
            problems.append("accelerator must be auto, cpu, gpu or cuda")
        if problems:
            raise ModelError("training settings: " + "; ".join(problems))


@dataclass
class TrainedModel:
    """One trained generation model, as recorded in ``directory/model.json``."""

    directory: Path
    package: Path
    compiled: Path | None
    record: Path
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, directory: Path) -> TrainedModel:
        record = Path(directory) / RECORD_NAME
        try:
            data = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{record}: not a readable model record ({exc})") from exc
        compiled = data.get("compiled")
        return cls(
            directory=Path(directory),
            package=Path(directory) / data["package"],
            compiled=Path(directory) / compiled if compiled else None,
            record=record,
            metrics=data["metrics"],
        )


# --------------------------------------------------------------------------------------------
# training


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
    returned as it is. ``threads``: CPU threads of the training process (OMP_NUM_THREADS);
    None keeps the environment's. On a loaded machine one thread can be several times faster
    than two oversubscribed ones.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    template = Path(template).resolve() if template is not None else default_template()
    settings = settings if settings is not None else TrainSettings.from_template(template)
    settings.check()
    paths = [Path(data)] if isinstance(data, (str, os.PathLike)) else [Path(p) for p in data]

    frames = _training_frames(paths)
    data_species = _species_of(frames)
    package_from = _package_path(init_from) if init_from is not None else None
    species = model_species(package_from) if package_from is not None else data_species
    missing = sorted(set(data_species) - set(species))
    if missing:
        raise ModelError(
            f"{package_from}: model has no type for element(s) {', '.join(missing)} found in "
            f"{', '.join(map(str, paths))} (model species: {' '.join(species)})"
        )
    if package_from is not None:
        # a warm start keeps the package's architecture (l_max, layers, features are unused);
        # its cutoff must also be the data's neighbour-list cutoff
        settings = dataclasses.replace(settings, r_max=_package_r_max(package_from))
    stress_mode = _stress_mode(frames)
    if stress_mode == "some":
        # nequip skips NaN stress labels when told to (ignore_nan), so frames without stress
        # still teach energies and forces
        frames = [_with_nan_stress(f) for f in frames]
    shifts = _energy_shifts(frames, species, isolated_atom_energies, paths)
    train_frames, val_frames = _split(frames, settings)
    device = resolve_device(device)  # imports torch: after the quick checks of the input

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", template.read_text())
    write_frames(out_dir / "data" / "train.extxyz", train_frames)
    write_frames(out_dir / "data" / "val.extxyz", val_frames)

    accelerator = settings.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if device.startswith("cuda") else "cpu"
    elif accelerator == "cuda":
        accelerator = "gpu"
    overrides = _overrides(
        settings, out_dir, species, shifts, stress_mode, package_from, accelerator
    )
    if stress_mode == "none":
        overrides += _without_stress(_read_template(template), template)
    fingerprint = _fingerprint(out_dir, overrides, package_from, compile, device)

    done = _completed(out_dir, fingerprint)
    if done is not None:
        return done

    run_dir = out_dir / "train"
    last_ckpt = run_dir / "last.ckpt"
    previous = _read_json(out_dir / "inputs.json")
    resume = last_ckpt.is_file() and previous.get("fingerprint") == fingerprint
    if not resume:
        # different inputs (or nothing to resume from): start clean, never mix runs
        for stale in (run_dir, out_dir / RECORD_NAME, out_dir / PROGRESS_NAME):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
    atomic_write_json(out_dir / "inputs.json", {"fingerprint": fingerprint, "overrides": overrides})
    # a resumed run keeps its history (the callback also restores it from last.ckpt; this
    # covers a run killed after its last epoch, which trains no further epoch)
    earlier = _read_json(out_dir / PROGRESS_NAME).get("history", []) if resume else []
    _write_progress(out_dir, stage="training", max_epochs=settings.epochs, history=earlier)

    command = [
        _tool("nequip-train"),
        "--config-path",
        str(out_dir),
        "--config-name",
        "config",
        f"hydra.run.dir={_hydra_str(str(run_dir))}",
        *overrides,
    ]
    if resume:
        command.append(f"++ckpt_path={_hydra_str(str(last_ckpt))}")
    t0 = time.perf_counter()
    _run_logged(
        command,
        out_dir / "train.log",
        cwd=out_dir,
        what="nequip-train",
        append=resume,
        threads=threads,
    )
    train_seconds = time.perf_counter() - t0

    history = _read_json(out_dir / PROGRESS_NAME).get("history", [])
    diverged = diverged_epoch(history)
    if diverged is not None:
        raise ModelError(
            f"{out_dir / PROGRESS_NAME}: training diverged at epoch {diverged['epoch']}: "
            f"validation force RMSE {diverged.get('val_forces_rmse')} eV/Å (learning_rate "
            f"{settings.learning_rate}). Lower learning_rate and train again; no model was made."
        )
    ckpt = run_dir / ("best.ckpt" if settings.checkpoint == "best" else "last.ckpt")
    if not ckpt.is_file():
        raise ModelError(f"{out_dir / 'train.log'}: nequip-train wrote no {ckpt.name}")

    _write_progress(out_dir, stage="packaging", max_epochs=settings.epochs, history=history)
    t0 = time.perf_counter()
    package = package_checkpoint(ckpt, out_dir / PACKAGE_NAME)
    package_seconds = time.perf_counter() - t0

    compiled: Path | None = None
    compile_seconds = 0.0
    if compile:
        _write_progress(out_dir, stage="compiling", max_epochs=settings.epochs, history=history)
        t0 = time.perf_counter()
        compiled = compile_model(package, out_dir / COMPILED_NAME, device=device, threads=threads)
        compile_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    validation = evaluate(package, val_frames, device=device, threads=threads)
    evaluate_seconds = time.perf_counter() - t0

    best_epoch = None
    if history:
        best = min(history, key=lambda h: h.get("val_forces_rmse", float("inf")))
        best_epoch = best["epoch"] if settings.checkpoint == "best" else history[-1]["epoch"]
    metrics: dict[str, Any] = {
        **{k: v for k, v in validation.items() if k != "n_frames"},
        "n_train": len(train_frames),
        "n_val": len(val_frames),
        "species": species,
        "stress_trained": stress_mode != "none",
        "epochs_run": history[-1]["epoch"] if history else 0,
        "deployed_epoch": best_epoch,
        "resumed": resume,
        "history": history,
        "wall_seconds": {
            "train": round(train_seconds, 2),
            "package": round(package_seconds, 2),
            "compile": round(compile_seconds, 2),
            "evaluate": round(evaluate_seconds, 2),
            "total": round(time.perf_counter() - started, 2),
        },
        "config": {
            "template": str(template),
            "settings": dataclasses.asdict(settings),
            "overrides": overrides,
            "init_from": str(package_from) if package_from else None,
            "isolated_atom_energies": isolated_atom_energies,
            "per_type_energy_shifts": shifts,
            "data": [str(p.resolve()) for p in paths],
            "device": device,
        },
        "versions": _versions(),
    }
    record = {
        "fingerprint": fingerprint,
        "package": package.name,
        "compiled": compiled.name if compiled else None,
        "compiled_device": device if compiled else None,
        "metrics": metrics,
    }
    _write_progress(out_dir, stage="done", max_epochs=settings.epochs, history=history)
    # written last: its presence marks the model complete
    atomic_write_json(out_dir / RECORD_NAME, record)
    return TrainedModel.from_record(out_dir)


def package_checkpoint(checkpoint: Path, out: Path) -> Path:
    """``nequip-package build`` a checkpoint into ``out`` (a ``.nequip.zip``), atomically."""
    out = Path(out)
    if not out.name.endswith(".nequip.zip"):
        raise ModelError(f"{out}: a packaged model must end in .nequip.zip")
    log = out.with_name("package.log")
    # the archive is named after its file, so the temporary file (in a temporary folder) has
    # the final name
    with _partial(out) as partial:
        command = [_tool("nequip-package"), "build", str(checkpoint), str(partial)]
        _run_logged(command, log, cwd=out.parent, what="nequip-package")
    return out


def compile_model(
    package: Path, out: Path, *, device: str = "auto", threads: int | None = None
) -> Path:
    """AOTInductor-compile a ``.nequip.zip`` for ASE on ``device``; returns ``out`` (.nequip.pt2).

    Takes 20-35 s on 2 CPU cores (gcc); the result runs only on the device it was built for.
    """
    package = Path(package)
    out = Path(out)
    if not package.is_file():
        raise ModelError(f"{package}: no such model package")
    if not out.name.endswith(".nequip.pt2"):
        raise ModelError(f"{out}: a compiled model must end in .nequip.pt2")
    device = resolve_device(device)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_name("compile.log")
    with _partial(out) as partial:
        command = [
            _tool("nequip-compile"),
            str(package),
            str(partial),
            *("--mode", "aotinductor", "--device", device, "--target", "ase"),
        ]
        _run_logged(command, log, cwd=out.parent, what="nequip-compile", threads=threads)
    return out


@contextlib.contextmanager
def _partial(out: Path) -> Iterator[Path]:
    """A path with ``out``'s name in a temporary folder beside it; moved onto ``out`` on success."""
    folder = Path(tempfile.mkdtemp(prefix=f".partial-{out.name}-", dir=out.parent))
    try:
        yield folder / out.name
        (folder / out.name).replace(out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


#: a validation force RMSE above this (eV/Å) or not finite: the training has diverged
DIVERGED_FORCE_RMSE = 1e6


def diverged_epoch(history: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The first epoch whose validation force error is NaN, infinite or absurd, if any."""
    for entry in history:
        value = entry.get("val_forces_rmse")
        if value is None:
            continue
        if not (isinstance(value, int | float) and abs(value) <= DIVERGED_FORCE_RMSE):
            return dict(entry)
    return None


def progress_callback(path: str) -> Any:
    """A Lightning callback (built by hydra from the template) that writes ``path`` each epoch.

    Its history is also saved in the checkpoints, so a resumed run continues the same history.
    Defined inside a function so that importing this module does not import lightning.
    """
    from lightning.pytorch.callbacks import Callback

    class TrainingProgress(Callback):
        def __init__(self, path: str) -> None:
            self.path = Path(path)
            self.history: list[dict[str, float]] = []
            self.epoch_started = time.perf_counter()

        @property
        def state_key(self) -> str:
            return "hillwalker.TrainingProgress"

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.epoch_started = time.perf_counter()

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            # after the epoch's validation metrics are in callback_metrics and before the
            # ModelCheckpoints (Lightning runs those last) save this epoch, with this history
            # (during fit, validation runs with stage "validate": ask for the fit itself)
            if trainer.sanity_checking or trainer.state.fn != "fit":
                return
            entry: dict[str, float] = {
                "epoch": int(trainer.current_epoch) + 1,
                "seconds": round(time.perf_counter() - self.epoch_started, 3),
            }
            for key, value in trainer.callback_metrics.items():
                if key.startswith("val0_epoch/"):
                    entry["val_" + key.split("/", 1)[1]] = float(value)
            optimizers = trainer.optimizers
            if optimizers:
                entry["lr"] = float(optimizers[0].param_groups[0]["lr"])
            self.history = [h for h in self.history if h["epoch"] < entry["epoch"]]
            self.history.append(entry)
            if diverged_epoch([entry]) is not None:
                # NaN (or runaway) weights stay so: stop now, train() reports it
                entry["diverged"] = True
                trainer.should_stop = True
            _write_progress(
                self.path.parent,
                stage="training",
                max_epochs=int(trainer.max_epochs),
                history=self.history,
                name=self.path.name,
            )

        def state_dict(self) -> dict[str, Any]:
            return {"history": list(self.history)}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            self.history = list(state_dict.get("history", []))

    return TrainingProgress(path)


# --------------------------------------------------------------------------------------------
# using a model


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or device == "cuda" or device.startswith("cuda:"):
        return device
    raise ModelError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")


def load_calculator(model: Path, *, device: str = "auto", threads: int | None = None) -> Any:
    """An ASE calculator for a model directory, a ``.nequip.zip`` or a ``.nequip.pt2``.

    A directory gives its compiled model when it was compiled for ``device``, else its package.
    ``threads`` sets torch's CPU threads for the whole process (None: leave them); measured on
    2 busy cores, 1 thread ran MIL-53 MD at 93 steps/s where 2 spinning threads ran 1.2.
    """
    _set_threads(threads)
    calc, _ = _load(Path(model), resolve_device(device))
    return calc


def model_species(model: Path) -> list[str]:
    """The chemical species a model was built for (its type names)."""
    path = Path(model)
    if path.is_dir():
        record = path / RECORD_NAME
        if record.is_file():
            species = TrainedModel.from_record(path).metrics.get("species")
            if species:
                return list(species)
        return model_species(_package_path(path))
    if path.name.endswith(".nequip.zip"):
        _check_file(path)
        try:
            from nequip.model.saved_models.package import ModelTypeNamesFromPackage

            return list(ModelTypeNamesFromPackage(str(path)))
        except Exception as exc:
            raise ModelError(f"{path}: not a readable NequIP package ({_short(exc)})") from exc
    _, species = _load(path, "cpu")
    return species


def evaluate(
    model: Path,
    frames: Sequence[Atoms],
    *,
    device: str = "auto",
    source: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Errors of ``model`` against labeled frames (frames with status "failed" are skipped).

    Returns exactly the keys of ``hillwalker evaluate --json``: energy RMSE per atom (meV/atom),
    force RMSE over all components (meV/Å), stress RMSE over the nine 3x3 components (GPa; None
    when no frame has a stress), and the force RMSE per element (meV/Å). ``source`` names the
    frames (their file) in error messages.
    """
    where = f"{source}: " if source else ""
    usable = [f for f in frames if f.info.get("status") != STATUS_FAILED]
    if not usable:
        raise ModelError(f"{where}no labeled frames to evaluate (empty dataset)")
    for i, atoms in enumerate(frames):
        got = labels(atoms)
        for key in ("energy", "forces"):
            if key not in got and atoms.info.get("status") != STATUS_FAILED:
                raise ModelError(f"{where}frame {i} has no {key}: evaluation needs both")
    path = Path(model)
    _set_threads(threads)
    calc, species = _load(path, resolve_device(device))
    missing = sorted(set(_species_of(usable)) - set(species))
    if missing:
        raise ModelError(
            f"{where}element(s) {', '.join(missing)} not in the model {path} "
            f"(model species: {' '.join(species)})"
        )

    energy_sq: list[float] = []
    force_sq: dict[str, list[np.ndarray]] = {}
    stress_sq: list[np.ndarray] = []
    for atoms in usable:
        ref = labels(atoms)
        probe = atoms.copy()
        probe.calc = calc
        energy = probe.get_potential_energy()
        forces = probe.get_forces()
        energy_sq.append(((energy - ref["energy"]) / len(atoms)) ** 2)
        diff = forces - np.asarray(ref["forces"])
        for symbol in set(atoms.get_chemical_symbols()):
            mask = np.array(atoms.get_chemical_symbols()) == symbol
            force_sq.setdefault(symbol, []).append((diff[mask] ** 2).ravel())
        if "stress" in ref and atoms.cell.rank == 3:
            ref_stress = _full_stress(np.asarray(ref["stress"]))
            if np.all(np.isfinite(ref_stress)):
                stress = _full_stress(probe.get_stress(voigt=True))
                stress_sq.append(((stress - ref_stress) ** 2).ravel())
    all_forces = np.concatenate([np.concatenate(v) for v in force_sq.values()])
    by_element = {
        s: 1000.0 * float(np.sqrt(np.mean(np.concatenate(force_sq[s]))))
        for s in sorted(force_sq, key=lambda s: atomic_numbers[s])
    }
    return {
        "n_frames": len(usable),
        "energy_rmse_mev_per_atom": 1000.0 * float(np.sqrt(np.mean(energy_sq))),
        "force_rmse_mev_per_ang": 1000.0 * float(np.sqrt(np.mean(all_forces))),
        "stress_rmse_gpa": (
            float(np.sqrt(np.mean(np.concatenate(stress_sq)))) / GPa if stress_sq else None
        ),
        "force_rmse_by_element": by_element,
    }


# --------------------------------------------------------------------------------------------
# helpers


def _read_template(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the NequIP template ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ModelError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(config, dict):
        raise ModelError(f"{path}: a NequIP template must be a YAML mapping")
    for key in ("run", "data", "trainer", "training_module"):
        if key not in config:
            raise ModelError(f"{path}: {key}: missing (a nequip config needs it)")
    for key in ("model_type_names", "train_file", "val_file", "per_type_energy_shifts"):
        if key not in config:
            raise ModelError(f"{path}: {key}: missing (hillwalker fills this key in)")
    return config


def _training_frames(paths: list[Path]) -> list[Atoms]:
    frames: list[Atoms] = []
    for path in paths:
        try:
            got = read_frames(path)
        except DatasetError as exc:
            raise ModelError(str(exc)) from exc
        for i, atoms in enumerate(got):
            if atoms.info.get("status") == STATUS_FAILED:
                continue  # failed single points never train a model
            have = labels(atoms)
            for key in ("energy", "forces"):
                if key not in have:
                    raise ModelError(f"{path}: frame {i} has no {key}: cannot train on it")
            frames.append(atoms)
    if not frames:
        raise ModelError(f"{', '.join(map(str, paths))}: no labeled frames (empty dataset)")
    if len(frames) < 2:
        raise ModelError(
            f"{', '.join(map(str, paths))}: only one labeled frame; training needs at least two "
            "(one is held out for validation)"
        )
    return frames


def _species_of(frames: Sequence[Atoms]) -> list[str]:
    symbols = {s for atoms in frames for s in atoms.get_chemical_symbols()}
    return sorted(symbols, key=lambda s: atomic_numbers[s])


def _stress_mode(frames: Sequence[Atoms]) -> str:
    with_stress = sum("stress" in labels(f) for f in frames)
    if with_stress == len(frames):
        return "all"
    return "none" if with_stress == 0 else "some"


def _with_nan_stress(atoms: Atoms) -> Atoms:
    got = labels(atoms)
    if "stress" in got:
        return atoms
    info = {k: v for k, v in atoms.info.items()}
    framed = label(atoms, got["energy"], got["forces"], np.full(6, np.nan))
    framed.info = info
    return framed


def _energy_shifts(
    frames: Sequence[Atoms],
    species: list[str],
    isolated: dict[str, float] | None,
    paths: list[Path],
) -> dict[str, float]:
    """Per-type energy shifts: the isolated-atom energies if given, else fitted to the data.

    The fit is least squares of total energies on element counts, regularised towards the
    mean energy per atom, so that a data set of one composition (every MIL-53 frame) gives
    that mean for every type instead of an arbitrary split.
    """
    if isolated is not None:
        missing = [s for s in species if s not in isolated]
        if missing:
            raise ModelError(
                f"isolated_atom_energies: no energy for element(s) {', '.join(missing)}"
            )
        return {s: float(isolated[s]) for s in species}
    counts = np.array(
        [[atoms.get_chemical_symbols().count(s) for s in species] for atoms in frames], float
    )
    energies = np.array([labels(atoms)["energy"] for atoms in frames], float)
    if not np.all(np.isfinite(energies)):
        raise ModelError(f"{', '.join(map(str, paths))}: non-finite energy in the data")
    mean = energies.sum() / counts.sum()
    residual = energies - mean * counts.sum(axis=1)
    gram = counts.T @ counts
    ridge = 1e-6 * np.trace(gram) / len(species)
    delta = np.linalg.solve(gram + ridge * np.eye(len(species)), counts.T @ residual)
    return {s: float(mean + d) for s, d in zip(species, delta, strict=True)}


def _split(frames: list[Atoms], settings: TrainSettings) -> tuple[list[Atoms], list[Atoms]]:
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(len(frames))
    n_val = min(len(frames) - 1, max(1, round(settings.validation_fraction * len(frames))))
    val = sorted(order[:n_val].tolist())
    train_idx = sorted(order[n_val:].tolist())
    return [frames[i] for i in train_idx], [frames[i] for i in val]


def _overrides(
    settings: TrainSettings,
    out_dir: Path,
    species: list[str],
    shifts: dict[str, float],
    stress_mode: str,
    package_from: Path | None,
    accelerator: str,
) -> list[str]:
    values = dataclasses.asdict(settings)
    values["accelerator"] = accelerator
    overrides = [f"{key}={_hydra_value(values[name])}" for name, key in TEMPLATE_KEYS.items()]
    overrides += [
        "model_type_names=[" + ",".join(_hydra_str(s) for s in species) + "]",
        f"train_file={_hydra_str(str(out_dir / 'data' / 'train.extxyz'))}",
        f"val_file={_hydra_str(str(out_dir / 'data' / 'val.extxyz'))}",
        "per_type_energy_shifts={"
        + ",".join(f"{s}:{_hydra_value(v)}" for s, v in shifts.items())
        + "}",
        f"progress_file={_hydra_str(str(out_dir / PROGRESS_NAME))}",
    ]
    if stress_mode == "some":
        overrides += [
            "++training_module.loss.ignore_nan={stress:true}",
            "++training_module.val_metrics.ignore_nan={stress:true}",
        ]
    if package_from is not None:
        # warm start: the previous generation's weights, type names and energy shifts
        overrides += [
            "~training_module.model",
            "+training_module.model={_target_:nequip.model.ModelFromPackage,"
            f"package_path:{_hydra_str(str(package_from))}}}",
        ]
    return overrides


def _without_stress(config: dict[str, Any], template: Path) -> list[str]:
    """Overrides that swap the template's stress loss and metrics for energy+forces ones.

    For frames without stress (molecules): nequip's EnergyForceLoss/Metrics reject stress keys.
    The metrics' coefficients are replaced whole, since hydra cannot delete a key whose value
    is null (``stress_rmse: null``).
    """
    module = config.get("training_module") or {}
    loss, metrics = module.get("loss") or {}, module.get("val_metrics") or {}
    if not isinstance(loss, dict) or not isinstance(metrics, dict):
        raise ModelError(f"{template}: training_module.loss/val_metrics: expected mappings")
    overrides = []
    if "Stress" in str(loss.get("_target_", "")):
        overrides.append("training_module.loss._target_=nequip.train.EnergyForceLoss")
    if isinstance(loss.get("coeffs"), dict) and loss["coeffs"].get("stress") is not None:
        overrides.append("~training_module.loss.coeffs.stress")
    if "Stress" in str(metrics.get("_target_", "")):
        overrides.append("training_module.val_metrics._target_=nequip.train.EnergyForceMetrics")
        if metrics.get("coeffs") is not None:
            overrides.append("~training_module.val_metrics.coeffs")
        overrides.append("++training_module.val_metrics.coeffs={forces_rmse:1.0}")
    return overrides


def _hydra_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return _hydra_str(str(value))


def _hydra_str(text: str) -> str:
    """A hydra override string literal (quoted, so paths with any characters survive)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


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
    record = _read_json(out_dir / RECORD_NAME)
    if record.get("fingerprint") != fingerprint:
        return None
    model = TrainedModel.from_record(out_dir)
    if not model.package.is_file() or (model.compiled is not None and not model.compiled.is_file()):
        return None
    return model


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_progress(
    directory: Path,
    *,
    stage: str,
    max_epochs: int,
    history: list[dict[str, float]] | None = None,
    name: str = PROGRESS_NAME,
) -> None:
    history = history or []
    last = history[-1] if history else {}
    force = last.get("val_forces_rmse")
    atomic_write_json(
        Path(directory) / name,
        {
            "stage": stage,
            "epoch": int(last.get("epoch", 0)),
            "max_epochs": max_epochs,
            "val_forces_rmse_mev_per_ang": None if force is None else 1000.0 * force,
            "updated": time.time(),
            "history": history,
        },
    )


def _tool(name: str) -> str:
    """A nequip command-line tool from this interpreter's environment (else from PATH)."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ModelError(f"{name} not found next to {sys.executable} or on PATH")
    return found


def _run_logged(
    command: list[str],
    log: Path,
    *,
    cwd: Path,
    what: str,
    append: bool = False,
    threads: int | None = None,
) -> None:
    """Run a tool with its output in ``log``; a ModelError with the log's last lines on failure."""
    env = dict(os.environ)
    if threads is not None:
        if threads < 1:
            raise ModelError(f"threads must be >= 1, not {threads}")
        env["OMP_NUM_THREADS"] = str(threads)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a" if append else "w") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # a killed worker takes its training with it
        )
        try:
            code = process.wait()
        except BaseException:
            # don't leave a training running behind an interrupted caller
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
    if code != 0:
        raise ModelError(f"{log}: {what} failed (exit {code}): {_last_error(log)}")


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error:" in line:
            return line[:400]
    return lines[-1][:400] if lines else "no output"


def _package_r_max(package: Path) -> float:
    try:
        from nequip.model.saved_models.load_utils import load_saved_model
        from nequip.nn import graph_model

        model = load_saved_model(str(package))
        return float(model.metadata[graph_model.R_MAX_KEY])
    except Exception as exc:
        raise ModelError(f"{package}: not a readable NequIP package ({_short(exc)})") from exc


def _package_path(model: Path) -> Path:
    """The .nequip.zip of a model directory or path."""
    path = Path(model).resolve()
    if path.is_dir():
        package = path / PACKAGE_NAME
        if not package.is_file():
            raise ModelError(f"{path}: no {PACKAGE_NAME} in this model directory")
        return package
    if not path.name.endswith(".nequip.zip"):
        raise ModelError(f"{path}: expected a model directory or a .nequip.zip package")
    _check_file(path)
    return path


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: empty model file")
    # packages and AOTInductor models are zip archives: a cheap check before torch loads them
    if path.name.endswith((".nequip.zip", ".nequip.pt2")) and not zipfile.is_zipfile(path):
        raise ModelError(f"{path}: not a readable NequIP model (not a zip archive)")


def _load(path: Path, device: str) -> tuple[Any, list[str]]:
    """(calculator, species) for a model directory, package or compiled model."""
    if path.is_dir():
        record = _read_json(path / RECORD_NAME)
        compiled = record.get("compiled")
        if compiled and record.get("compiled_device") == device:
            return _load(path / compiled, device)
        return _load(_package_path(path), device)
    _check_file(path)
    try:
        from nequip.integrations.ase import NequIPCalculator

        if path.name.endswith(".nequip.pt2"):
            calc = NequIPCalculator.from_compiled_model(
                str(path), device=device, chemical_species_to_atom_type_map=True
            )
        elif path.name.endswith(".nequip.zip"):
            # nequip's eager loader for packages (the public one takes compiled models only)
            calc = NequIPCalculator._from_saved_model(
                str(path), device=device, chemical_species_to_atom_type_map=True
            )
        else:
            raise ModelError(
                f"{path}: not a model: expected a directory, a .nequip.zip or a .nequip.pt2"
            )
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path}: not a readable NequIP model ({_short(exc)})") from exc
    # identity species -> type map (set above): the model's type names are chemical symbols
    species = list(calc.transforms[0].model_type_names)
    return calc, species


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise ModelError(f"threads must be >= 1, not {threads}")
    import torch

    torch.set_num_threads(threads)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _full_stress(stress: np.ndarray) -> np.ndarray:
    stress = np.asarray(stress, float)
    if stress.shape == (3, 3):
        return stress
    xx, yy, zz, yz, xz, xy = stress
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("nequip", "torch", "lightning")}
