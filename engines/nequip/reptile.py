"""Pretraining one NequIP model on datasets at several levels of theory: Reptile or joint.

Reptile (Nichol, Achiam & Schulman 2018; for potentials: Allen et al., npj Comput. Mater. 10,
2024) repeats an outer step: pick a level, take ``k`` optimiser steps on batches of that level
only (θ → θ_k), then move the shared weights part of the way, θ ← θ + ε(θ_k − θ), with ε
decaying linearly from ``epsilon`` towards ``epsilon_final``. ``joint`` is ordinary training on
all levels pooled: one optimiser step per outer step on a batch drawn from every level's frames.

One optimiser (the template's, e.g. Adam) is kept across outer steps, its state included, as in
Nichol et al.'s reference implementation (which restores only the model variables). So Reptile
with ``k = 1`` is exactly joint training with learning rate ε·η on batches that each hold one
level: θ_1 = θ + Δ(g, state), and every optimiser here makes Δ proportional to η while its state
update depends on the gradient only (``reptile_step`` vs ``joint_step``, tested to rounding).

Levels disagree on absolute energies (xTB vs DFT: hundreds of eV per atom). Each level's
per-element energy references are fitted (``multilevel.per_element_energies``); the model's
per-type energy shifts are those of ``reference_level`` (the first level by default), and every
other level's frames are trained on with E − Σ nₑ(μₑ(level) − shiftₑ), so one network learns what
is left. ``pretrain.json`` records every level's offsets: the package predicts the reference
level's energies; add a level's offsets (``OffsetCalculator``) for that level's.

Everything is nequip's own: the model, the data pipeline (the template's ``ASEDataModule`` and
transforms: type mapping, neighbour lists), the data statistics, the loss (the template's
``training_module.loss``) and the optimiser config are built from the template exactly as
``nequip-train`` builds them (hydra compose with the overrides ``train`` uses); the result is
written as a Lightning checkpoint of a ``nequip.train.NequIPLightningModule`` and packaged by
``nequip-package build``. The template's EMA module and learning-rate scheduler are not used
(Reptile's interpolation is the averaging; a plateau scheduler needs epochs).

Directory::

    config.yaml          the template used
    data/                level-<i>-{train,val}.extxyz (offset-corrected), train/val.extxyz pooled
    inputs.json          fingerprint of everything that defines the run (for resuming)
    state.pt             the resume checkpoint (weights, optimiser, outer step, history)
    progress.json        outer step, ε, per-level losses; updated as the run goes
    model.ckpt           Lightning checkpoint of the final weights (what is packaged)
    model.nequip.zip     the packaged model: ``train(init_from=...)``, ``load_calculator``
    pretrain.json        levels, frames, references, settings, history
    model.json           the model record, written last: its presence means complete
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ase import Atoms
from ase.data import atomic_numbers

from hillwalker.engines.dataset import label, labels, write_frames
from hillwalker.engines.files import atomic_open, atomic_write_json, atomic_write_text, file_digest
from hillwalker.engines.nequip.data import species_of, split
from hillwalker.engines.nequip.deploy import package_checkpoint, resolve_device
from hillwalker.engines.nequip.model_files import (
    PACKAGE_NAME,
    PROGRESS_NAME,
    RECORD_NAME,
    ModelError,
    read_json,
)
from hillwalker.engines.nequip.settings import TrainSettings, run_overrides
from hillwalker.engines.nequip.template import (
    default_template,
    read_template,
    without_stress,
)
from hillwalker.engines.nequip.threads import torch_threads

__all__ = [
    "METHODS",
    "PRETRAIN_RECORD",
    "Prepared",
    "PretrainError",
    "PretrainedModel",
    "Setup",
    "batch_of",
    "build",
    "epsilon_at",
    "joint_step",
    "optimizer_step",
    "prepare",
    "pretrain",
    "reptile_step",
]

logger = logging.getLogger(__name__)

METHODS = ("reptile", "joint")
PRETRAIN_RECORD = "pretrain.json"
STATE_NAME = "state.pt"
CHECKPOINT_NAME = "model.ckpt"
#: the training module written into the checkpoint: nequip's plain one (no EMA, no scheduler)
_MODULE_TARGET = "nequip.train.NequIPLightningModule"
_MODULE_KEYS = ("model", "optimizer", "loss", "val_metrics")


class PretrainError(ModelError):
    """A pretraining cannot run as asked; the message names the level, file or key."""


@dataclass
class PretrainedModel:
    """A finished pretraining: its directory, package and ``pretrain.json`` record."""

    directory: Path
    package: Path
    record: dict[str, Any]

    @property
    def levels(self) -> list[str]:
        return [level["name"] for level in self.record["levels"]]

    @classmethod
    def from_directory(cls, directory: Path) -> PretrainedModel:
        directory = Path(directory)
        record = read_json(directory / PRETRAIN_RECORD)
        if not record or not (directory / RECORD_NAME).is_file():
            raise PretrainError(f"{directory}: not a finished pretraining (no {RECORD_NAME})")
        return cls(directory, directory / PACKAGE_NAME, record)


# --------------------------------------------------------------------------------------------
# the steps (plain functions of a model, its loss, an optimiser and batches: tested directly)

Batch = dict[str, Any]
LossFn = Callable[[Batch], Any]


def optimizer_step(optimizer: Any, loss_fn: LossFn, batch: Batch) -> float:
    """One optimiser step on one batch; returns the batch's loss before the step."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(batch)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def reptile_step(
    parameters: Sequence[Any],
    optimizer: Any,
    loss_fn: LossFn,
    batches: Sequence[Batch],
    epsilon: float,
) -> list[float]:
    """One outer step of Reptile: ``len(batches)`` optimiser steps (θ → θ_k), then
    θ ← θ + ε(θ_k − θ) on every parameter. Returns the inner steps' losses."""
    import torch

    start = [p.detach().clone() for p in parameters]
    losses = [optimizer_step(optimizer, loss_fn, batch) for batch in batches]
    with torch.no_grad():
        for p, p0 in zip(parameters, start, strict=True):
            p.copy_(p0 + epsilon * (p - p0))
    return losses


