"""Bodies of the ``hillwalker train`` and ``hillwalker evaluate`` commands.

The NequIP work is in :mod:`hillwalker.engines.nequip`; this module reads the user's files,
applies the command-line options to the template's settings and formats the results. Errors are
:class:`~hillwalker.engines.nequip.ModelError` or :class:`~hillwalker.engines.dataset.DatasetError`,
each one line naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.data import atomic_numbers

from hillwalker.engines.dataset import read_frames
from hillwalker.engines.multilevel import read_levels
from hillwalker.engines.nequip import (
    ModelError,
    TrainedModel,
    TrainSettings,
    default_template,
    evaluate,
    train,
)
from hillwalker.engines.nequip.data import species_of, training_frames
from hillwalker.engines.nequip.surgery import TRANSFERRED_NAME, transfer_species
from hillwalker.engines.potentials import (
    Potential,
    evaluate_potential,
    is_potential,
    train_potential,
)


def train_model(
    data: Sequence[Path],
    out_dir: Path,
    *,
    config: Path | None = None,
    init: Path | None = None,
    epochs: int | None = None,
    device: str = "auto",
    compile: bool = True,
    species_map: Mapping[str, str] | None = None,
    refit_references: bool = False,
    frozen_layers: int = 0,
) -> TrainedModel:
    """Train a model on the frames in ``data`` with the template ``config`` (default: MIL-53).

    ``refit_references`` (with ``init``): every element's per-atom energy shift of the start
    model re-fitted to the data first (fine-tuning to another level of theory).
    ``frozen_layers``: the type embedding and the first this many interaction layers keep their
    start weights (transfer learning).

    ``species_map`` (new element -> source element, with ``init``): start from ``init`` with
    each new element's weights copied from its source (``OUT/transferred.nequip.zip``, see
    docs/element-transfer.md); a source element found in the data stays a type beside its new
    element, any other is replaced; the new elements' energy shifts are fitted to the data."""
    template, settings = _template_settings(config, epochs, frozen_layers)
    if frozen_layers and init is None:
        raise ModelError("--freeze-layers needs --init (the trained model whose layers it keeps)")
    if species_map or refit_references:
        if init is None:
            what = "--species-map" if species_map else "--refit-references"
            raise ModelError(f"{what} needs --init (the trained model to start from)")
        init = transferred_start(
            init,
            out_dir,
            species_map or {},
            training_frames(list(data)),
            refit_all=refit_references,
        )
    return train(
        list(data),
        out_dir,
        template=template,
        settings=settings,
        init_from=init,
        device=device,
        compile=compile,
    )


def transferred_start(
    init: Path,
    out_dir: Path,
    species_map: Mapping[str, str],
    frames: Sequence[Atoms],
    threads: int | None = None,
    refit_all: bool = False,
) -> Path:
    """The package a fine-tuning starts from (``OUT_DIR/transferred.nequip.zip``): ``init``
    with each new element of ``species_map`` copied from its source (a source element found in
    ``frames`` stays a type beside its new element, any other is replaced) and the new
    elements' energy shifts fitted to ``frames``; ``refit_all``: every element's shift fitted
    (a new level of theory, e.g. a model pretrained at others)."""
    present = set(species_of(frames))
    transfer = transfer_species(
        Path(init),
        Path(out_dir) / TRANSFERRED_NAME,
        species_map,
        keep=sorted({old for old in species_map.values() if old in present}),
        fit_to=frames,
        refit_all=refit_all,
        threads=threads,
    )
    return transfer.package


def train_levels(
    data: Sequence[Path],
    out_dir: Path,
    *,
    method: str,
    target: str,
    baseline: str | None = None,
    intermediates: Sequence[str] = (),
    config: Path | None = None,
    init: Path | None = None,
    epochs: int | None = None,
    device: str = "auto",
    compile: bool = True,
) -> Potential:
    """``hillwalker train --method``: a potential from frames labeled at several levels.

    ``target``, ``baseline`` and ``intermediates`` (hierarchical: the levels between the two,
    cheapest first) are level names (``info["level"]`` of the frames) or level files (their
    name is the file's stem); ``delta`` needs the baseline's file."""
    template, settings = _template_settings(config, epochs)
    levels = read_levels(data)
    baseline_name, baseline_file = _level_name(baseline)
    return train_potential(
        levels, out_dir, method=method, target=_level_name(target)[0], baseline=baseline_name,
        baseline_level=baseline_file, template=template,
        intermediates=[str(_level_name(name)[0]) for name in intermediates],
        settings=settings, init_from=init,
        device=device, compile=compile,
    )  # fmt: skip


def _template_settings(
    config: Path | None, epochs: int | None, frozen_layers: int = 0
) -> tuple[Path, TrainSettings]:
    """The NequIP template (default: MIL-53) and its settings with ``--epochs`` (and
    ``--freeze-layers``) applied."""
    template = Path(config) if config is not None else default_template()
    if not template.is_file():
        raise ModelError(f"{template}: no such NequIP config file")
    changes: dict[str, Any] = {}
    if epochs is not None:
        if epochs < 1:
            raise ModelError(f"--epochs: must be at least 1, not {epochs}")
        changes["epochs"] = epochs
    if frozen_layers:
        if frozen_layers < 0:
            raise ModelError(f"--freeze-layers: must be at least 0, not {frozen_layers}")
        changes["frozen_layers"] = frozen_layers
    return template, TrainSettings.from_template(template, **changes)


