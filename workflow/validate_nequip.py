"""``hillwalker validate``'s checks of the NequIP config: it parses, its ``_target_`` classes
import, its species are the structure's, and NPT walkers get a model trained on stress.

Each problem is one line ``file: key: message`` in the report (see :mod:`hillwalker.validate`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from hillwalker.config import Campaign, ConfigError, read_yaml

if TYPE_CHECKING:
    from hillwalker.validate import ValidationReport


def check_nequip(
    path: Path, atoms: Atoms | None, campaign: Campaign | None, report: ValidationReport
) -> None:
    try:
        data = read_yaml(path)  # first: malformed YAML is reported with its line
    except ConfigError as exc:
        report.problems.extend(exc.problems)
        return
    if not isinstance(data, dict):
        report.problems.append(f"{path}: expected a mapping of keys at the top level")
        return
    try:
        from hillwalker.engines.nequip import ModelError, TrainSettings
    except ImportError as exc:
        report.unavailable.append(f"{path}: NequIP template check unavailable ({exc})")
    else:
        try:
            # the keys the training engine needs and the types of its knobs
            TrainSettings.from_template(path).check()
        except ModelError as exc:
            report.problems.append(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}")
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        config = OmegaConf.create(data)
    except OmegaConfBaseException as exc:
        report.problems.append(f"{path}: not a valid hydra config: {exc}".splitlines()[0])
        return
    report.problems.extend(_nequip_targets(path, data))
    if atoms is not None:
        _nequip_species(path, config, atoms, report)
        _nequip_stress(path, config, atoms, campaign, report)


def _nequip_species(path: Path, config: Any, atoms: Atoms, report: ValidationReport) -> None:
    """The structure's elements must be the model's species, as training will see them.

    ``model_type_names: ???`` is filled in by the training engine with the species of the data
    (the structure's elements, by atomic number); ``chemical_species`` and the type map must
    follow from it.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    structure_species = sorted(set(atoms.get_chemical_symbols()), key=chemical_symbols.index)
    if OmegaConf.is_missing(config, "model_type_names"):
        config.model_type_names = structure_species
    reported: list[str] | None = None
    for key in ("model_type_names", "chemical_species"):
        try:
            value = OmegaConf.select(config, key, throw_on_missing=True)
            names = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        except OmegaConfBaseException as exc:
            report.problems.append(f"{path}: {key}: {exc}".splitlines()[0])
            continue
        if names is None:
            if key == "chemical_species":
                report.problems.append(f"{path}: {key}: missing (use ${{model_type_names}})")
            continue
        if not isinstance(names, list) or not all(isinstance(s, str) for s in names):
            report.problems.append(f"{path}: {key}: expected a list of element symbols")
            continue
        if names == reported:
            continue  # chemical_species: ${model_type_names}, whose problem is reported
        unknown = [s for s in names if s not in chemical_symbols[1:]]
        if unknown:
            report.problems.append(f"{path}: {key}: {', '.join(unknown)} is not an element")
        missing = [s for s in structure_species if s not in names]
        extra = [s for s in names if s not in structure_species and s not in unknown]
        if unknown or missing or (key == "model_type_names" and extra):
            reported = names
        if missing or (key == "model_type_names" and extra):
            report.problems.append(
                f"{path}: {key}: [{', '.join(names)}] does not match the structure's species "
                f"[{', '.join(structure_species)}]"
                + (
                    " (leave model_type_names: ??? to have them filled in)"
                    if key == "model_type_names"
                    else ""
                )
            )


def _nequip_stress(
    path: Path, config: Any, atoms: Atoms, campaign: Campaign | None, report: ValidationReport
) -> None:
    """NPT walkers move the cell with the model's stress: it must be trained on stress."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if campaign is None or campaign.walkers.ensemble != "npt" or not np.all(atoms.pbc):
        return
    key = "training_module.loss.coeffs.stress"
    try:
        weight = OmegaConf.select(config, key, default=None)
    except OmegaConfBaseException:
        return
    if not (isinstance(weight, int | float) and weight > 0):
        report.problems.append(
            f"{path}: {key}: is {weight}; NPT walkers need a model trained on stress (the cell "
            "collapses otherwise): give stress_weight a positive value"
        )


def _nequip_targets(path: Path, data: Any, key: str = "") -> list[str]:
    """Every ``_target_`` must name an importable class or function."""
    problems: list[str] = []
    if isinstance(data, dict):
        target = data.get("_target_")
        if isinstance(target, str) and "${" not in target:
            why = _why_not_importable(target)
            if why:
                problems.append(
                    f"{path}: {key + '.' if key else ''}_target_: cannot import {target} ({why})"
                )
        for name, value in data.items():
            if name != "_target_":
                problems.extend(_nequip_targets(path, value, f"{key}.{name}" if key else name))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            problems.extend(_nequip_targets(path, value, f"{key}[{i}]"))
    return problems


def _why_not_importable(target: str) -> str | None:
    """None if ``a.b.C`` names an importable module attribute (as hydra locates ``_target_``)."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not module_name.startswith(exc.name):
                return f"importing {module_name} needs {exc.name}, which is not installed"
            continue
        except Exception as exc:  # a module that fails while importing
            return f"importing {module_name} failed: {type(exc).__name__}: {exc}"
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return f"{obj.__name__ if hasattr(obj, '__name__') else module_name} has no {attr}"
            obj = getattr(obj, attr)
        return None
    return f"no module {parts[0]}"
