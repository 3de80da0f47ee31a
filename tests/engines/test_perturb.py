"""Generation-0 perturbations: reproducible, the asked-for size, atoms moving with the cell."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import molecule

from hillwalker.engines.perturb import perturb

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture
def mil53_np():
    return ase.io.read(DATA / "mil53_np_relaxed_xtb.extxyz")


def test_same_seed_same_frames_other_seed_other_frames(mil53_np) -> None:
    a = perturb(mil53_np, 3, position_sigma=0.05, strain=0.04, seed=7)
    b = perturb(mil53_np, 3, position_sigma=0.05, strain=0.04, seed=7)
    c = perturb(mil53_np, 3, position_sigma=0.05, strain=0.04, seed=8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.positions, y.positions)
        np.testing.assert_array_equal(x.cell, y.cell)
    assert not np.allclose(a[0].positions, c[0].positions)
    assert len({f.positions.tobytes() for f in a}) == 3  # the copies differ from each other
    assert all(f.calc is None for f in a)  # no stale labels travel with a perturbed copy


def test_displacements_and_strain_have_the_asked_size(mil53_np) -> None:
    frames = perturb(mil53_np, 40, position_sigma=0.05, strain=0.04, seed=1)
    ref_cell = np.asarray(mil53_np.cell)
    ratios, kicks = [], []
    for f in frames:
        # strain: cell = ref_cell (1 + ε), ε symmetric with |ε_ij| ≤ 0.04
        eps = np.linalg.solve(ref_cell, np.asarray(f.cell)) - np.eye(3)
        np.testing.assert_allclose(eps, eps.T, atol=1e-12)
        assert np.abs(eps).max() <= 0.04 + 1e-12
        ratios.append(f.get_volume() / mil53_np.get_volume())
        # positions: the strained crystal (fractional coordinates kept) plus Gaussian kicks
        strained = mil53_np.get_scaled_positions(wrap=False) @ np.asarray(f.cell)
        kicks.append(f.positions - strained)
    kicks_all = np.concatenate(kicks)
    assert np.std(kicks_all) == pytest.approx(0.05, rel=0.05)
    assert np.abs(np.mean(kicks_all)) < 0.005
    assert min(ratios) < 0.97 and max(ratios) > 1.03  # volumes spread over several percent
    assert frames[0].info["perturb_sigma"] == 0.05 and frames[0].info["perturb_strain"] == 0.04


def test_molecule_without_cell_is_only_rattled() -> None:
    water = molecule("H2O")
    frames = perturb(water, 2, position_sigma=0.02, strain=0.04, seed=3)
    for f in frames:
        assert not f.pbc.any() and f.cell.rank == 0
        assert 0 < np.abs(f.positions - water.positions).max() < 0.2
        assert f.info["perturb_strain"] == 0.0


def test_zero_perturbation_is_a_copy(mil53_np) -> None:
    (frame,) = perturb(mil53_np, 1, position_sigma=0.0, strain=0.0, seed=0)
    np.testing.assert_array_equal(frame.positions, mil53_np.positions)
    np.testing.assert_array_equal(frame.cell, mil53_np.cell)


@pytest.mark.parametrize(
    ("n", "sigma", "strain", "message"),
    [(-1, 0.1, 0.0, "n must be"), (1, -0.1, 0.0, ">= 0"), (1, 0.1, 4.0, "fraction")],
)
def test_bad_arguments(mil53_np, n: int, sigma: float, strain: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        perturb(mil53_np, n, position_sigma=sigma, strain=strain, seed=0)
