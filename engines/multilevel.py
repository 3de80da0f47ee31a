"""Datasets labeled at several levels of theory, and the difference between two levels.

The layout (docs/multifidelity.md) is plain extxyz, so a user can write it by hand from another
code's outputs: any number of files, each labeled frame carrying ``info["level"]`` (the level's
name) and, where it is known, ``info["level_digest"]`` (the hash of the level's settings, which
``hillwalker label`` and campaigns write). Labels of one geometry at several levels are linked by
the frame's identity, :func:`frame_id`: a hash of the atomic numbers, the positions and the cell
rounded to 1e-5 Å, and pbc. One file per level, or all levels in one file, read the same.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms

from hillwalker.engines.dataset import STATUS_FAILED, DatasetError, label, labels, read_frames

__all__ = [
    "LevelFrames",
    "MultiLevelError",
    "delta_frames",
    "frame_id",
    "frames_by_level",
    "per_element_energies",
    "read_levels",
]

#: positions and cell are compared after rounding to this many decimals (Å)
DECIMALS = 5


class MultiLevelError(DatasetError):
    """A multi-level dataset cannot be used as asked; the message names the file and frame."""


def frame_id(atoms: Atoms) -> str:
    """The identity of a geometry (atomic numbers, positions and cell to 1e-5 Å, pbc)."""
    h = hashlib.sha256()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    for array in (atoms.positions, atoms.cell.array):
        rounded = np.round(np.asarray(array, dtype=float), DECIMALS) + 0.0  # no -0.0
        h.update(rounded.tobytes())
    h.update(np.asarray(atoms.pbc, dtype=np.int8).tobytes())
    return h.hexdigest()[:16]


@dataclass
class LevelFrames:
    """The labeled frames of one level, by frame id, with where each came from."""

    name: str
    digest: str | None = None
    frames: dict[str, Atoms] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # frame id -> "FILE: frame I"

    def __len__(self) -> int:
        return len(self.frames)

    def list(self) -> list[Atoms]:
        return list(self.frames.values())


def read_levels(paths: Iterable[str | os.PathLike[str]]) -> dict[str, LevelFrames]:
    """Every level's labeled frames in the files ``paths`` (failed single points left out)."""
    tagged: list[tuple[Atoms, str]] = []
    for path in paths:
        frames = read_frames(path)
        tagged += [(atoms, f"{Path(path)}: frame {i}") for i, atoms in enumerate(frames)]
    return frames_by_level(tagged)


def frames_by_level(tagged: Sequence[tuple[Atoms, str]]) -> dict[str, LevelFrames]:
    """Group ``(frame, where)`` pairs by ``info["level"]``; a level's frames must share one
    digest, and a frame labeled twice at one level must carry the same labels."""
    levels: dict[str, LevelFrames] = {}
    for atoms, where in tagged:
        if atoms.info.get("status") == STATUS_FAILED:
            continue
        name = atoms.info.get("level")
        if not name:
            raise MultiLevelError(
                f"{where}: no 'level' key: every frame of a multi-level dataset names its level "
                "(hillwalker label writes it; by hand: level=NAME in the comment line)"
            )
        if "energy" not in labels(atoms):
            raise MultiLevelError(f"{where}: level {name}: the frame has no energy label")
        data = levels.setdefault(str(name), LevelFrames(str(name)))
        digest = atoms.info.get("level_digest")
        if digest:
            digest = str(digest)
            if data.digest is None:
                data.digest = digest
            elif digest != data.digest:
                first = next(
                    (data.sources[k] for k, f in data.frames.items()
                     if f.info.get("level_digest") == data.digest),
                    "an earlier frame",
                )  # fmt: skip
                raise MultiLevelError(
                    f"{where}: level_digest: level {name} was labeled with settings {digest}, "
                    f"but {first} with {data.digest}: the level's settings changed between "
                    "labels, so they cannot be trained on together"
                )
        key = frame_id(atoms)
        if key in data.frames:
            _check_same_labels(data.frames[key], atoms, data.sources[key], where, str(name))
            continue
        data.frames[key] = atoms
        data.sources[key] = where
    return levels


def _check_same_labels(old: Atoms, new: Atoms, old_where: str, where: str, name: str) -> None:
    a, b = labels(old), labels(new)
    if not np.isclose(a["energy"], b["energy"], rtol=0.0, atol=1e-6):
        raise MultiLevelError(
            f"{where}: level {name}: the same frame as {old_where} with another energy "
            f"({b['energy']:.6f} vs {a['energy']:.6f} eV)"
        )


def delta_frames(target: LevelFrames, baseline: LevelFrames) -> list[Atoms]:
    """The frames of ``target`` labeled with target − baseline (energy; forces and stress where
    both have them), in ``target``'s order; every target frame needs a baseline label."""
    if target.name == baseline.name:
        raise MultiLevelError(f"target and baseline are the same level ({target.name})")
    if target.digest is not None and target.digest == baseline.digest:
        raise MultiLevelError(
            f"levels {target.name} and {baseline.name} have the same settings "
            f"(digest {target.digest}): a delta between them is zero"
        )
    missing = [key for key in target.frames if key not in baseline.frames]
    if missing:
        raise MultiLevelError(
            f"{target.sources[missing[0]]}: no label at the baseline level {baseline.name} "
            f"for this frame ({len(missing)} of {len(target)} {target.name} frames lack one): "
            "delta-learning needs the baseline at every target frame"
        )
    delta = []
    for key, frame in target.frames.items():
        high, low = labels(frame), labels(baseline.frames[key])
        forces = stress = None
        if "forces" in high and "forces" in low:
            forces = np.asarray(high["forces"]) - np.asarray(low["forces"])
        if "stress" in high and "stress" in low:
            stress = np.asarray(high["stress"]) - np.asarray(low["stress"])
        info = {k: v for k, v in frame.info.items() if k not in ("level", "level_digest")}
        atoms = frame.copy()
        atoms.info.clear()
        info["level"] = f"{target.name}-{baseline.name}"
        delta.append(label(atoms, high["energy"] - low["energy"], forces, stress, **info))
    return delta


def per_element_energies(frames: Sequence[Atoms]) -> dict[str, float]:
    """Energy per atom of each element (eV) fitted by least squares to the frames' energies
    (the minimum-norm solution where compositions do not separate the elements)."""
    species = sorted({s for f in frames for s in f.get_chemical_symbols()})
    counts = np.array([[f.get_chemical_symbols().count(s) for s in species] for f in frames])
    energies = np.array([labels(f)["energy"] for f in frames])
    solution = np.linalg.lstsq(counts.astype(float), energies, rcond=None)[0]
    return {s: float(e) for s, e in zip(species, solution, strict=True)}
