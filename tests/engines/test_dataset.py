"""Datasets keep labels (ASE units and sign) and provenance exactly through a file."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from hillwalker.engines.dataset import (
    DatasetError,
    append_frames,
    has_labels,
    label,
    labels,
    read_frames,
    write_frames,
)


def _frame(seed: int):
    rng = np.random.default_rng(seed)
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    atoms.rattle(0.05, seed=seed)
    return label(
        atoms,
        energy=-13.123456789012345 + seed,
        forces=rng.normal(size=(len(atoms), 3)) / 3.0,
        stress=rng.normal(size=6) * 1e-3,
        generation=seed,
        walker=1,
        level="xtb-1a2b3c",
        task_id=f"sp-{seed:04d}",
        status="done",
    )


def test_round_trip_is_exact(tmp_path):
    frames = [_frame(i) for i in range(3)]
    path = tmp_path / "data.extxyz"
    write_frames(path, frames)
    back = read_frames(path)
    assert len(back) == 3
    for a, b in zip(frames, back, strict=True):
        la, lb = labels(a), labels(b)
        assert lb["energy"] == la["energy"]
        assert np.array_equal(lb["forces"], la["forces"])
        assert np.array_equal(lb["stress"], la["stress"])
        assert np.array_equal(b.positions, a.positions)
        assert np.array_equal(b.cell.array, a.cell.array)
        for key in ("generation", "walker", "level", "task_id", "status"):
            assert b.info[key] == a.info[key]


def test_stress_3x3_is_stored_as_voigt_with_the_same_sign():
    atoms = bulk("Cu", "fcc", a=3.6)
    full = np.array([[1.0, 6.0, 5.0], [6.0, 2.0, 4.0], [5.0, 4.0, 3.0]]) * 1e-3
    frame = label(atoms, 0.0, np.zeros((1, 3)), stress=full)
    assert np.allclose(labels(frame)["stress"], [1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3])
    assert np.allclose(frame.get_stress(voigt=False), full)


def test_append_keeps_old_frames(tmp_path):
    path = tmp_path / "d.extxyz"
    write_frames(path, [_frame(0)])
    append_frames(path, [_frame(1), _frame(2)])
    assert [f.info["task_id"] for f in read_frames(path)] == ["sp-0000", "sp-0001", "sp-0002"]


def test_unlabeled_and_bad_inputs(tmp_path):
    atoms = bulk("Al")
    assert not has_labels(atoms)
    with pytest.raises(ValueError, match="forces have shape"):
        label(atoms, 0.0, np.zeros((2, 3)))
    with pytest.raises(DatasetError, match="no such dataset file"):
        read_frames(tmp_path / "missing.extxyz")
    bad = tmp_path / "bad.extxyz"
    bad.write_text("3\nnot an extxyz header\nAl 0 0\n")
    with pytest.raises(DatasetError, match=r"bad\.extxyz"):
        read_frames(bad)
