"""The NequIP engine on real MIL-53(Al) GFN1-xTB frames: training, warm start, deployment.

The session model (``mil53_model`` in conftest.py) is trained once; these tests read it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.emt import EMT
from conftest import NEQUIP_TEST_THREADS, mil53_test_settings

from hillwalker.engines.dataset import label, labels, read_frames, write_frames
from hillwalker.engines.nequip import (
    ModelError,
    TrainSettings,
    evaluate,
    load_calculator,
    model_species,
    train,
)
from hillwalker.engines.nequip.data import energy_shifts

MIL53_SPECIES = ["H", "C", "O", "Al"]


@pytest.mark.slow
def test_validation_force_error_falls_during_training(mil53_model):
    m = mil53_model.metrics
    history = m["history"]
    assert [h["epoch"] for h in history] == list(range(1, 26))
    first, last = history[0]["val_forces_rmse"], history[-1]["val_forces_rmse"]
    assert last < 0.6 * first, (first, last)
    assert m["n_train"] + m["n_val"] == 36 and m["n_val"] == 4
    assert m["species"] == MIL53_SPECIES
    assert m["stress_trained"] is True
    # the record's validation errors are the deployed package's, in meV/atom, meV/Å and GPa:
    # the same numbers nequip logged (in eV, eV/Å, eV/Å³) for the deployed epoch, to the float32
    # model's precision (nequip sums batches, evaluate frames)
    deployed = next(h for h in history if h["epoch"] == m["deployed_epoch"])
    assert m["force_rmse_mev_per_ang"] == pytest.approx(1000 * deployed["val_forces_rmse"], 1e-5)
    assert m["energy_rmse_mev_per_atom"] == pytest.approx(
        1000 * deployed["val_per_atom_energy_rmse"], 1e-5
    )
    assert m["stress_rmse_gpa"] == pytest.approx(deployed["val_stress_rmse"] / units.GPa, 1e-5)
    assert deployed["val_forces_rmse"] == min(h["val_forces_rmse"] for h in history)

    progress = json.loads((mil53_model.directory / "progress.json").read_text())
    assert progress["stage"] == "done"
    assert (progress["epoch"], progress["max_epochs"]) == (25, 25)
    record = json.loads(mil53_model.record.read_text())
    assert record["compiled_device"] == "cpu"
    assert mil53_model.package.is_file() and mil53_model.compiled.is_file()


@pytest.mark.slow
def test_finished_model_is_returned_not_retrained(mil53_model):
    data = Path(mil53_model.metrics["config"]["data"][0])
    started = time.perf_counter()
    again = train(
        data, mil53_model.directory, settings=mil53_test_settings(), device="cpu", threads=1
    )
    assert time.perf_counter() - started < 20
    assert again.metrics == mil53_model.metrics


@pytest.mark.slow
def test_the_package_is_made_in_the_training_process_and_trusted_only_when_whole(
    mil53_model, tmp_path
):
    from hillwalker.engines.nequip.model_files import PACKAGE_NAME
    from hillwalker.engines.nequip.train_and_package import DONE_NAME
    from hillwalker.engines.nequip.training import STAGED_DIR, staged_package

    # the session model was packaged by nequip-train's own process (one start-up of torch and
    # nequip, not two), and the staging folder is gone
    log = (mil53_model.directory / "train.log").read_text()
    assert f"Packaged model saved to {mil53_model.directory / STAGED_DIR}" in log
    assert not (mil53_model.directory / STAGED_DIR).exists()
    # a staged package is taken only with its done.json, for the checkpoint as it is now
    ckpt = tmp_path / "train" / "best.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    staged = tmp_path / STAGED_DIR
    staged.mkdir()
    (staged / PACKAGE_NAME).write_bytes(b"package")
    assert staged_package(tmp_path, ckpt) is None  # no done.json: packaging was cut short
    done = {"checkpoint": str(ckpt), "checkpoint_mtime_ns": ckpt.stat().st_mtime_ns, "seconds": 1.5}
    (staged / DONE_NAME).write_text(json.dumps({**done, "checkpoint_mtime_ns": 1}))
    assert staged_package(tmp_path, ckpt) is None  # made from another state of the checkpoint
    (staged / DONE_NAME).write_text(json.dumps(done))
    assert staged_package(tmp_path, ckpt) == (tmp_path / PACKAGE_NAME, 1.5)
    assert (tmp_path / PACKAGE_NAME).read_bytes() == b"package"


def test_compiled_model_and_package_agree(mil53_model, mil53_held_out_frames):
    atoms = mil53_held_out_frames[0].copy()
    results = {}
    for path in (mil53_model.package, mil53_model.compiled):
        probe = atoms.copy()
        probe.calc = load_calculator(path, device="cpu", threads=NEQUIP_TEST_THREADS)
        results[path.name] = (probe.get_potential_energy(), probe.get_forces(), probe.get_stress())
    (e1, f1, s1), (e2, f2, s2) = results.values()
    assert abs(e1 - e2) <= 1e-4
    np.testing.assert_allclose(f1, f2, atol=1e-4)
    np.testing.assert_allclose(s1, s2, atol=1e-6)
    # and the model predicts this unseen frame's forces: RMSE against its xTB forces 0.26 eV/Å
    # (2026-12), where zero forces score 1.75 eV/Å; limit ~2x the achieved, ~3x below zero
    reference = labels(mil53_held_out_frames[0])["forces"]
    assert np.sqrt(np.mean((f1 - reference) ** 2)) < 0.6


@pytest.mark.slow
def test_model_stress_is_ase_convention(mil53_model, mil53_held_out_frames):
    """stress = (1/V) dE/dε (eV/Å³, positive = tensile), checked by finite differences."""
    atoms = mil53_held_out_frames[1].copy()
    calc = load_calculator(mil53_model.compiled, device="cpu", threads=NEQUIP_TEST_THREADS)
    atoms.calc = calc
    stress = atoms.get_stress(voigt=False)
    # strains of ±0.1 %: a float32 model's energy (~1e-5 eV noise on ~-250 eV) would drown
    # smaller ones; the central difference's own error is O(h²)
    h = 1e-3
    numeric = np.zeros((3, 3))
    for i, j in [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]:
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[i, j] += sign * h / (2 if i != j else 1)
            strain[j, i] += sign * h / 2 if i != j else 0
            probe = atoms.copy()
            probe.set_cell(atoms.cell @ strain, scale_atoms=True)
            probe.calc = calc
            energies.append(probe.get_potential_energy())
        numeric[i, j] = numeric[j, i] = (energies[0] - energies[1]) / (2 * h) / atoms.get_volume()
    np.testing.assert_allclose(stress, numeric, rtol=1e-3, atol=2e-5)
    assert np.abs(stress).max() > 1e-3


@pytest.mark.slow
def test_npt_md_with_session_model_stays_physical(mil53_model, mil53_frames_path):
    """The walkers' use: 38-atom NPT MD at 300 K, 200 steps of 1 fs, with the compiled model."""
    from ase.md.nose_hoover_chain import MTKNPT
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = read_frames(mil53_frames_path.parent / "mil53_np_relaxed_xtb.extxyz")[0]
    atoms.calc = load_calculator(mil53_model.compiled, device="cpu", threads=NEQUIP_TEST_THREADS)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    md = MTKNPT(
        atoms,
        timestep=1.0 * units.fs,
        temperature_K=300,
        pressure_au=0.0,
        tdamp=100 * units.fs,
        pdamp=1000 * units.fs,
    )
    v0 = atoms.get_volume()
    md.run(200)
    assert 0.8 * v0 < atoms.get_volume() < 1.3 * v0
    assert atoms.get_temperature() < 1000
    assert np.abs(atoms.get_forces()).max() < 20


