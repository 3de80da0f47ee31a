"""Multi-level datasets: frames linked across levels by geometry, the delta labels, and the
refusals (missing baseline label, one level with two settings, no level key)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from hillwalker.engines.dataset import label, labels, read_frames, write_frames
from hillwalker.engines.multilevel import (
    MultiLevelError,
    delta_frames,
    frame_id,
    read_levels,
)
from hillwalker.engines.potentials import per_element_energies


def water(shift: float) -> Atoms:
    return Atoms("OH2", positions=[[0, 0, 0], [0.96 + shift, 0, 0], [-0.24, 0.93, 0.1 * shift]])


def labeled(atoms: Atoms, level: str, energy: float, seed: int, digest: str = "d-") -> Atoms:
    forces = np.random.default_rng(seed).normal(size=(len(atoms), 3))
    return label(atoms, energy, forces, level=level, level_digest=digest + level)


def write_two_levels(tmp_path: Path, n: int = 4) -> tuple[Path, Path]:
    """``n`` geometries at 'ccsd' (first file) and at 'hf' (second file, reversed order)."""
    target = [labeled(water(0.01 * i), "ccsd", -10.0 - i, i) for i in range(n)]
    baseline = [labeled(water(0.01 * i), "hf", -9.0 - 2 * i, 100 + i) for i in range(n)]
    write_frames(tmp_path / "ccsd.extxyz", target)
    write_frames(tmp_path / "hf.extxyz", baseline[::-1])
    return tmp_path / "ccsd.extxyz", tmp_path / "hf.extxyz"


def test_frame_identity_ignores_rounding_noise_not_a_moved_atom() -> None:
    a = water(0.0)
    b = a.copy()
    b.positions += 1e-9
    b.positions[0, 0] = -0.0
    assert frame_id(a) == frame_id(b)
    c = a.copy()
    c.positions[1, 0] += 1e-3
    assert frame_id(c) != frame_id(a)
    d = a.copy()
    d.pbc = True
    assert frame_id(d) != frame_id(a)


def test_delta_labels_are_target_minus_baseline_frame_by_frame(tmp_path: Path) -> None:
    target_file, baseline_file = write_two_levels(tmp_path)
    levels = read_levels([target_file, baseline_file])
    assert sorted(levels) == ["ccsd", "hf"]
    assert levels["hf"].digest == "d-hf" and len(levels["ccsd"]) == 4
    delta = delta_frames(levels["ccsd"], levels["hf"])
    targets, baselines = read_frames(target_file), read_frames(baseline_file)[::-1]
    for d, t, b in zip(delta, targets, baselines, strict=True):
        assert labels(d)["energy"] == pytest.approx(labels(t)["energy"] - labels(b)["energy"])
        np.testing.assert_allclose(labels(d)["forces"], labels(t)["forces"] - labels(b)["forces"])
        np.testing.assert_allclose(d.positions, t.positions)
        assert d.info["level"] == "ccsd-hf"
    # energy differences 1 + i: not the same for every frame, so the pairing matters
    assert [labels(d)["energy"] for d in delta] == pytest.approx([-1.0, 0.0, 1.0, 2.0])


def test_an_energy_only_target_gives_energy_only_delta_labels(tmp_path: Path) -> None:
    target = [label(water(0.01 * i), -10.0 - i, None, level="fci") for i in range(3)]
    baseline = [labeled(water(0.01 * i), "hf", -9.0, i) for i in range(3)]
    write_frames(tmp_path / "all.extxyz", target + baseline)  # both levels in one file
    levels = read_levels([tmp_path / "all.extxyz"])
    delta = delta_frames(levels["fci"], levels["hf"])
    assert all("forces" not in labels(d) for d in delta)
    assert levels["fci"].digest is None  # written by hand: no digest, still usable


def test_a_target_frame_without_a_baseline_label_is_refused_by_name(tmp_path: Path) -> None:
    target_file, baseline_file = write_two_levels(tmp_path)
    frames = read_frames(baseline_file)
    write_frames(baseline_file, frames[1:])  # the last target geometry loses its hf label
    levels = read_levels([target_file, baseline_file])
    with pytest.raises(MultiLevelError, match=r"ccsd\.extxyz: frame 3: no label at the baseline"):
        delta_frames(levels["ccsd"], levels["hf"])
    with pytest.raises(MultiLevelError, match="same level"):
        delta_frames(levels["ccsd"], levels["ccsd"])


def test_one_level_labeled_with_two_settings_is_refused(tmp_path: Path) -> None:
    frames = [labeled(water(0.01 * i), "hf", -9.0, i) for i in range(3)]
    frames.append(labeled(water(0.5), "hf", -9.0, 9, digest="changed-"))
    write_frames(tmp_path / "hf.extxyz", frames)
    with pytest.raises(MultiLevelError, match=r"hf\.extxyz: frame 3: level_digest: .*frame 0"):
        read_levels([tmp_path / "hf.extxyz"])


def test_a_frame_without_a_level_is_refused(tmp_path: Path) -> None:
    write_frames(tmp_path / "x.extxyz", [label(water(0.0), -1.0, None)])
    with pytest.raises(MultiLevelError, match=r"x\.extxyz: frame 0: no 'level' key"):
        read_levels([tmp_path / "x.extxyz"])


def test_per_element_energies_recover_the_references() -> None:
    refs = {"H": -13.6, "O": -432.0}
    frames = []
    for formula in ("H2O", "H2", "O2", "H2O2", "OH"):
        atoms = Atoms(formula, positions=np.arange(3 * len(Atoms(formula))).reshape(-1, 3))
        energy = sum(refs[s] for s in atoms.get_chemical_symbols())
        frames.append(label(atoms, energy, None))
    got = per_element_energies(frames)
    assert got == pytest.approx(refs)