def joint_step(optimizer: Any, loss_fn: LossFn, batch: Batch) -> float:
    """One step of joint training: one optimiser step on a batch of the pooled levels."""
    return optimizer_step(optimizer, loss_fn, batch)


def epsilon_at(step: int, outer_steps: int, epsilon: float, epsilon_final: float) -> float:
    """ε of outer step ``step`` (0-based): linear from ``epsilon`` towards ``epsilon_final``."""
    return epsilon + (epsilon_final - epsilon) * step / outer_steps


def batch_plan(
    seed: int, step: int, sizes: Sequence[int], k: int, batch_size: int, method: str
) -> tuple[int, list[list[int]]]:
    """(level index, k batches of frame indices) of one outer step: a function of (seed, step)
    only, so a resumed run draws what the uninterrupted one drew. Joint: the 'level' is the
    pooled set (index 0 of ``sizes``) and one batch."""
    rng = np.random.default_rng([seed, step])
    level = int(rng.integers(len(sizes))) if method == "reptile" else 0
    n = sizes[level]
    count = min(batch_size, n)
    steps = k if method == "reptile" else 1
    return level, [sorted(rng.choice(n, size=count, replace=False).tolist()) for _ in range(steps)]


# --------------------------------------------------------------------------------------------
# pretraining


@dataclass
class Level:
    """One level's frames as trained on (energies minus ``offsets``), split train/validation."""

    name: str
    index: int
    train: list[Atoms]
    val: list[Atoms]
    references: dict[str, float]
    offsets: dict[str, float]


