"""Datasets: lists of ``ase.Atoms`` stored as extended XYZ, with labels and provenance.

Units are ASE's everywhere: energy in eV, forces in eV/Å, stress in eV/Å³ with ASE's sign
(positive = tensile, i.e. ``stress = (1/V) dE/dε``). Labels live in a ``SinglePointCalculator``
attached to each frame, which is how ASE (and nequip's ASE dataset) read and write them.

Provenance lives in ``atoms.info`` under the keys in :data:`PROVENANCE_KEYS`.

Numbers are written with 17 significant digits, so a write/read round trip is exact (ASE's own
writer rounds per-atom columns to 8 decimals).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from hillwalker.engines.files import atomic_open

#: info keys that say where a frame came from.
PROVENANCE_KEYS = ("generation", "walker", "level", "level_digest", "task_id", "status")

#: values of ``info["status"]``
STATUS_DONE = "done"
STATUS_FAILED = "failed"
#: a walker segment stopped by a safety check (the walker was reset to its last safe state)
STATUS_BLOWN_UP = "blown_up"


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or lacks what is asked of it."""


def label(
    atoms: Atoms,
    energy: float,
    forces: np.ndarray | None,
    stress: np.ndarray | None = None,
    **provenance: Any,
) -> Atoms:
    """Return a copy of ``atoms`` carrying the given labels (ASE units) and provenance;
    ``forces=None``: an energy-only label (a method without gradients, e.g. CCSD(T))."""
    frame = atoms.copy()
    results: dict[str, Any] = {"energy": float(energy)}
    if forces is not None:
        results["forces"] = np.asarray(forces, dtype=float)
        if results["forces"].shape != (len(frame), 3):
            shape = results["forces"].shape
            raise ValueError(f"forces have shape {shape}, expected ({len(frame)}, 3)")
    if stress is not None:
        s = np.asarray(stress, dtype=float)
        if s.shape == (3, 3):
            s = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        if s.shape != (6,):
            raise ValueError(f"stress has shape {s.shape}, expected (6,) Voigt or (3, 3)")
        results["stress"] = s
    frame.calc = SinglePointCalculator(frame, **results)
    frame.info.update({k: v for k, v in provenance.items() if v is not None})
    return frame


def labels(atoms: Atoms) -> dict[str, Any]:
    """The labels of a frame: ``energy``, ``forces`` and ``stress`` (each may be missing)."""
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    return {k: results[k] for k in ("energy", "forces", "stress") if k in results}


def largest_force(atoms: Atoms) -> float | None:
    """The largest force on any atom of a labeled frame (eV/Å; None: no force label)."""
    forces = labels(atoms).get("forces")
    if forces is None or len(forces) == 0:
        return None
    return float(np.linalg.norm(np.asarray(forces, dtype=float), axis=1).max())


def split_by_force(frames: list[Atoms], limit: float | None) -> tuple[list[Atoms], list[Atoms]]:
    """(frames whose largest force is at most ``limit`` eV/Å or that have no forces, the rest);
    ``limit`` None keeps every frame. Order is kept."""
    if limit is None:
        return list(frames), []
    kept: list[Atoms] = []
    above: list[Atoms] = []
    for atoms in frames:
        f = largest_force(atoms)
        (above if f is not None and f > limit else kept).append(atoms)
    return kept, above


def has_labels(atoms: Atoms, *, stress: bool = False) -> bool:
    got = labels(atoms)
    return "energy" in got and "forces" in got and (not stress or "stress" in got)


def read_frames(path: str | os.PathLike[str], index: str | int = ":") -> list[Atoms]:
    """Read every frame of an extxyz file; a clear :class:`DatasetError` if it can't."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: no such dataset file")
    if p.stat().st_size == 0:
        return []
    try:
        frames = ase.io.read(p, index=index, format="extxyz")
    except Exception as exc:  # ASE raises many types on malformed files
        raise DatasetError(
            f"{p}: not a readable extxyz file ({type(exc).__name__}: {exc})"
        ) from exc
    return frames if isinstance(frames, list) else [frames]


def write_frames(path: str | os.PathLike[str], frames: Iterable[Atoms]) -> None:
    """Write frames atomically (a temp file renamed over ``path``)."""
    with atomic_open(path, "w") as handle:
        for atoms in frames:
            handle.write(frame_to_text(atoms))


def append_frames(path: str | os.PathLike[str], frames: Sequence[Atoms]) -> None:
    """Append frames by rewriting the file atomically: old frames + new ones, or nothing."""
    p = Path(path)
    old = p.read_text() if p.exists() else ""
    with atomic_open(p, "w") as handle:
        handle.write(old)
        for atoms in frames:
            handle.write(frame_to_text(atoms))


def frame_to_text(atoms: Atoms) -> str:
    """One frame as extxyz text, per-atom columns written with full double precision."""
    buf = io.StringIO()
    ase.io.write(buf, atoms, format="extxyz")
    lines = buf.getvalue().splitlines(keepends=True)
    header, body = lines[:2], lines[2:]
    # ASE's header names the columns (Properties=...); re-emit the body from the exact arrays.
    columns = _columns(atoms, header[1])
    out = [header[0], header[1]]
    for i, _ in enumerate(body):
        out.append(" ".join(_fmt(col[i]) for col in columns) + "\n")
    return "".join(out)


def _columns(atoms: Atoms, comment: str) -> list[np.ndarray]:
    from ase.io.extxyz import key_val_str_to_dict

    props = key_val_str_to_dict(comment)["Properties"].split(":")
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    columns: list[np.ndarray] = []
    for name, _kind, ncol in zip(props[0::3], props[1::3], props[2::3], strict=True):
        if name == "species":
            data = np.array(atoms.get_chemical_symbols(), dtype=object)
        elif name == "pos":
            data = atoms.positions
        elif name in atoms.arrays:
            data = atoms.arrays[name]
        elif name in results:
            data = np.asarray(results[name])
        elif name == "move_mask":
            from ase.io.extxyz import _make_move_mask

            data = _make_move_mask(atoms)
        else:
            raise DatasetError(f"cannot write column {name!r}")
        data = np.asarray(data)
        columns.extend([data] if int(ncol) == 1 and data.ndim == 1 else list(data.T))
    return columns


def _fmt(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "T" if value else "F"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)
