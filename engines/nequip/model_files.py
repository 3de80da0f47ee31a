"""What a model directory holds: file names, the record (``model.json``), the progress file.

Shared by the training run, the deployment functions and the callback inside nequip-train.
"""

from __future__ import annotations

import json
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hillwalker.engines.files import atomic_write_json

PACKAGE_NAME = "model.nequip.zip"
COMPILED_NAME = "model.nequip.pt2"
RECORD_NAME = "model.json"
PROGRESS_NAME = "progress.json"


class ModelError(ValueError):
    """A model file, training input or training run is unusable; the message names the file."""


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


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; empty when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_progress(
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


def package_path(model: Path) -> Path:
    """The .nequip.zip of a model directory or path."""
    path = Path(model).resolve()
    if path.is_dir():
        package = path / PACKAGE_NAME
        if not package.is_file():
            raise ModelError(f"{path}: no {PACKAGE_NAME} in this model directory")
        return package
    if not path.name.endswith(".nequip.zip"):
        raise ModelError(f"{path}: expected a model directory or a .nequip.zip package")
    check_file(path)
    return path


def check_file(path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: empty model file")
    # packages and AOTInductor models are zip archives: a cheap check before torch loads them
    if path.name.endswith((".nequip.zip", ".nequip.pt2")) and not zipfile.is_zipfile(path):
        raise ModelError(f"{path}: not a readable NequIP model (not a zip archive)")


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"
