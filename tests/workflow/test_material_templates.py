"""``hillwalker templates`` and ``hillwalker new``: shipped templates, a new material from the generic
template (MIL-53(Cr) ``MINVUA`` from CoRE MOF, which no template ships), atomic creation."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.build import bulk
from typer.testing import CliRunner

from hillwalker.cli import app
from hillwalker.config import load_campaign
from hillwalker.engines.cp2k import Level
from hillwalker.material_templates import GENERIC, shipped_templates, templates_root
from hillwalker.validate import read_structure

runner = CliRunner()
DATA = Path(__file__).resolve().parents[1] / "data"
MINVUA = DATA / "MINVUA.cif"


def _cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def _package_files(name: str) -> dict[str, bytes]:
    root = Path(str(resources.files("hillwalker.templates") / name))
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def _nothing_left_in(parent: Path) -> None:
    """No campaign and no staging directory (``.NAME.new-*``) left behind after an error."""
    assert list(parent.iterdir()) == [], list(parent.iterdir())


# --- templates --------------------------------------------------------------------------------


def test_templates_lists_the_shipped_materials_with_descriptions() -> None:
    code, out = _cli("templates")
    assert code == 0, out
    lines = {
        line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")
    }
    assert "MIL-53(Al) breathing" in lines["mil53-al"]
    assert "alanine dipeptide in vacuum" in lines["alanine-dipeptide"]
    assert GENERIC not in lines  # the generic template is not a material
    assert {"mil53-al", "alanine-dipeptide"} <= {t.name for t in shipped_templates()}


@pytest.mark.parametrize("name", ["mil53-al", "alanine-dipeptide"])
def test_new_from_template_copies_every_file(tmp_path: Path, name: str) -> None:
    target = tmp_path / "campaign"
    code, out = _cli("new", target, "--template", name)
    assert code == 0, out
    assert _files(target) == {k: v for k, v in _package_files(name).items() if k != "__init__.py"}
    load_campaign(target)  # the copied campaign.yaml is valid
    # the leftovers of staging are gone: only the campaign
    assert [p.name for p in tmp_path.iterdir()] == ["campaign"]


def test_shipped_structures_are_what_the_readmes_say() -> None:
    mil53 = read_structure(Path(str(templates_root() / "mil53-al" / "structure.cif")))
    assert len(mil53) == 38
    assert mil53.get_chemical_formula(mode="hill") == "C16H10Al2O10"
    assert mil53.get_volume() == pytest.approx(473.37, abs=0.01)
    ala = read_structure(Path(str(templates_root() / "alanine-dipeptide" / "structure.xyz")))
    assert len(ala) == 22 and not ala.pbc.any()
    assert ala.get_chemical_formula(mode="hill") == "C6H12N2O2"
    # φ = C5-N7-CA9-C15, ψ = N7-CA9-C15-N17 (1-based, as in plumed.dat): C7eq
    phi = (ala.get_dihedral(4, 6, 8, 14) + 180) % 360 - 180
    psi = (ala.get_dihedral(6, 8, 14, 16) + 180) % 360 - 180
    assert phi == pytest.approx(-82.5, abs=0.5)
    assert psi == pytest.approx(77.0, abs=0.5)
    d = ala.get_all_distances()
    assert d[np.triu_indices(22, 1)].min() > 0.95  # no clashing atoms
    # L-alanine: (C−CA)×(CB−CA)·(CA−HA) > 0 (the "CORN" rule)
    ca, c, cb, ha = (ala.positions[i - 1] for i in (9, 15, 11, 10))
    assert np.dot(np.cross(c - ca, cb - ca), ca - ha) > 0


def test_new_refuses_a_non_empty_directory_and_leaves_it_alone(tmp_path: Path) -> None:
    target = tmp_path / "campaign"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    code, out = _cli("new", target, "--template", "mil53-al")
    assert code != 0
    assert f"{target}: exists and is not an empty directory" in out
    assert _files(target) == {"notes.txt": b"mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["campaign"]


def test_new_fills_an_empty_directory(tmp_path: Path) -> None:
    target = tmp_path / "campaign"
    target.mkdir()
    code, out = _cli("new", target, "--template", "alanine-dipeptide")
    assert code == 0, out
    assert (target / "structure.xyz").is_file()


def test_new_with_an_unknown_template_names_the_shipped_ones(tmp_path: Path) -> None:
    code, out = _cli("new", tmp_path / "campaign", "--template", "mil-53")
    assert code != 0
    assert "--template mil-53: no such template; shipped: " in out
    assert "alanine-dipeptide" in out and "mil53-al" in out
    _nothing_left_in(tmp_path)


def test_new_needs_exactly_one_source(tmp_path: Path) -> None:
    code, out = _cli("new", tmp_path / "c")
    assert code != 0 and "--template NAME" in out
    code, out = _cli("new", tmp_path / "c", "--template", "mil53-al", "--structure", MINVUA)
    assert code != 0 and "not both" in out
    _nothing_left_in(tmp_path)


# --- a new material: MIL-53(Cr) from CoRE MOF ---------------------------------------------------


def test_new_material_from_a_cif_validates_end_to_end(tmp_path: Path) -> None:
    target = tmp_path / "mil53-cr"
    code, out = _cli("new", target, "--structure", MINVUA, "--primitive", "--temperature", "400")
    assert code == 0, out
    assert sorted(_files(target)) == [
        "README.md",
        "campaign.yaml",
        "levels/xtb.inp",
        "nequip.yaml",
        "plumed.dat",
        "structure.cif",
    ]
    for text in (p.read_text() for p in target.rglob("*") if p.is_file()):
        assert "{{" not in text  # every placeholder filled
    campaign = load_campaign(target)
    assert campaign.name == "mil53-cr"
    assert campaign.material.level == "levels/xtb.inp"
    assert campaign.walkers.ensemble == "npt" and campaign.walkers.temperature == 400.0
    cell = read_structure(target / "structure.cif")
    assert len(cell) == 38  # MINVUA's 76-atom cell holds two primitive cells
    assert cell.get_volume() == pytest.approx(743.07, abs=0.05)
    nequip = yaml.safe_load((target / "nequip.yaml").read_text())
    assert nequip["stress_weight"] == 1000.0  # NPT: trained on stress

    code, out = _cli("validate", target)
    assert code == 0, out
    match = re.search(r"CV v\s+([\d.]+) nm³ = ([\d.]+) Å³", out)
    assert match, out
    assert float(match.group(2)) == pytest.approx(743.1, abs=0.1)
    assert "TEMP=400" in (target / "plumed.dat").read_text()


def test_new_material_keeps_the_structure_unchanged_by_default(tmp_path: Path) -> None:
    target = tmp_path / "cr"
    code, out = _cli("new", target, "--structure", MINVUA, "--level", "pbe-d3")
    assert code == 0, out
    assert (target / "structure.cif").read_bytes() == MINVUA.read_bytes()
    level_text = (target / "levels" / "pbe-d3.inp").read_text()
    for element, basis, potential in (
        ("H", "DZVP-MOLOPT-SR-GTH-q1", "GTH-PBE-q1"),
        ("C", "DZVP-MOLOPT-SR-GTH-q4", "GTH-PBE-q4"),
        ("O", "DZVP-MOLOPT-SR-GTH-q6", "GTH-PBE-q6"),
        ("Cr", "DZVP-MOLOPT-SR-GTH-q14", "GTH-PBE-q14"),
    ):
        assert f"&KIND {element}\n   BASIS_SET {basis}\n   POTENTIAL {potential}\n" in level_text
    assert "&KIND Al" not in level_text  # only the structure's elements
    # the engine's own check against /usr/share/cp2k passes for every element
    Level.from_file(target / "levels" / "pbe-d3.inp").check_elements(["H", "C", "O", "Cr"])
    assert load_campaign(target).material.level == "levels/pbe-d3.inp"


def test_pbe_d3_refuses_an_element_without_basis_set(tmp_path: Path) -> None:
    europium = tmp_path / "eu.xyz"
    bulk("Eu", "bcc", a=4.58).write(europium, format="extxyz")
    code, out = _cli("new", tmp_path / "eu", "--structure", europium, "--level", "pbe-d3")
    assert code != 0
    assert re.search(
        r"--level pbe-d3: no MOLOPT DZVP basis set with a matching GTH-PBE potential for Eu in "
        r".*BASIS_MOLOPT and .*GTH_POTENTIALS",
        out,
    ), out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eu.xyz"]


def test_new_molecule_with_a_torsion_validates(tmp_path: Path) -> None:
    source = Path(str(templates_root() / "alanine-dipeptide" / "structure.xyz"))
    target = tmp_path / "ala"
    code, out = _cli("new", target, "--structure", source, "--cv", "torsion:5,7,9,15")
    assert code == 0, out
    campaign = load_campaign(target)
    assert campaign.walkers.ensemble == "nvt"
    assert campaign.generation0.cell_strain == 0.0
    assert yaml.safe_load((target / "nequip.yaml").read_text())["stress_weight"] == 0.0
    assert "t: TORSION ATOMS=5,7,9,15" in (target / "plumed.dat").read_text()
    code, out = _cli("validate", target)
    assert code == 0, out
    assert re.search(r"CV t\s+-1\.44\d+ rad = -82\.5°", out), out


@pytest.mark.parametrize(
    ("structure", "cv", "message"),
    [
        ("ala", "volume", "--cv volume: the structure has no periodic cell, so no volume"),
        ("cr", "distance:1,99", "--cv distance:1,99: atom 99 does not exist (the structure has 76"),
        ("cr", "torsion:1,2,3", "--cv torsion:1,2,3: torsion takes 4 atom numbers"),
        ("cr", "distance:3,3", "--cv distance:3,3: the atoms must be distinct"),
        ("cr", "rmsd", "--cv rmsd: unknown CV"),
    ],
)
def test_new_refuses_a_cv_that_cannot_work(
    tmp_path: Path, structure: str, cv: str, message: str
) -> None:
    source = {
        "ala": Path(str(templates_root() / "alanine-dipeptide" / "structure.xyz")),
        "cr": MINVUA,
    }[structure]
    work = tmp_path / "work"
    work.mkdir()
    code, out = _cli("new", work / "c", "--structure", source, "--cv", cv)
    assert code != 0
    assert message in out, out
    _nothing_left_in(work)


def test_new_refuses_an_unreadable_structure(tmp_path: Path) -> None:
    broken = tmp_path / "broken.cif"
    broken.write_text("data_x\n_cell_length_a 5\nloop_\n_atom_site_label\n")
    work = tmp_path / "work"
    work.mkdir()
    code, out = _cli("new", work / "c", "--structure", broken)
    assert code != 0
    assert f"{broken}: unreadable structure" in out
    code, out = _cli("new", work / "c", "--structure", tmp_path / "absent.cif")
    assert code != 0
    assert f"{tmp_path / 'absent.cif'}: file not found" in out
    _nothing_left_in(work)


def test_new_material_trains_like_the_reference_config(tmp_path: Path) -> None:
    # Below its header, a new material's nequip.yaml is the shipped MIL-53 one: same model,
    # same training, only the stress weight depends on the structure having a cell.
    source = Path(str(templates_root() / "alanine-dipeptide" / "structure.xyz"))
    target = tmp_path / "ala"
    code, out = _cli("new", target, "--structure", source, "--cv", "distance:5,17")
    assert code == 0, out
    made = yaml.safe_load((target / "nequip.yaml").read_text())
    reference = yaml.safe_load((templates_root() / "mil53-al" / "nequip.yaml").read_text())
    assert made["stress_weight"] == 0.0
    assert {k: v for k, v in made.items() if k != "stress_weight"} == {
        k: v for k, v in reference.items() if k != "stress_weight"
    }


@pytest.mark.slow
def test_new_material_level_labels_a_frame(tmp_path: Path) -> None:
    """The generated xTB level really runs: one CP2K single point of MIL-53(Cr) (~20–60 s)."""
    from hillwalker.engines.cp2k import single_point

    target = tmp_path / "cr"
    code, out = _cli("new", target, "--structure", MINVUA, "--primitive")
    assert code == 0, out
    atoms = read_structure(target / "structure.cif")
    result = single_point(atoms, Level.from_file(target / "levels" / "xtb.inp"), tmp_path / "sp")
    assert result.status == "done", result
    assert result.forces is not None and result.forces.shape == (38, 3)
    assert result.stress is not None and result.stress.shape == (6,)


def test_alanine_level_labels_its_start_structure(tmp_path: Path) -> None:
    """The shipped non-periodic xTB level runs in CP2K on the molecule (~3 s): no stress."""
    from hillwalker.engines.cp2k import single_point

    root = templates_root() / "alanine-dipeptide"
    atoms = read_structure(Path(str(root / "structure.xyz")))
    level = Level.from_file(Path(str(root / "levels" / "xtb.inp")))
    result = single_point(atoms, level, tmp_path / "sp", timeout=120)
    assert result.status == "done", result
    assert result.stress is None
    assert result.forces is not None and result.forces.shape == (22, 3)
    # relaxed at this level when the template was made: the forces are small
    assert np.abs(result.forces).max() < 0.05  # eV/Å