def pretrain(
    datasets: Mapping[str, Sequence[Atoms]],
    out_dir: Path,
    *,
    method: str = "reptile",
    k: int = 10,
    epsilon: float = 0.5,
    epsilon_final: float | None = 0.0,
    outer_steps: int = 1000,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    template: Path | None = None,
    settings: TrainSettings | None = None,
    seed: int | None = None,
    reference_level: str | None = None,
    checkpoint_every: int = 50,
    device: str = "auto",
    threads: int | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> PretrainedModel:
    """Pretrain one NequIP model on ``datasets`` (level name → labeled frames) into ``out_dir``.

    ``method``: ``reptile`` (``k`` inner steps on one level, outer step size ε from ``epsilon``
    linearly towards ``epsilon_final``; None: constant) or ``joint`` (all levels pooled; k and ε
    unused). ``batch_size``, ``learning_rate``, ``seed``: None takes the template's (or
    ``settings``'). The architecture (cutoff, l_max, layers, features) is the template's.
    ``reference_level``: whose per-element energies the model's shifts are (default: the first
    level). A call on a directory whose run was interrupted resumes from its last checkpoint
    (every ``checkpoint_every`` outer steps) if the inputs are the same; a finished one is
    returned as it is. ``callback(progress)`` runs after every outer step. ``threads``: torch's
    CPU threads while it runs and nequip-package's (None: every core this process may use).
    """
    started = time.perf_counter()
    template = Path(template).resolve() if template is not None else default_template()
    settings = settings if settings is not None else TrainSettings.from_template(template)
    settings = dataclasses.replace(
        settings,
        batch_size=settings.batch_size if batch_size is None else batch_size,
        learning_rate=settings.learning_rate if learning_rate is None else learning_rate,
        seed=settings.seed if seed is None else seed,
    )
    final = epsilon if epsilon_final is None else epsilon_final
    _check_knobs(method, k, epsilon, final, outer_steps, checkpoint_every, settings)
    device = resolve_device(device)  # a bad device name is refused before anything is written
    prepared = prepare(
        datasets, out_dir, template=template, settings=settings, reference_level=reference_level
    )
    levels = prepared.levels
    out_dir = prepared.out_dir
    knobs = {
        "method": method,
        "k": k if method == "reptile" else 1,
        "epsilon": epsilon if method == "reptile" else 1.0,
        "epsilon_final": final if method == "reptile" else 1.0,
        "outer_steps": outer_steps,
        "batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        "seed": settings.seed,
        "reference_level": levels[0].name,
        "checkpoint_every": checkpoint_every,
        "device": device,
    }
    overrides = prepared.overrides
    fingerprint = _fingerprint(out_dir, levels, overrides, knobs)
    record = read_json(out_dir / RECORD_NAME)
    if record.get("fingerprint") == fingerprint and (out_dir / PACKAGE_NAME).is_file():
        return PretrainedModel.from_directory(out_dir)
    _clear_outputs(out_dir, fingerprint, overrides)

    with torch_threads(threads):
        history, seconds = _run(prepared, knobs, device, callback)
    t0 = time.perf_counter()
    package = package_checkpoint(out_dir / CHECKPOINT_NAME, out_dir / PACKAGE_NAME, threads=threads)
    seconds["package"] = round(time.perf_counter() - t0, 2)
    seconds["total"] = round(time.perf_counter() - started, 2)

    pretrain_record = _write_records(prepared, knobs, fingerprint, package, history, seconds)
    return PretrainedModel(out_dir, package, pretrain_record)


def _clear_outputs(out_dir: Path, fingerprint: str, overrides: list[str]) -> None:
    """Remove the outputs of an earlier run (its resume state too if its inputs differ), then
    record the inputs of this one."""
    for stale in (RECORD_NAME, PRETRAIN_RECORD, CHECKPOINT_NAME, PACKAGE_NAME):
        (out_dir / stale).unlink(missing_ok=True)
    previous = read_json(out_dir / "inputs.json").get("fingerprint")
    if previous != fingerprint:
        (out_dir / STATE_NAME).unlink(missing_ok=True)  # different inputs: never mix runs
    atomic_write_json(out_dir / "inputs.json", {"fingerprint": fingerprint, "overrides": overrides})


def _write_records(
    prepared: Prepared,
    knobs: dict[str, Any],
    fingerprint: str,
    package: Path,
    history: list[dict[str, Any]],
    seconds: dict[str, float],
) -> dict[str, Any]:
    """``pretrain.json`` (levels, references, settings, history), then ``model.json`` last (its
    presence marks the model complete); returns the pretrain record."""
    out_dir, levels, shifts, stress = (
        prepared.out_dir,
        prepared.levels,
        prepared.shifts,
        prepared.stress,
    )
    template, settings, device = prepared.template, prepared.settings, knobs["device"]
    species = list(shifts)  # in atomic-number order, as the model's types
    pretrain_record = {
        **knobs,
        "levels": [
            {
                "name": level.name,
                "n_train": len(level.train),
                "n_val": len(level.val),
                "species": species_of(level.train + level.val),
                "references": level.references,
                "offsets": level.offsets,
            }
            for level in levels
        ],
        "per_type_energy_shifts": shifts,
        "stress_trained": stress,
        "template": str(template),
        "settings": dataclasses.asdict(settings),
        "history": history,
        "wall_seconds": seconds,
        "versions": _versions(),
    }
    atomic_write_json(out_dir / PRETRAIN_RECORD, pretrain_record)
    last = history[-1] if history else {}
    model_record = {
        "fingerprint": fingerprint,
        "package": package.name,
        "compiled": None,
        "compiled_device": None,
        "metrics": {
            "species": species,
            "stress_trained": stress,
            "pretraining": PRETRAIN_RECORD,
            "validation": last.get("val"),
            "config": {"template": str(template), "device": device},
        },
    }
    # written last: its presence marks the model complete
    atomic_write_json(out_dir / RECORD_NAME, model_record)
    return pretrain_record


@dataclass
class Prepared:
    """A pretraining's inputs checked and written into its directory."""

    out_dir: Path
    template: Path
    settings: TrainSettings
    levels: list[Level]  # the reference level first
    shifts: dict[str, float]  # the model's per-type energy shifts (the reference level's)
    stress: bool  # every frame has a stress: stress is trained
    overrides: list[str]  # hydra overrides of config.yaml

    @property
    def names(self) -> list[str]:
        return [level.name for level in self.levels]


def prepare(
    datasets: Mapping[str, Sequence[Atoms]],
    out_dir: Path,
    *,
    template: Path | None = None,
    settings: TrainSettings | None = None,
    reference_level: str | None = None,
) -> Prepared:
    """Check the levels (nothing is written when they are refused), then write config.yaml and
    the offset-corrected data into ``out_dir``."""
    template = Path(template).resolve() if template is not None else default_template()
    settings = settings if settings is not None else TrainSettings.from_template(template)
    settings.check()
    levels, shifts, stress = _levels(datasets, reference_level, settings)
    out_dir = Path(out_dir).resolve()
    overrides = _write_inputs(out_dir, template, settings, levels, shifts, stress)
    return Prepared(out_dir, template, settings, levels, shifts, stress, overrides)


def _check_knobs(
    method: str,
    k: int,
    epsilon: float,
    epsilon_final: float,
    outer_steps: int,
    checkpoint_every: int,
    settings: TrainSettings,
) -> None:
    problems = []
    if method not in METHODS:
        problems.append(f"method {method!r}: one of {', '.join(METHODS)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        problems.append(f"k (inner steps) must be an integer >= 1, not {k!r}")
    if not (isinstance(epsilon, (int, float)) and 0.0 < epsilon <= 1.0):
        problems.append(f"epsilon (outer step size) must be in (0, 1], not {epsilon!r}")
    if not (isinstance(epsilon_final, (int, float)) and 0.0 <= epsilon_final <= 1.0):
        problems.append(f"epsilon_final must be in [0, 1], not {epsilon_final!r}")
    if outer_steps < 1:
        problems.append(f"outer_steps must be >= 1, not {outer_steps}")
    if checkpoint_every < 1:
        problems.append(f"checkpoint_every must be >= 1, not {checkpoint_every}")
    if settings.batch_size < 1:
        problems.append(f"batch_size must be >= 1, not {settings.batch_size}")
    if not settings.learning_rate > 0:
        problems.append(f"learning_rate must be > 0, not {settings.learning_rate}")
    if problems:
        raise PretrainError("pretraining: " + "; ".join(problems))


def _levels(
    datasets: Mapping[str, Sequence[Atoms]],
    reference_level: str | None,
    settings: TrainSettings,
) -> tuple[list[Level], dict[str, float], bool]:
    """The levels (the reference level first), the model's per-type shifts, and whether every
    frame has a stress (then stress is trained)."""
    from hillwalker.engines.multilevel import per_element_energies

    names = list(datasets)
    if len(names) < 2:
        found = ", ".join(names) or "none"
        raise PretrainError(
            f"pretraining needs datasets at two or more levels of theory (found: {found}); "
            "for one level, train a model (hillwalker train)"
        )
    for name in names:
        frames = datasets[name]
        if not name or not str(name).strip():
            raise PretrainError("a dataset without a level name (an empty key)")
        if len(frames) < 2:
            raise PretrainError(
                f"level {name}: {len(frames)} frame(s); a level needs at least two "
                "(one is held out for validation)"
            )
        for i, atoms in enumerate(frames):
            got = labels(atoms)
            tag = atoms.info.get("level")
            if tag is not None and str(tag) != name:
                raise PretrainError(f"level {name}: frame {i} says level={tag}")
            if "energy" not in got or "forces" not in got:
                raise PretrainError(
                    f"level {name}: frame {i} has no {'energy' if 'energy' not in got else 'forces'}"
                    " label (pretraining needs energies and forces)"
                )
    elements = {
        name: {s for f in datasets[name] for s in f.get_chemical_symbols()} for name in names
    }
    for name in names:
        others = set().union(*(elements[o] for o in names if o != name))
        if not elements[name] & others:
            raise PretrainError(
                f"level {name}: no element in common with the other levels "
                f"({' '.join(sorted(elements[name]))} vs {' '.join(sorted(others))}): one "
                "network cannot share anything between them"
            )
    reference = names[0] if reference_level is None else reference_level
    if reference not in datasets:
        raise PretrainError(
            f"reference level {reference!r}: no such level (levels: {', '.join(names)})"
        )
    order = [reference, *(n for n in names if n != reference)]
    references = {name: per_element_energies(list(datasets[name])) for name in order}
    shifts: dict[str, float] = {}
    for name in order:  # the reference level's, then the first level that has the element
        for symbol, energy in references[name].items():
            shifts.setdefault(symbol, energy)
    shifts = {s: shifts[s] for s in sorted(shifts, key=lambda s: atomic_numbers[s])}
    stress = all("stress" in labels(f) for name in names for f in datasets[name])
    levels = []
    for index, name in enumerate(order):
        offsets = {s: references[name][s] - shifts[s] for s in references[name]}
        frames = [_shifted(f, offsets, name, stress) for f in datasets[name]]
        train, val = split(frames, settings.validation_fraction, settings.validation_seed)
        levels.append(Level(name, index, train, val, references[name], offsets))
    return levels, shifts, stress


def _shifted(frame: Atoms, offsets: dict[str, float], level: str, stress: bool) -> Atoms:
    """The frame with its energy minus its level's offsets (stress dropped unless trained)."""
    got = labels(frame)
    shift = sum(offsets[s] for s in frame.get_chemical_symbols())
    atoms = frame.copy()
    atoms.calc = None
    atoms.info = {"level": level}
    return label(atoms, got["energy"] - shift, got["forces"], got.get("stress") if stress else None)


def _write_inputs(
    out_dir: Path,
    template: Path,
    settings: TrainSettings,
    levels: list[Level],
    shifts: dict[str, float],
    stress: bool,
) -> list[str]:
    """Write config.yaml and the data files; the hydra overrides that make the config."""
    config = read_template(template)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", template.read_text())
    data = out_dir / "data"
    for level in levels:
        write_frames(data / f"level-{level.index}-train.extxyz", level.train)
        write_frames(data / f"level-{level.index}-val.extxyz", level.val)
    write_frames(data / "train.extxyz", [f for level in levels for f in level.train])
    write_frames(data / "val.extxyz", [f for level in levels for f in level.val])
    # no Lightning trainer runs: the accelerator is unused, the device is set by hand
    overrides = run_overrides(settings, "cpu", list(shifts), data, shifts, out_dir / PROGRESS_NAME)
    if not stress:
        overrides += without_stress(config, template)
    return overrides


def _fingerprint(
    out_dir: Path, levels: list[Level], overrides: list[str], knobs: dict[str, Any]
) -> str:
    digest = hashlib.sha256()
    digest.update((out_dir / "config.yaml").read_bytes())
    for level in levels:
        digest.update(level.name.encode() + b"\0")
        for part in ("train", "val"):
            digest.update(
                file_digest(out_dir / "data" / f"level-{level.index}-{part}.extxyz").encode()
            )
    digest.update("\n".join(overrides).encode())
    digest.update(yaml.safe_dump(knobs, sort_keys=True).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# the run: nequip's module, data and loss, built from the template


@dataclass
class Setup:
    """What the outer loop works on, all built by nequip from the composed template."""

    module: Any  # nequip.train.NequIPLightningModule
    optimizer: Any  # the template's training_module.optimizer
    parameters: list[Any]  # the model's trainable parameters: what Reptile interpolates
    loss: LossFn  # the template's training_module.loss on one batch
    hyper_parameters: dict[str, Any]  # the module's init arguments (for its checkpoint)
    train: list[list[Batch]]  # per level: its training frames as AtomicDataDicts
    val: list[list[Batch]]


def build(prepared: Prepared, device: str = "cpu") -> Setup:
    """nequip's training module, optimiser, loss and per-level data, from the prepared
    directory's config.yaml and overrides, the way nequip-train builds them."""
    from hydra.utils import instantiate
    from nequip.train import NequIPLightningModule
    from nequip.utils import get_current_code_versions
    from nequip.utils.global_state import get_latest_global_state, set_global_state
    from omegaconf import OmegaConf

    set_global_state()  # nequip's float64 data and seed state, as nequip-train sets them
    out_dir = prepared.out_dir
    config = _compose(out_dir, prepared.overrides)
    data_config = OmegaConf.to_container(config.data, resolve=True)
    if not isinstance(data_config, dict):
        raise PretrainError(f"{out_dir / 'config.yaml'}: data: expected a mapping")
    pooled = instantiate(data_config, _recursive_=False)
    stats = pooled.get_statistics(dataset="train")
    raw = OmegaConf.to_container(config.training_module, resolve=False)
    if not isinstance(raw, dict):
        raise PretrainError(f"{out_dir / 'config.yaml'}: training_module: expected a mapping")
    raw = _with_statistics(raw, stats, out_dir)
    full = OmegaConf.to_container(config, resolve=False)
    assert isinstance(full, dict)
    full["training_module"] = raw
    resolved = OmegaConf.to_container(OmegaConf.create(full).training_module, resolve=True)
    assert isinstance(resolved, dict)
    for key in ("model", "loss", "optimizer"):
        if not resolved.get(key):
            raise PretrainError(f"{out_dir / 'config.yaml'}: training_module.{key}: missing")
    module_config = {"_target_": _MODULE_TARGET, **{k: resolved.get(k) for k in _MODULE_KEYS}}
    info_dict = {
        "versions": get_current_code_versions(verbose=False),
        "data": data_config,
        "global_options": get_latest_global_state(),
        "runs": ["train"],
        "training_module": module_config,
    }
    hyper_parameters = {
        **{k: v for k, v in module_config.items() if k != "_target_"},
        "num_datasets": {"train": 1, "val": 1, "test": 0, "predict": 0},
        "info_dict": info_dict,
    }
    module = NequIPLightningModule(**copy.deepcopy(hyper_parameters))
    module.to(device)
    optimizer = module.configure_optimizers()
    if isinstance(optimizer, dict):  # a scheduler came back too (not used here)
        optimizer = optimizer["optimizer"]

    train, val = [], []
    for index, _ in enumerate(prepared.levels):
        level_config = copy.deepcopy(data_config)
        level_config["train_file_path"] = str(out_dir / "data" / f"level-{index}-train.extxyz")
        level_config["val_file_path"] = str(out_dir / "data" / f"level-{index}-val.extxyz")
        level_module = instantiate(level_config, _recursive_=False)
        level_module.setup("fit")
        try:
            train.append(_items(level_module.train_dataset[0]))
            val.append(_items(level_module.val_dataset[0]))
        finally:
            level_module.teardown("fit")
    parameters = [p for p in module.model.parameters() if p.requires_grad]
    loss = loss_function(module)
    return Setup(module, optimizer, parameters, loss, hyper_parameters, train, val)


def _compose(out_dir: Path, overrides: list[str]) -> Any:
    """The template with the overrides applied by hydra, as nequip-train would see it."""
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(out_dir), version_base=None):
            return compose(config_name="config", overrides=overrides)
    except Exception as exc:
        raise PretrainError(
            f"{out_dir / 'config.yaml'}: the template does not compose ({exc})"
        ) from exc


_STAT = re.compile(r"^\$\{training_data_stats:([A-Za-z0-9_]+)\}$")


def _with_statistics(value: Any, stats: dict[str, Any], out_dir: Path) -> Any:
    """``value`` with every ``${training_data_stats:NAME}`` replaced by the statistic (what
    nequip-train's resolver does, without registering a process-wide resolver)."""
    if isinstance(value, dict):
        return {k: _with_statistics(v, stats, out_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_statistics(v, stats, out_dir) for v in value]
    if isinstance(value, str):
        match = _STAT.match(value.strip())
        if match:
            name = match.group(1)
            if stats.get(name) is None:
                raise PretrainError(
                    f"{out_dir / 'config.yaml'}: training_data_stats:{name}: not computed by "
                    "data.stats_manager"
                )
            stat = stats[name]
            return stat.tolist() if hasattr(stat, "tolist") else stat
    return value


def _items(dataset: Any) -> list[Batch]:
    """A nequip dataset's frames, transformed (types, neighbour lists) once."""
    return list(dataset[list(range(len(dataset)))])


def batch_of(items: Sequence[Batch], indices: Sequence[int], device: str) -> Batch:
    from nequip.data import AtomicDataDict

    batch = AtomicDataDict.batched_from_list([items[i] for i in indices])
    return AtomicDataDict.to_(batch, device)


def loss_function(module: Any) -> LossFn:
    """The template's loss (nequip's MetricsManager) on one batch, as nequip's training_step
    computes it: the weighted sum of its metrics."""

    def loss(batch: Batch) -> Any:
        target = module.process_target(batch, 0)
        output = module(batch)
        value = module.loss(output, target)["weighted_sum"]
        module.loss.reset()  # no accumulation across batches: each call is one batch
        return value

    return loss


def evaluate_levels(
    module: Any, val: Sequence[Sequence[Batch]], names: Sequence[str], batch_size: int, device: str
) -> dict[str, dict[str, float]]:
    """Each level's validation loss and metrics (the template's val_metrics), nequip's
    accumulation over the whole set."""
    results: dict[str, dict[str, float]] = {}
    metrics = module.val_metrics[0]
    for name, items in zip(names, val, strict=True):
        module.loss.reset()
        metrics.reset()
        for start in range(0, len(items), batch_size):
            batch = batch_of(items, range(start, min(start + batch_size, len(items))), device)
            target = module.process_target(batch, 0)
            output = module(batch)
            module.loss(output, target)
            metrics(output, target)
        got = {"loss": float(module.loss.compute()["weighted_sum"])}
        got.update({k: float(v) for k, v in metrics.compute().items() if k != "weighted_sum"})
        module.loss.reset()
        metrics.reset()
        results[name] = got
    return results


def _run(
    prepared: Prepared,
    knobs: dict[str, Any],
    device: str,
    callback: Callable[[dict[str, Any]], None] | None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The outer loop, resumed from ``state.pt`` when there is one; writes ``model.ckpt``."""
    t0 = time.perf_counter()
    out_dir, names = prepared.out_dir, prepared.names
    setup = build(prepared, device)
    module, optimizer = setup.module, setup.optimizer
    parameters, loss_fn = setup.parameters, setup.loss
    method, outer_steps = knobs["method"], knobs["outer_steps"]
    pools = setup.train if method == "reptile" else [[x for items in setup.train for x in items]]
    sizes = [len(items) for items in pools]
    build_seconds = time.perf_counter() - t0

    step, history, train_loss = 0, [], {}
    state = _read_state(out_dir / STATE_NAME)
    if state is not None:
        module.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, history, train_loss = state["step"], state["history"], state["train_loss"]
        logger.info("%s: resuming at outer step %d of %d", out_dir, step, outer_steps)
    _write_progress(out_dir, "training", knobs, step, history, train_loss)

    t_loop = time.perf_counter()
    module.train()
    while step < outer_steps:
        eps = epsilon_at(step, outer_steps, knobs["epsilon"], knobs["epsilon_final"])
        level, indices = batch_plan(
            knobs["seed"], step, sizes, knobs["k"], knobs["batch_size"], method
        )
        batches = [batch_of(pools[level], idx, device) for idx in indices]
        if method == "reptile":
            losses = reptile_step(parameters, optimizer, loss_fn, batches, eps)
            train_loss[names[level]] = float(np.mean(losses))
        else:
            train_loss["pooled"] = joint_step(optimizer, loss_fn, batches[0])
        if not all(math.isfinite(v) for v in train_loss.values()):
            raise PretrainError(
                f"{out_dir}: the loss diverged at outer step {step + 1} ({train_loss}); "
                "lower the learning rate or epsilon"
            )
        step += 1
        entry: dict[str, Any] = {
            "outer_step": step,
            "level": names[level] if method == "reptile" else "pooled",
            "epsilon": eps,
            "train_loss": dict(train_loss),
        }
        if step % knobs["checkpoint_every"] == 0 or step == outer_steps:
            entry["val"] = evaluate_levels(module, setup.val, names, knobs["batch_size"], device)
            history.append(entry)
            _log(out_dir, entry, outer_steps)
            _write_state(out_dir / STATE_NAME, module, optimizer, step, history, train_loss)
            _write_progress(out_dir, "training", knobs, step, history, train_loss)
        if callback is not None:
            callback(entry)
    loop_seconds = time.perf_counter() - t_loop
    _write_progress(out_dir, "packaging", knobs, step, history, train_loss)
    _write_lightning_checkpoint(out_dir / CHECKPOINT_NAME, module, setup.hyper_parameters, step)
    return history, {"build": round(build_seconds, 2), "outer_loop": round(loop_seconds, 2)}


def _log(out_dir: Path, entry: dict[str, Any], outer_steps: int) -> None:
    val = entry.get("val") or {}
    parts = [f"{name} {v['loss']:.4g}" for name, v in val.items()]
    logger.info(
        "%s: outer step %d/%d, epsilon %.3g, validation loss per level: %s",
        out_dir.name, entry["outer_step"], outer_steps, entry["epsilon"], ", ".join(parts),
    )  # fmt: skip


def _write_progress(
    out_dir: Path,
    stage: str,
    knobs: dict[str, Any],
    step: int,
    history: list[dict[str, Any]],
    train_loss: dict[str, float],
) -> None:
    atomic_write_json(
        out_dir / PROGRESS_NAME,
        {
            "stage": stage,
            "method": knobs["method"],
            "outer_step": step,
            "outer_steps": knobs["outer_steps"],
            "train_loss": train_loss,
            "val": history[-1]["val"] if history else None,
            "updated": time.time(),
            "history": history,
        },
    )


def _write_state(
    path: Path,
    module: Any,
    optimizer: Any,
    step: int,
    history: list[dict[str, Any]],
    train_loss: dict[str, float],
) -> None:
    import torch

    state = {
        "model": _to_cpu(dict(module.model.state_dict())),
        "optimizer": _to_cpu(optimizer.state_dict()),
        "step": step,
        "history": history,
        "train_loss": dict(train_loss),
    }
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)


def _read_state(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # unreadable: start over rather than fail
        logger.warning("%s: unreadable resume checkpoint, starting over", path)
        return None
    return state if isinstance(state, dict) and "model" in state else None


def _to_cpu(value: Any) -> Any:
    if hasattr(value, "detach"):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def _write_lightning_checkpoint(
    path: Path, module: Any, hyper_parameters: dict[str, Any], step: int
) -> None:
    """A checkpoint ``NequIPLightningModule.load_from_checkpoint`` (hence ``nequip-package
    build`` and ``ModelFromCheckpoint``) reads: the module's state and its init arguments."""
    import lightning
    import torch

    checkpoint = {
        "epoch": 0,
        "global_step": step,
        "pytorch-lightning_version": lightning.__version__,
        "state_dict": _to_cpu(dict(module.state_dict())),
        "hyper_parameters": hyper_parameters,
        "loops": {},
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
    }
    with atomic_open(path, "wb") as handle:
        torch.save(checkpoint, handle)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("nequip", "torch", "lightning")}
