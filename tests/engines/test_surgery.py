"""Model surgery across chemical elements on a real (tiny) NequIP model of an Al-Cu alloy (EMT
labels): the transferred model before training equals the source on relabeled frames, trains,
runs MD, and refuses maps it cannot do.

The source model has every kind of per-type value the builder takes: per-type neighbour
normalisation, per-type energy scales, per-edge-type cutoffs, two interaction layers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet
from conftest import NEQUIP_TEST_THREADS
from typer.testing import CliRunner

from hillwalker.cli import app
from hillwalker.engines.dataset import label, labels, write_frames
from hillwalker.engines.nequip import (
    ModelError,
    TrainSettings,
    default_template,
    load_calculator,
    model_species,
    train,
)
from hillwalker.engines.nequip.surgery import (
    SpeciesTransfer,
    frozen_layers,
    parse_species_map,
    transfer_species,
)

runner = CliRunner()


def _alloy_frames(symbols: tuple[str, str], n: int, seed: int) -> list[Atoms]:
    """Rattled 8-atom fcc cells of two elements (2 of the second), labeled by EMT."""
    frames = []
    rng = np.random.default_rng(seed)
    for i in range(n):
        atoms = bulk(symbols[0], "fcc", a=3.9, cubic=True).repeat((2, 1, 1))
        atoms.symbols[rng.choice(len(atoms), 2, replace=False)] = symbols[1]
        atoms.rattle(0.08, seed=seed * 100 + i)
        atoms.calc = EMT()
        frames.append(
            label(atoms, atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress())
        )
    return frames


def _settings(**changes: object) -> TrainSettings:
    base: dict[str, object] = {
        "epochs": 2,
        "num_layers": 2,
        "num_features": 8,
        "r_max": 4.0,
        "batch_size": 2,
        "learning_rate": 0.01,
    }
    return TrainSettings.from_template(None, **{**base, **changes})


@pytest.fixture(scope="module")
def source_model(tmp_path_factory: pytest.TempPathFactory):
    """A tiny Cu/Al model whose config holds per-type and per-edge-type values."""
    root = tmp_path_factory.mktemp("surgery_source")
    config = yaml.safe_load(default_template().read_text())
    model = config["training_module"]["model"]
    model["avg_num_neighbors"] = "${training_data_stats:per_type_num_neighbors_mean}"
    model["per_type_energy_scales"] = "${training_data_stats:per_type_forces_rms}"
    model["per_edge_type_cutoff"] = {"Al": 3.5, "Cu": {"Al": 3.8, "Cu": 4.0}}
    template = root / "nequip.yaml"
    template.write_text(yaml.safe_dump(config, sort_keys=False))
    data = root / "cu_al.extxyz"
    write_frames(data, _alloy_frames(("Cu", "Al"), 8, seed=1))
    return train(
        data,
        root / "model",
        template=template,
        settings=_settings(),
        device="cpu",
        compile=False,
        threads=NEQUIP_TEST_THREADS,
    )


def _probe(symbols: list[str]) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.9, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.1, seed=5)
    atoms.set_chemical_symbols(symbols)
    return atoms


@pytest.mark.parametrize(
    ("species_map", "keep", "types", "symbols"),
    [
        # replace: Ag takes Cu's slot
        ({"Ag": "Cu"}, (), ["Al", "Ag"], ["Ag", "Al", "Ag", "Ag", "Al", "Ag", "Ag", "Ag"]),
        # add beside the kept sources: Ag from Cu, Ni from Al, appended
        (
            {"Ag": "Cu", "Ni": "Al"},
            ("Cu", "Al"),
            ["Al", "Cu", "Ag", "Ni"],
            ["Ag", "Al", "Cu", "Ni", "Al", "Ag", "Cu", "Ni"],
        ),
    ],
)
def test_transferred_model_equals_the_source_on_relabeled_frames(
    source_model, tmp_path, species_map, keep, types, symbols
):
    source_types = model_species(source_model.package)
    assert source_types == ["Al", "Cu"]
    shifts = {new: -1.5 - i for i, new in enumerate(species_map)}  # a chosen energy reference
    transfer = transfer_species(
        source_model.directory,
        tmp_path / "t.nequip.zip",
        species_map,
        keep=keep,
        energy_shifts=shifts,
        threads=NEQUIP_TEST_THREADS,
    )
    assert transfer.type_names == types == model_species(transfer.package)
    assert transfer.r_max == 4.0
    record = json.loads(transfer.record.read_text())
    assert record["check"]["force_ev_per_ang"] < 1e-5  # its own check on the example frame
    # the energy reference change, recorded exactly: the new shift minus the source's
    config = source_model.metrics["config"]["per_type_energy_shifts"]
    for new, old in species_map.items():
        assert transfer.energy_shifts[new] == shifts[new]
        assert transfer.shift_changes[new] == pytest.approx(shifts[new] - config[old], abs=1e-9)
        assert abs(transfer.shift_changes[new]) > 0.1

    new_calc = load_calculator(transfer.package, device="cpu", threads=NEQUIP_TEST_THREADS)
    old_calc = load_calculator(source_model.package, device="cpu", threads=NEQUIP_TEST_THREADS)
    atoms = _probe(symbols)
    atoms.calc = new_calc
    relabeled = transfer.relabeled(atoms)
    assert set(relabeled.get_chemical_symbols()) <= set(source_types)
    relabeled.calc = old_calc
    offset = transfer.energy_offset(atoms.get_chemical_symbols())
    assert atoms.get_potential_energy() == pytest.approx(
        relabeled.get_potential_energy() + offset, abs=1e-5
    )
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 0.1  # a rattled frame: forces to compare
    np.testing.assert_allclose(forces, relabeled.get_forces(), atol=1e-5)
    np.testing.assert_allclose(atoms.get_stress(), relabeled.get_stress(), atol=1e-6)
    # each new element really is its source's copy: given the other source it differs
    if len(species_map) == 2:
        swapped = relabeled.copy()
        swapped.set_chemical_symbols(
            [{"Ag": "Al", "Ni": "Cu"}.get(s, s) for s in atoms.get_chemical_symbols()]
        )
        swapped.calc = old_calc
        assert np.abs(swapped.get_forces() - forces).max() > 1e-3

    # the new package's config builds the model on its own: per-type values under new names
    again = transfer_species(
        transfer.package, tmp_path / "again.nequip.zip", {"Pd": types[-1]}, keep=[types[-1]]
    )
    assert again.type_names == [*types, "Pd"]


@pytest.mark.slow
def test_transferred_package_fits_its_shifts_trains_and_runs_md(source_model, tmp_path):
    """Replace Cu by Ag, fit Ag's energy reference to Ag-Al frames, train two epochs from the
    transferred package, then run MD with the trained model."""
    frames = _alloy_frames(("Ag", "Al"), 6, seed=2)
    transfer = transfer_species(
        source_model.package,
        tmp_path / "ag.nequip.zip",
        {"Ag": "Cu"},
        fit_to=frames,
        r_max=4.0,
        threads=NEQUIP_TEST_THREADS,
    )
    # the fitted reference leaves no mean energy error on the frames it was fitted to
    calc = load_calculator(transfer.package, device="cpu", threads=NEQUIP_TEST_THREADS)
    residuals, counts = [], []
    for atoms in frames:
        probe = atoms.copy()
        probe.calc = calc
        residuals.append(labels(atoms)["energy"] - probe.get_potential_energy())
        counts.append(atoms.get_chemical_symbols().count("Ag"))
    assert abs(np.dot(counts, residuals)) / np.dot(counts, counts) < 1e-5
    assert abs(transfer.shift_changes["Ag"]) > 1e-3

    data = tmp_path / "ag_al.extxyz"
    write_frames(data, frames)
    model = train(
        data,
        tmp_path / "trained",
        settings=_settings(),
        init_from=transfer.package,
        device="cpu",
        compile=True,  # what walkers run: AOTInductor-compiled
        threads=NEQUIP_TEST_THREADS,
    )
    assert model.metrics["species"] == ["Al", "Ag"]
    assert model.metrics["config"]["init_from"] == str(transfer.package)
    assert all(np.isfinite(h["val_forces_rmse"]) for h in model.metrics["history"])
    assert model.compiled is not None

    atoms = frames[0].copy()
    atoms.calc = load_calculator(model.compiled, device="cpu", threads=NEQUIP_TEST_THREADS)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    before = atoms.positions.copy()
    start = atoms.get_potential_energy() + atoms.get_kinetic_energy()
    VelocityVerlet(atoms, timestep=1.0 * units.fs).run(20)
    assert np.all(np.isfinite(atoms.get_forces()))
    assert np.abs(atoms.positions - before).max() > 0.05  # it moved
    # NVE: the total energy is kept (to the float32 model's and the 1 fs step's precision)
    assert abs(atoms.get_potential_energy() + atoms.get_kinetic_energy() - start) < 0.02


def test_a_same_call_reuses_the_package_and_layers_can_be_frozen(source_model, tmp_path):
    out = tmp_path / "ag.nequip.zip"
    first = transfer_species(source_model.package, out, {"Ag": "Cu"})
    stamp = out.stat().st_mtime_ns
    second = transfer_species(source_model.package, out, {"Ag": "Cu"})
    assert out.stat().st_mtime_ns == stamp and second.shift_changes == first.shift_changes
    assert SpeciesTransfer.read(first.record).type_names == ["Al", "Ag"]
    assert first.shift_changes == {"Ag": 0.0}  # no shift asked for: the source's
    third = transfer_species(source_model.package, out, {"Ag": "Cu"}, energy_shifts={"Ag": -2.0})
    assert out.stat().st_mtime_ns != stamp and third.energy_shifts["Ag"] == -2.0

    from nequip.model.saved_models.load_utils import load_saved_model

    net = load_saved_model(str(out))
    names = [n for n, _ in net.named_parameters()]
    trained = {id(p) for p in frozen_layers(net, 1)}
    frozen = [n for n, p in net.named_parameters() if id(p) not in trained]
    assert frozen and all(("layer0_convnet." in n or "type_embed." in n) for n in frozen)
    assert any("layer1_convnet." in n for n in names if n not in frozen)


def test_bad_species_maps_are_clear_errors_naming_the_file(source_model, tmp_path):
    package = source_model.package
    out = tmp_path / "x.nequip.zip"
    with pytest.raises(ModelError, match=r"model\.nequip\.zip: species map Ge=Si: the model has no Si \(model species: Al Cu\)"):  # fmt: skip
        transfer_species(package, out, {"Ge": "Si"})
    with pytest.raises(ModelError, match=r"new element 'Qq' is not a chemical symbol"):
        transfer_species(package, out, {"Qq": "Cu"})
    with pytest.raises(ModelError, match=r"Al is already a type of this model"):
        transfer_species(package, out, {"Al": "Cu"})
    with pytest.raises(ModelError, match=r"model\.nequip\.zip: cutoff 4 Å, but 5 Å was asked for"):
        transfer_species(package, out, {"Ag": "Cu"}, r_max=5.0)
    with pytest.raises(ModelError, match=r"keep: Al is not a source element"):
        transfer_species(package, out, {"Ag": "Cu"}, keep=["Al"])
    assert not out.exists() and list(tmp_path.iterdir()) == []
    for bad in (["Ge"], ["Ge=Si", "Ge=Al"], ["=Si"]):
        with pytest.raises(ModelError, match=r"--species-map"):
            parse_species_map(bad)
    assert parse_species_map(["Ge=Si", " Ga = Al "]) == {"Ge": "Si", "Ga": "Al"}

    # the command line: one error line naming the model file, before any training
    frames = tmp_path / "frames.extxyz"
    write_frames(frames, _alloy_frames(("Ag", "Al"), 3, seed=3))
    args = ["train", str(frames), "-o", str(tmp_path / "m"), "--init", str(package)]
    result = runner.invoke(app, [*args, "--species-map", "Ag=Si"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "model.nequip.zip" in result.stderr and "has no Si" in result.stderr
    result = runner.invoke(app, [*args, "--species-map", "Ag"])
    assert result.exit_code == 1 and "expected NEW=OLD" in result.stderr
    result = runner.invoke(app, ["train", str(frames), "-o", str(tmp_path / "m"), "--species-map", "Ag=Cu"])  # fmt: skip
    assert result.exit_code == 1 and "--species-map needs --init" in result.stderr
    result = runner.invoke(app, ["train", str(frames), "-o", str(tmp_path / "m"), "--refit-references"])  # fmt: skip
    assert result.exit_code == 1 and "--refit-references needs --init" in result.stderr


def test_refit_all_moves_every_reference_by_the_change_of_level(source_model, tmp_path):
    """Fine-tuning to another level: every element's energy shift is re-fitted. Frames of three
    compositions (1-3 Al in 8), and the same frames at a 'level' whose references differ by
    +0.7 eV per Cu and -0.3 eV per Al: the two refits differ by exactly those; forces keep."""
    frames = []
    for n_al in (1, 2, 3):
        for i in range(2):
            atoms = bulk("Cu", "fcc", a=3.9, cubic=True).repeat((2, 1, 1))
            atoms.symbols[list(range(n_al))] = "Al"
            atoms.rattle(0.08, seed=10 * n_al + i)
            atoms.calc = EMT()
            frames.append(label(atoms, atoms.get_potential_energy(), atoms.get_forces()))
    shifted = []
    for atoms in frames:
        symbols = atoms.get_chemical_symbols()
        offset = 0.7 * symbols.count("Cu") - 0.3 * symbols.count("Al")
        shifted.append(label(atoms, labels(atoms)["energy"] + offset, labels(atoms)["forces"]))
    same = transfer_species(
        source_model.package, tmp_path / "same.nequip.zip", {}, fit_to=frames, refit_all=True
    )
    other = transfer_species(
        source_model.package, tmp_path / "other.nequip.zip", {}, fit_to=shifted, refit_all=True
    )
    assert other.type_names == same.type_names == model_species(source_model.package)
    assert other.shift_changes["Cu"] - same.shift_changes["Cu"] == pytest.approx(0.7, abs=1e-4)
    assert other.shift_changes["Al"] - same.shift_changes["Al"] == pytest.approx(-0.3, abs=1e-4)
    probe = frames[3].copy()
    probe.calc = load_calculator(other.package, device="cpu", threads=NEQUIP_TEST_THREADS)
    reference = frames[3].copy()
    reference.calc = load_calculator(source_model.package, device="cpu", threads=1)
    np.testing.assert_allclose(probe.get_forces(), reference.get_forces(), atol=1e-5)
    with pytest.raises(ModelError, match="empty species map"):
        transfer_species(source_model.package, tmp_path / "x.nequip.zip", {}, fit_to=frames)


def test_frozen_layers_keep_their_start_weights_in_a_real_training(source_model, tmp_path):
    """Two epochs from the source model with frozen_layers=1: the type embedding and the first
    interaction layer come out as they went in, the second layer trained."""
    from nequip.model.saved_models.load_utils import load_saved_model

    data = tmp_path / "cu_al.extxyz"
    write_frames(data, _alloy_frames(("Cu", "Al"), 6, seed=4))
    model = train(
        data,
        tmp_path / "frozen",
        settings=_settings(frozen_layers=1, learning_rate=0.05),
        init_from=source_model.package,
        device="cpu",
        compile=False,
        threads=NEQUIP_TEST_THREADS,
    )
    before = dict(load_saved_model(str(source_model.package)).named_parameters())
    after = dict(load_saved_model(str(model.package)).named_parameters())
    assert before.keys() == after.keys()
    moved = {name for name in before if not np.array_equal(before[name].detach().numpy(),
                                                          after[name].detach().numpy())}  # fmt: skip
    frozen = {n for n in before if "layer0_convnet." in n or "type_embed." in n}
    assert frozen and not moved & frozen, sorted(moved & frozen)
    assert any("layer1_convnet." in n for n in moved), sorted(moved)
