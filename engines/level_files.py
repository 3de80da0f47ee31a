"""Level files in YAML (``*.yaml``/``*.yml``): the ``code:`` key says which code reads the rest.

``code: tblite`` → :mod:`hillwalker.engines.tblite_level`, ``code: pyscf`` →
:mod:`hillwalker.engines.pyscf_level`, ``code: stillinger-weber`` →
:mod:`hillwalker.engines.sw_level`. Each code's settings are a pydantic model with
``extra="forbid"``; every problem is a :class:`~hillwalker.engines.levels.LevelError` naming the
file and the key, raised when the file is loaded, before anything runs.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from hillwalker.engines.levels import LevelError, ReferenceLevel

#: ``code:`` value → module with ``from_settings(path, data) -> ReferenceLevel``
CODES = {
    "tblite": "hillwalker.engines.tblite_level",
    "pyscf": "hillwalker.engines.pyscf_level",
    "stillinger-weber": "hillwalker.engines.sw_level",
}

M = TypeVar("M", bound=BaseModel)


class LevelSettings(BaseModel):
    """Base of each code's level-file model: unknown keys are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def load(path: str | os.PathLike[str]) -> ReferenceLevel:
    """The level in a YAML level file (what :func:`~hillwalker.engines.levels.load_level` calls)."""
    p = Path(path)
    data = read_mapping(p)
    code = data.get("code")
    if code is None:
        raise LevelError(f"{p}: code: missing (one of {', '.join(sorted(CODES))})")
    module = CODES.get(str(code).lower())
    if module is None:
        raise LevelError(f"{p}: code: unknown code {code!r} (one of {', '.join(sorted(CODES))})")
    level: ReferenceLevel = importlib.import_module(module).from_settings(p, data)
    return level


def read_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise LevelError(f"{path}: cannot read the level file: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise LevelError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise LevelError(f"{path}: expected a mapping of keys (code: …, method: …)")
    return data


def parse_settings(model: type[M], path: Path, data: dict[str, Any]) -> M:
    """``data`` as ``model``; the first problem as a LevelError naming the file and key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        raise LevelError(f"{path}: {key}: {message}") from None


def require(package: str, extra: str, path: Path) -> None:
    """LevelError (one line, no traceback) unless ``package`` imports."""
    try:
        importlib.import_module(package)
    except ImportError:
        raise LevelError(
            f"{path}: code: {extra} is not installed: pip install 'hillwalker[{extra}]'"
        ) from None


def check_spin(path: Path, atoms: Any, charge: int, multiplicity: int) -> None:
    """LevelError unless ``multiplicity`` - 1 unpaired electrons fit the frame's electron count."""
    electrons = int(atoms.numbers.sum()) - charge
    if electrons < 0 or (electrons - (multiplicity - 1)) % 2 or multiplicity - 1 > electrons:
        raise LevelError(
            f"{path}: multiplicity: {multiplicity} is impossible with {electrons} electrons "
            f"(charge {charge}, {atoms.get_chemical_formula()})"
        )