def _level_name(level: str | None) -> tuple[str | None, Path | None]:
    """(name, file) of a level given as a name or as a level file (name: the file's stem)."""
    if level is None:
        return None, None
    path = Path(level)
    if path.suffix.lower() in (".yaml", ".yml", ".inp"):
        if not path.is_file():
            raise ModelError(f"{path}: no such level file")
        return path.stem, path
    return level, None


def evaluate_model(model: Path, frames_path: Path, *, device: str = "auto") -> dict[str, Any]:
    """Errors of a model (directory, .nequip.zip or .nequip.pt2) on the frames of a file; for
    a potential of several parts (``train --method``), on its target level's frames, with each
    learned part's errors under ``parts``."""
    if not Path(model).exists():
        raise ModelError(f"{model}: no such model file or directory")
    if is_potential(model):
        return evaluate_potential(
            model, read_levels([frames_path]), device=device, source=str(frames_path)
        )
    frames = read_frames(frames_path)
    return evaluate(model, frames, device=device, source=str(frames_path))


def describe_training(model: TrainedModel) -> str:
    m = model.metrics
    history = m.get("history") or []
    lines = [f"model: {model.directory}"]
    lines.append(f"  package   {model.package.name}")
    if model.compiled is not None:
        lines.append(f"  compiled  {model.compiled.name} ({m['config']['device']})")
    lines.append(
        f"  frames    {m['n_train']} train, {m['n_val']} validation; species "
        f"{' '.join(m['species'])}; stress {'yes' if m['stress_trained'] else 'no'}"
    )
    if history:
        first, last = history[0], history[-1]
        lines.append(
            f"  epochs    {m['epochs_run']} (deployed: {m['deployed_epoch']}); validation force "
            f"RMSE {1000 * first['val_forces_rmse']:.1f} -> {1000 * last['val_forces_rmse']:.1f} "
            "meV/Å"
        )
    lines.append("  validation of the deployed model:")
    lines.extend("  " + line for line in describe_errors(m).splitlines())
    lines.append(f"  wall time {m['wall_seconds']['total']:.1f} s")
    return "\n".join(lines)


def _force_rmse(result: dict[str, Any]) -> str:
    force = result.get("force_rmse_mev_per_ang")
    if force is None:
        return "n/a (no force labels: energy-only frames)"
    n = result.get("n_frames", result.get("n_val"))  # a model's record: its validation frames
    with_forces = result.get("n_frames_with_forces", n)
    return f"{force:.1f} meV/Å" + (f" ({with_forces} of {n} frames)" if with_forces != n else "")


def describe_potential(potential: Potential) -> str:
    between = "".join(f" < {name}" for name in potential.intermediates)
    lines = [f"potential: {potential.directory} ({potential.method}; target {potential.target}"
             + (f", baseline {potential.baseline}{between})" if potential.baseline else ")")]  # fmt: skip
    for part in potential.parts:
        model = potential.models.get(part["name"])
        if part["kind"] == "level":
            lines.append(f"  part {part['name']}: level file {part['path']} (in-process)")
        elif part["kind"] == "offsets":
            refs = ", ".join(f"{s} {e:+.4f} eV" for s, e in part["energies"].items())
            lines.append(f"  part {part['name']}: per-element energy references {refs}")
        elif model is not None:
            lines.append(f"  part {part['name']}:")
            lines.extend("  " + line for line in describe_training(model).splitlines())
    return "\n".join(lines)


def describe_errors(result: dict[str, Any]) -> str:
    if "total" in result:  # a potential of several parts
        lines = [f"  {result['method']} potential vs {result['target']}:"]
        lines += ["  " + line for line in describe_errors(result["total"]).splitlines()]
        for name, errors in result["parts"].items():
            lines.append(f"  part {name} vs its own labels:")
            lines += ["  " + line for line in describe_errors(errors).splitlines()]
        return "\n".join(lines)
    stress = result.get("stress_rmse_gpa")
    lines = []
    if "n_frames" in result:
        lines.append(f"  frames           {result['n_frames']}")
    lines += [
        f"  energy RMSE      {result['energy_rmse_mev_per_atom']:.2f} meV/atom",
        f"  force RMSE       {_force_rmse(result)}",
        f"  stress RMSE      {'n/a (no stress labels)' if stress is None else f'{stress:.3f} GPa'}",
    ]
    by_element = result["force_rmse_by_element"]
    for element in sorted(by_element, key=lambda s: atomic_numbers.get(s, 0)):
        lines.append(f"    force RMSE {element:<3}  {by_element[element]:.1f} meV/Å")
    for material, errors in result.get("by_material", {}).items():
        lines.append(
            f"  material {material}: {errors['n_frames']} frames, energy RMSE "
            f"{errors['energy_rmse_mev_per_atom']:.2f} meV/atom, force RMSE {_force_rmse(errors)}"
        )
    return "\n".join(lines)