@pytest.mark.slow
def test_warm_start_learns_the_new_frames(
    mil53_model, mil53_frames_path, mil53_held_out_frames, tmp_path
):
    before = evaluate(mil53_model.package, mil53_held_out_frames, device="cpu")
    nxt = train(
        mil53_frames_path,  # all 48 frames: the 36 seen before and the 12 new ones
        tmp_path / "gen1",
        # a warm start fine-tunes at the template's rate (0.005), not the tiny scratch model's 0.02
        settings=mil53_test_settings(epochs=4, learning_rate=0.005),
        init_from=mil53_model.package,
        device="cpu",
        compile=False,
        threads=NEQUIP_TEST_THREADS,
    )
    after = evaluate(nxt.package, mil53_held_out_frames, device="cpu")
    assert nxt.metrics["config"]["init_from"] == str(mil53_model.package)
    assert nxt.compiled is None
    assert after["force_rmse_mev_per_ang"] < before["force_rmse_mev_per_ang"], (before, after)
    # it started from the previous weights: its first epoch is already near the old model
    first = nxt.metrics["history"][0]["val_forces_rmse"]
    scratch_first = mil53_model.metrics["history"][0]["val_forces_rmse"]
    assert first < 0.7 * scratch_first


@pytest.mark.slow
@pytest.mark.parametrize("stress", ["none", "some"])
def test_frames_without_stress_still_train(stress, mil53_frames_path, tmp_path):
    """No stress at all: nequip's energy+forces loss; stress on some frames: the rest NaN."""
    frames = []
    for i, atoms in enumerate(read_frames(mil53_frames_path)[::8]):
        if stress == "none" or i % 2:
            ref = labels(atoms)
            atoms = label(atoms, ref["energy"], ref["forces"])  # a copy without the stress
        frames.append(atoms)
    data = tmp_path / "frames.extxyz"
    write_frames(data, frames)
    settings = TrainSettings.from_template(None, epochs=2, num_features=8, num_layers=1)
    model = train(data, tmp_path / "m", settings=settings, device="cpu", compile=False, threads=1)
    m = model.metrics
    assert m["stress_trained"] is (stress == "some")
    assert ("nequip.train.EnergyForceLoss" in " ".join(m["config"]["overrides"])) is (
        stress == "none"
    )
    assert all(np.isfinite(h["val_forces_rmse"]) for h in m["history"])
    assert all(("val_stress_rmse" in h) is (stress == "some") for h in m["history"])


