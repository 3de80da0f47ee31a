"""The frames a model trains on: which count, their species, stress, energy shifts, the split."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from hillwalker.engines.dataset import STATUS_FAILED, DatasetError, label, labels, read_frames
from hillwalker.engines.nequip.model_files import ModelError


def training_frames(paths: list[Path]) -> list[Atoms]:
    frames: list[Atoms] = []
    for path in paths:
        try:
            got = read_frames(path)
        except DatasetError as exc:
            raise ModelError(str(exc)) from exc
        for i, atoms in enumerate(got):
            if atoms.info.get("status") == STATUS_FAILED:
                continue  # failed single points never train a model
            if "energy" not in labels(atoms):
                raise ModelError(f"{path}: frame {i} has no energy: cannot train on it")
            frames.append(atoms)  # without forces (an energy-only method): energy only
    if frames and forces_mode(frames) == "none":
        raise ModelError(
            f"{', '.join(map(str, paths))}: no frame has forces (energy-only labels): "
            "a force field needs some frames with forces"
        )
    if not frames:
        raise ModelError(f"{', '.join(map(str, paths))}: no labeled frames (empty dataset)")
    if len(frames) < 2:
        raise ModelError(
            f"{', '.join(map(str, paths))}: only one labeled frame; training needs at least two "
            "(one is held out for validation)"
        )
    return frames


def species_of(frames: Sequence[Atoms]) -> list[str]:
    symbols = {s for atoms in frames for s in atoms.get_chemical_symbols()}
    return sorted(symbols, key=lambda s: atomic_numbers[s])


def stress_mode(frames: Sequence[Atoms]) -> str:
    """ "all", "none" or "some": how many of the frames carry a stress label."""
    with_stress = sum("stress" in labels(f) for f in frames)
    if with_stress == len(frames):
        return "all"
    return "none" if with_stress == 0 else "some"


def forces_mode(frames: Sequence[Atoms]) -> str:
    """ "all", "none" or "some": how many of the frames carry forces (energy-only labels
    from methods without gradients, e.g. CCSD(T), have none)."""
    with_forces = sum("forces" in labels(f) for f in frames)
    if with_forces == len(frames):
        return "all"
    return "none" if with_forces == 0 else "some"


def with_nan_forces(atoms: Atoms) -> Atoms:
    """The frame with NaN forces if it has none: the loss skips them (``losses.py``)."""
    got = labels(atoms)
    if "forces" in got:
        return atoms
    info = dict(atoms.info)
    framed = label(atoms, got["energy"], np.full((len(atoms), 3), np.nan), got.get("stress"))
    framed.info = info
    return framed


def forces_in_validation(train: list[Atoms], val: list[Atoms]) -> tuple[list[Atoms], list[Atoms]]:
    """(train, val) with at least one validation frame with forces (swapped in from train), so
    that the monitored validation force error is measured on something."""
    if any(np.isfinite(labels(f)["forces"]).all() for f in val):
        return train, val
    for i, atoms in enumerate(train):
        if np.isfinite(labels(atoms)["forces"]).all():
            train, val = [*train[:i], val[0], *train[i + 1 :]], [atoms, *val[1:]]
            break
    return train, val


def with_nan_stress(atoms: Atoms) -> Atoms:
    got = labels(atoms)
    if "stress" in got:
        return atoms
    info = {k: v for k, v in atoms.info.items()}
    framed = label(atoms, got["energy"], got["forces"], np.full(6, np.nan))
    framed.info = info
    return framed


def energy_shifts(
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


def split(
    frames: list[Atoms], validation_fraction: float, seed: int
) -> tuple[list[Atoms], list[Atoms]]:
    """(train, validation), stable as a campaign's dataset grows.

    Frames are taken generation by generation (``info["generation"]``; frames without one form
    a group before the rest): each group adds the validation frames that bring the running
    count to round(fraction × frames so far), chosen by a hash of (atoms, positions, cell,
    ``seed``). A group's choice depends only on itself and the groups before it, so a frame
    never moves from training to validation when later generations are added (a warm-started
    model is never validated on frames it trained on), and each generation's validation set
    holds the previous one's. At least one frame goes each way.
    """
    groups: dict[int, list[int]] = {}
    for i, atoms in enumerate(frames):
        groups.setdefault(int(atoms.info.get("generation", -1)), []).append(i)
    val: set[int] = set()
    seen = 0
    for g in sorted(groups):
        members = groups[g]
        seen += len(members)
        # the first group gives at least one, whatever the fraction: the same one each time
        wanted = max(0 if val else 1, round(validation_fraction * seen) - len(val))
        members = sorted(members, key=lambda i: _uniform(frames[i], seed))
        val.update(members[: min(wanted, len(members))])
    if len(val) == len(frames) and len(frames) > 1:
        val.remove(max(val, key=lambda i: _uniform(frames[i], seed)))
    train_frames = [f for i, f in enumerate(frames) if i not in val]
    return train_frames, [f for i, f in enumerate(frames) if i in val]


def _uniform(atoms: Atoms, seed: int) -> float:
    """A number in [0, 1) fixed by the frame's content and ``seed``."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(str(seed).encode())
    digest.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    # rounded (and -0.0 made 0.0): the same frame read back from extxyz gives the same number
    digest.update((np.round(np.asarray(atoms.positions, float), 6) + 0.0).tobytes())
    digest.update((np.round(np.asarray(atoms.cell[:], float), 6) + 0.0).tobytes())
    return int.from_bytes(digest.digest(), "big") / 2.0**64
