"""Training on a dataset where some frames carry energy only (CCSD(T), FCI labels): a real tiny
nequip training, NaN-free, with batches that hold no forces at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT

from hillwalker.engines.dataset import label, labels, read_frames, write_frames
from hillwalker.engines.nequip import ModelError, TrainSettings, load_calculator, train
from hillwalker.engines.nequip.data import training_frames


def _emt_frames(n: int) -> list:
    """Rattled ethanol labeled by EMT; every other frame energy-only."""
    frames = []
    for i in range(n):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.08, seed=i)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        frames.append(label(atoms, energy, None if i % 2 else forces, status="done"))
    return frames


def test_energy_only_frames_survive_the_dataset(tmp_path: Path) -> None:
    path = tmp_path / "d.extxyz"
    write_frames(path, _emt_frames(4))
    back = read_frames(path)
    assert ["forces" in labels(f) for f in back] == [True, False, True, False]
    assert all(np.isfinite(labels(f)["energy"]) for f in back)
    assert len(training_frames([path])) == 4
    only_energy = tmp_path / "e.extxyz"
    write_frames(only_energy, [f for f in back if "forces" not in labels(f)])
    with pytest.raises(ModelError, match=r"e\.extxyz: no frame has forces"):
        training_frames([only_energy])


@pytest.mark.slow
def test_a_training_with_energy_only_frames_is_nan_free_and_compiles(tmp_path: Path) -> None:
    """Molecules without a cell: trained NaN-free, and compiled (a zero-volume cell gives a NaN
    stress, which nequip-compile's check refused: the model is compiled without stress)."""
    data = tmp_path / "frames.extxyz"
    write_frames(data, _emt_frames(8))
    settings = TrainSettings.from_template(
        None, epochs=3, num_features=8, num_layers=1, batch_size=1, validation_fraction=0.25
    )
    model = train(data, tmp_path / "m", settings=settings, device="cpu", compile=True, threads=1)
    history = model.metrics["history"]
    assert len(history) == 3
    for epoch in history:
        numbers = {k: v for k, v in epoch.items() if isinstance(v, float)}
        assert numbers and all(np.isfinite(v) for v in numbers.values()), epoch
    overrides = " ".join(model.metrics["config"]["overrides"])
    assert "hillwalker.engines.nequip.losses.skipping_missing" in overrides
    assert "inner=nequip.train.EnergyForceLoss" in overrides  # a molecule: no stress term
    # the validation frames include one with forces: the monitored force error means something
    val = read_frames(tmp_path / "m" / "data" / "val.extxyz")
    assert any(np.isfinite(labels(f)["forces"]).all() for f in val)
    # the compiled model (what walkers run) gives the package's energies and forces
    assert model.compiled is not None and model.compiled.is_file()
    frame = read_frames(data)[0]
    assert frame.cell.rank == 0
    results = []
    for path in (model.package, model.compiled):
        calc = load_calculator(path, device="cpu", threads=1)
        atoms = frame.copy()
        atoms.calc = calc
        results.append((atoms.get_potential_energy(), atoms.get_forces()))
        assert "stress" not in calc.results or not np.isfinite(calc.results["stress"]).all()
    (e_eager, f_eager), (e_compiled, f_compiled) = results
    # float32 models (the template's): equal to single precision
    assert np.all(np.isfinite(f_compiled)) and abs(e_eager - e_compiled) < 1e-5 * abs(e_eager)
    np.testing.assert_allclose(f_compiled, f_eager, rtol=1e-4, atol=1e-5)