@pytest.mark.slow
def test_a_diverging_training_stops_at_once_and_says_so(mil53_frames_path, tmp_path):
    """A learning rate that blows the weights up: NaN errors end the run, no model is made."""
    data = tmp_path / "frames.extxyz"
    write_frames(data, read_frames(mil53_frames_path)[::8])
    settings = TrainSettings.from_template(
        None, epochs=6, num_features=8, num_layers=1, learning_rate=1e30
    )
    with pytest.raises(ModelError, match=r"progress\.json: training diverged at epoch 1") as err:
        train(data, tmp_path / "m", settings=settings, device="cpu", compile=False, threads=1)
    assert "validation force RMSE nan" in str(err.value) and "learning_rate" in str(err.value)
    history = json.loads((tmp_path / "m/progress.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1] and history[0]["diverged"] is True
    assert not (tmp_path / "m/model.nequip.zip").exists()


def test_training_input_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.extxyz"
    empty.write_text("")
    with pytest.raises(ModelError, match=r"empty\.extxyz: no labeled frames"):
        train(empty, tmp_path / "m")

    unlabeled = tmp_path / "unlabeled.extxyz"
    write_frames(unlabeled, [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])] * 2)
    with pytest.raises(ModelError, match=r"unlabeled\.extxyz: frame 0 has no energy"):
        train(unlabeled, tmp_path / "m")

    # failed single points never count as training data
    failed = tmp_path / "failed.extxyz"
    h2 = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    write_frames(failed, [label(h2, -1.0, np.zeros((2, 3)), status="failed")] * 3)
    with pytest.raises(ModelError, match="no labeled frames"):
        train(failed, tmp_path / "m")

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("run: [train]\nmax_epochs: ten\n")
    with pytest.raises(ModelError, match=r"bad\.yaml: data: missing"):
        TrainSettings.from_template(bad_yaml)


def test_template_knobs_are_read_and_type_checked(tmp_path):
    shipped = TrainSettings.from_template()
    assert (shipped.r_max, shipped.l_max, shipped.num_layers, shipped.num_features) == (
        5.0,
        1,
        2,
        32,
    )
    assert shipped.stress_weight > 0  # NPT walkers need a model trained on stress
    text = (Path(__file__).parents[2] / "templates/mil53-al/nequip.yaml").read_text()
    broken = tmp_path / "nequip.yaml"
    broken.write_text(text.replace("max_epochs: 200", "max_epochs: ten"))
    with pytest.raises(ModelError, match=r"nequip\.yaml: max_epochs: expected int"):
        TrainSettings.from_template(broken)
    assert TrainSettings.from_template(None, epochs=7).epochs == 7


def test_energy_shifts_from_data():
    """Per-type shifts: the mean energy per atom for one composition, exact for a linear model."""
    cell = Atoms("CuAl", positions=[[0, 0, 0], [1.5, 1.5, 1.5]], cell=[3, 3, 3], pbc=True)
    per_type = {"Al": -3.0, "Cu": -5.0}

    def frame(symbols: str) -> Atoms:
        atoms = Atoms(symbols)
        atoms.positions = np.arange(len(atoms) * 3).reshape(-1, 3) * 1.0
        energy = sum(per_type[s] for s in atoms.get_chemical_symbols())
        return label(atoms, energy, np.zeros((len(atoms), 3)))

    same = [label(cell, -8.0 + d, np.zeros((2, 3))) for d in (-0.1, 0.0, 0.1)]
    assert energy_shifts(same, ["Al", "Cu"], None, []) == pytest.approx({"Al": -4.0, "Cu": -4.0})
    mixed = [frame("CuAl"), frame("Cu3Al"), frame("CuAl2")]
    assert energy_shifts(mixed, ["Al", "Cu"], None, []) == pytest.approx(per_type, abs=1e-4)
    given = {"Al": -1.0, "Cu": -2.0, "O": -3.0}
    assert energy_shifts(mixed, ["Al", "Cu"], given, []) == {"Al": -1.0, "Cu": -2.0}
    with pytest.raises(ModelError, match="no energy for element"):
        energy_shifts(mixed, ["Al", "Cu"], {"Al": -1.0}, [])


@pytest.mark.slow
def test_species_and_unknown_element(mil53_model):
    assert model_species(mil53_model.directory) == MIL53_SPECIES
    assert model_species(mil53_model.package) == MIL53_SPECIES
    assert model_species(mil53_model.compiled) == MIL53_SPECIES
    copper = Atoms("Cu4", positions=np.eye(4, 3) * 2.0, cell=[8, 8, 8], pbc=True)
    copper.calc = EMT()
    frame = label(copper, copper.get_potential_energy(), copper.get_forces())
    with pytest.raises(ModelError, match=r"element\(s\) Cu not in the model"):
        evaluate(mil53_model.package, [frame], device="cpu")
    assert labels(frame)["forces"].shape == (4, 3)


def test_frames_that_carry_their_cv_are_scored_per_cv_bin():
    """score() of any calculator: frames with info["cv"] (as `hillwalker testset` writes them)
    get RMSEs per CV bin too (4 bins of equal width); the bins' numbers are the subsets'."""
    from ase.build import bulk

    from hillwalker.engines.nequip.deploy import score

    frames = []
    for i in range(8):
        atoms = bulk("Cu", cubic=True)
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = None
        # the labels are off by 10 meV/atom x i and 10 meV/Å x i: errors grow along the CV
        frames.append(label(atoms, energy + 0.01 * i * len(atoms), forces + 0.01 * i, cv={"v": i}))
    got = score(EMT(), frames)
    bins = got["by_cv_bin"]
    assert bins["cv"] == "v" and [b["n_frames"] for b in bins["bins"]] == [2, 2, 2, 2]
    for b, pair in zip(bins["bins"], ([0, 1], [2, 3], [4, 5], [6, 7]), strict=True):
        want = 10.0 * np.sqrt(np.mean(np.square(pair)))
        assert b["energy_rmse_mev_per_atom"] == pytest.approx(want, rel=1e-6)
        assert b["force_rmse_mev_per_ang"] == pytest.approx(want, rel=1e-6)
        assert b["lo"] <= pair[0] and pair[1] <= b["hi"]
    # the whole set's RMSE is unchanged by the binning; frames without a CV get no bins
    assert got["energy_rmse_mev_per_atom"] == pytest.approx(
        10.0 * np.sqrt(np.mean(np.square(range(8))))
    )
    for frame in frames:
        del frame.info["cv"]
    assert "by_cv_bin" not in score(EMT(), frames)
