"""``hillwalker validate`` on broken copies of the shipped templates.

Each case copies a shipped template with ``hillwalker new``, breaks one thing, runs
``hillwalker validate`` and checks the specific error (file and key or line), the non-zero exit,
and that the directory is byte-for-byte what it was (validate writes nothing). Everything is real:
the PLUMED kernel, cp2k-input-tools on the level, CP2K's data files, the NequIP config's classes.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import ase.io
import pytest
from ase.build import bulk
from typer.testing import CliRunner

from hillwalker.cli import app

runner = CliRunner()


def _snapshot(directory: Path) -> dict[str, str]:
    """Every path under ``directory`` with the hash of its content (directories: "dir")."""
    found = {}
    for p in sorted(directory.rglob("*")):
        rel = str(p.relative_to(directory))
        found[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def _new(tmp_path: Path, template: str) -> Path:
    target = tmp_path / "campaign"
    result = runner.invoke(app, ["new", str(target), "--template", template])
    assert result.exit_code == 0, result.output
    return target


def _validate(directory: Path, *extra: str) -> tuple[int, str]:
    """Run validate; check it wrote nothing; return (exit code, stdout + stderr)."""
    before = _snapshot(directory)
    result = runner.invoke(app, ["validate", str(directory), *extra])
    assert _snapshot(directory) == before, "validate changed the campaign directory"
    return result.exit_code, result.output


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} is not in {path}"
    path.write_text(text.replace(old, new, 1))


def _append(path: Path, text: str) -> int:
    """Append lines; return the 1-based number of the first appended line."""
    current = path.read_text()
    if not current.endswith("\n"):
        current += "\n"
    path.write_text(current + text)
    return current.count("\n") + 1


# --- the shipped templates are valid -----------------------------------------------------------


def test_mil53_validates_and_prints_the_start_volume(tmp_path: Path) -> None:
    campaign = _new(tmp_path, "mil53-al")
    code, out = _validate(campaign)
    assert code == 0, out
    assert "38 atoms" in out
    # safety.keep_bonds (on in the template): per Al(OH)(BDC) 4 C-O, 8 C-C, 4 C-H, 1 O-H
    assert "34 covalent bonds kept" in out
    # PLUMED's VOLUME in nm³, converted: CoRE MOF SABWAU_SL is 473.37 Å³
    match = re.search(r"CV v\s+([\d.]+) nm³ = ([\d.]+) Å³", out)
    assert match, out
    assert float(match.group(1)) == pytest.approx(0.47337, abs=1e-4)
    assert float(match.group(2)) == pytest.approx(473.4, abs=0.1)
    assert "ok:" in out


def test_the_multifidelity_example_validates() -> None:
    # two levels (PBE-D3 in CP2K, GFN1-xTB in tblite) and every labeling knob, as shipped
    example = Path(__file__).parents[2] / "examples" / "mil53-multifidelity"
    code, out = _validate(example)
    assert code == 0 and "ok:" in out, out


def test_alanine_validates_and_prints_the_torsions(tmp_path: Path) -> None:
    campaign = _new(tmp_path, "alanine-dipeptide")
    code, out = _validate(campaign)
    assert code == 0, out
    phi = re.search(r"CV phi\s+(-?[\d.]+) rad = (-?[\d.]+)°", out)
    psi = re.search(r"CV psi\s+(-?[\d.]+) rad = (-?[\d.]+)°", out)
    assert phi and psi, out
    # the C7eq conformer of structure.xyz (ase's own dihedral gives -82.5° and 77.0°)
    assert float(phi.group(2)) == pytest.approx(-82.5, abs=0.2)
    assert float(psi.group(2)) == pytest.approx(77.0, abs=0.2)
    # a tree of 22 atoms: 21 bonds, all kept
    assert "21 covalent bonds kept" in out


def test_keep_bonds_on_a_structure_without_covalent_bonds_is_a_warning(tmp_path: Path) -> None:
    campaign = _new(tmp_path, "mil53-al")
    ase.io.write(campaign / "structure.cif", bulk("Al", "fcc", a=4.05, cubic=True))
    _, out = _validate(campaign)
    assert "no covalent bond between non-metals to keep" in out, out
    assert "0 covalent bonds kept" in out


# --- comment / blank-line / continuation variants that PLUMED input allows ---------------------

ALANINE_VARIANTS = {
    "inline comments and blank lines": (
        "phi: TORSION ATOMS=5,7,9,15   # the backbone φ\n\n\n"
        "psi: TORSION ATOMS=7,9,15,17#no space before the comment\n"
        "   \t\n"
        "metad: METAD ARG=phi,psi SIGMA=0.35,0.35 HEIGHT=1.2 PACE=50 BIASFACTOR=6 TEMP=300 "
        "GRID_MIN=-pi,-pi GRID_MAX=pi,pi GRID_BIN=120,120 # trailing\n"
    ),
    "continuation block with comments inside": (
        "# header only\n#\n"
        "phi: TORSION ATOMS=5,7,9,15\n"
        "psi: TORSION ATOMS=7,9,15,17\n"
        "metad: METAD ...\n"
        "   ARG=phi,psi   # the two torsions\n"
        "\n"
        "   SIGMA=0.35,0.35 HEIGHT=1.2 PACE=50\n"
        "   # a comment line inside the block\n"
        "   BIASFACTOR=6 TEMP=300\n"
        "   GRID_MIN=-pi,-pi GRID_MAX=pi,pi GRID_BIN=120,120\n"
        "...\n"
    ),
    "LABEL= keyword, tabs, and text after ENDPLUMED": (
        "TORSION\tATOMS=5,7,9,15\tLABEL=phi\n"
        "TORSION ATOMS=7,9,15,17 LABEL=psi\n"
        "METAD ARG=phi,psi SIGMA=0.35,0.35 HEIGHT=1.2 PACE=50 BIASFACTOR=6 TEMP=300 "
        "GRID_MIN=-pi,-pi GRID_MAX=pi,pi GRID_BIN=120,120 LABEL=metad\n"
        "ENDPLUMED\n"
        "this is not PLUMED input and is never read\n"
    ),
}


@pytest.mark.parametrize("variant", sorted(ALANINE_VARIANTS))
def test_plumed_comment_and_blank_line_variants_are_accepted(tmp_path: Path, variant: str) -> None:
    campaign = _new(tmp_path, "alanine-dipeptide")
    (campaign / "plumed.dat").write_text(ALANINE_VARIANTS[variant])
    code, out = _validate(campaign)
    assert code == 0, out
    assert re.search(r"CV phi\s+-1\.44\d+ rad", out), out


# --- broken templates: one specific error each --------------------------------------------------

Breaker = Callable[[Path], str]  # breaks the campaign dir, returns the expected error pattern


def _unknown_plumed_action(c: Path) -> str:
    n = _append(c / "plumed.dat", "x: FOOBAR ARG=phi\n")
    return rf"plumed\.dat: line {n}: FOOBAR x: Action \"FOOBAR\" is not known"


def _atom_99_of_38(c: Path) -> str:
    n = _append(c / "plumed.dat", "t: TORSION ATOMS=1,2,3,99\n")
    return rf"plumed\.dat: line {n}: TORSION t: atom 99 out of range \(the structure has 38 atoms"


def _bad_plumed_keyword(c: Path) -> str:
    n = _append(c / "plumed.dat", "d: DISTANCE ATOMS=1,2 NOSUCHKEYWORD=3\n")
    return rf"plumed\.dat: line {n}: DISTANCE d: cannot understand .*: NOSUCHKEYWORD"


def _unclosed_plumed_block(c: Path) -> str:
    n = _append(c / "plumed.dat", "d: DISTANCE ...\n  ATOMS=1,2\n")
    return rf"plumed\.dat, line {n}: the '\.\.\.' block opened here is never closed"


def _grid_without_the_start_volume(c: Path) -> str:
    # the start volume (0.473 nm³) lies below the grid: the first hill cannot be deposited
    _edit(c / "plumed.dat", "GRID_MIN=0.200", "GRID_MIN=0.500")
    return (
        r"plumed\.dat: line 12: metad: fails on the start structure: An error happened while "
        r"calculating metad: Looking for a value outside the grid .*\(arg name: v\)"
    )


def _no_metad_with_shared_bias(c: Path) -> str:
    (c / "plumed.dat").write_text("v: VOLUME\nPRINT ARG=v STRIDE=10 FILE=COLVAR\n")
    return r"plumed\.dat: bias mode 'shared' needs exactly one METAD action, found 0"


def _malformed_campaign_yaml(c: Path) -> str:
    _edit(c / "campaign.yaml", "  count: 4\n", "  count: [4\n")
    return r"campaign\.yaml: line \d+, column \d+: malformed YAML"


def _unknown_key(c: Path) -> str:
    _edit(c / "campaign.yaml", "  temperature: 400.0", "  temprature: 400.0")
    return r"campaign\.yaml: walkers\.temprature: unknown key"


def _negative_temperature(c: Path) -> str:
    _edit(c / "campaign.yaml", "  temperature: 400.0", "  temperature: -400.0")
    return r"campaign\.yaml: walkers\.temperature: Input should be greater than 0"


def _compile_neither_bool_nor_auto(c: Path) -> str:
    _edit(c / "campaign.yaml", "training:\n", "training:\n  compile: sometimes\n")
    return r"campaign\.yaml: training\.compile: Input should be .auto., True or False"


def _method_without_baseline(c: Path) -> str:
    _edit(c / "campaign.yaml", "training:\n", "training:\n  method: hierarchical\n")
    return r"campaign\.yaml: .*training\.method: hierarchical learns on top of a cheaper level"


def _baseline_is_the_level(c: Path) -> str:
    _edit(c / "campaign.yaml", "material:\n", "material:\n  baseline: levels/xtb.inp\n")
    return r"campaign\.yaml: .*material\.baseline: levels/xtb\.inp is material\.level itself"


def _target_budget_without_baseline(c: Path) -> str:
    _edit(c / "campaign.yaml", "labeling:\n", "labeling:\n  target_budget: 10\n")
    return r"campaign\.yaml: .*labeling\.target_budget: needs material\.baseline"


def _delta_baseline_runs_as_a_program(c: Path) -> str:
    # CP2K GFN1-xTB as the baseline of a PBE-D3 target is fine for hierarchical, not for delta
    _edit(c / "campaign.yaml", "material:\n", "material:\n  baseline: levels/xtb.inp\n")
    _edit(c / "campaign.yaml", "  level: levels/xtb.inp ", "  level: levels/pbe-d3.inp ")
    _edit(c / "campaign.yaml", "training:\n", "training:\n  method: delta\n")
    return r"material\.baseline: .*levels/xtb\.inp: code: cp2k runs as a separate program"


def _npt_for_a_molecule(c: Path) -> str:
    _edit(c / "campaign.yaml", "ensemble: nvt", "ensemble: npt")
    return r"campaign\.yaml: walkers\.ensemble: npt needs a periodic cell"


def _volume_under_nvt(c: Path) -> str:
    _edit(c / "campaign.yaml", "ensemble: npt", "ensemble: nvt")
    return r"plumed\.dat: line 6: VOLUME is constant in walkers\.ensemble nvt"


def _missing_structure(c: Path) -> str:
    (c / "structure.cif").unlink()
    return r"structure\.cif: file not found"


def _unreadable_cif(c: Path) -> str:
    (c / "structure.cif").write_text("data_broken\n_cell_length_a 6.5\nloop_\n_atom_site_label\n")
    return r"structure\.cif: unreadable structure: no structure found"


def _atoms_on_top_of_each_other(c: Path) -> str:
    # a second Al 0.26 Å from the first: a doubled site, as badly symmetrised CIFs have
    _edit(
        c / "structure.cif",
        "Al2    Al",
        "Al1b   Al    0.04100   0.00120   0.00240   0.01267  Uiso   1.00\nAl2    Al",
    )
    return (
        r"structure\.cif: atoms 0 \(Al\) and 1 \(Al\) are 0\.26\d Å apart \(< min_distance 0\.6 Å\)"
    )


def _missing_level(c: Path) -> str:
    _edit(c / "campaign.yaml", "level: levels/xtb.inp", "level: levels/xtb-tuned.inp")
    return r"levels/xtb-tuned\.inp: file not found"


def _cp2k_syntax_error(c: Path) -> str:
    _edit(c / "levels" / "xtb.inp", "   MAX_SCF 400\n", "   MAX_SCF_TYPO 400\n")
    return r"levels/xtb\.inp: section SCF, line 'MAX_SCF_TYPO 400'"


def _cp2k_md_instead_of_single_point(c: Path) -> str:
    _edit(c / "levels" / "xtb.inp", "RUN_TYPE ENERGY_FORCE", "RUN_TYPE MD")
    return r"levels/xtb\.inp: GLOBAL/RUN_TYPE: is MD, a level must be a single point"


def _element_without_kind(c: Path) -> str:
    _edit(c / "campaign.yaml", "level: levels/xtb.inp", "level: levels/pbe-d3.inp")
    text = (c / "levels" / "pbe-d3.inp").read_text()
    text = re.sub(r"  &KIND Al\n.*?  &END KIND\n", "", text, flags=re.S)
    (c / "levels" / "pbe-d3.inp").write_text(text)
    return r"levels/pbe-d3\.inp: FORCE_EVAL/SUBSYS/KIND: missing_kind: no KIND section for .*Al"


def _basis_set_not_in_data_file(c: Path) -> str:
    _edit(c / "campaign.yaml", "level: levels/xtb.inp", "level: levels/pbe-d3.inp")
    # Al has DZVP-MOLOPT-SR-GTH-q3 in BASIS_MOLOPT, not -q11
    _edit(
        c / "levels" / "pbe-d3.inp",
        "BASIS_SET DZVP-MOLOPT-SR-GTH-q3",
        "BASIS_SET DZVP-MOLOPT-SR-GTH-q11",
    )
    return (
        r"levels/pbe-d3\.inp: FORCE_EVAL/SUBSYS/KIND Al: BASIS_SET: missing_kind: "
        r"DZVP-MOLOPT-SR-GTH-q11 for Al is not in .*BASIS_MOLOPT"
    )


def _model_species_mismatch(c: Path) -> str:
    _edit(c / "nequip.yaml", "model_type_names: ???", "model_type_names: [H, C, N, O]")
    return (
        r"nequip\.yaml: model_type_names: \[H, C, N, O\] does not match the structure's species "
        r"\[H, C, O, Al\]"
    )


def _chemical_species_not_following_types(c: Path) -> str:
    _edit(c / "nequip.yaml", "chemical_species: ${model_type_names}", "chemical_species: [H, C, O]")
    return r"nequip\.yaml: chemical_species: \[H, C, O\] does not match the structure's species"


def _malformed_nequip_yaml(c: Path) -> str:
    _edit(c / "nequip.yaml", "num_layers: 2\n", "num_layers: 2\n  bad_indent: [\n")
    return r"nequip\.yaml: line \d+, column \d+: malformed YAML"


def _nequip_target_typo(c: Path) -> str:
    _edit(
        c / "nequip.yaml",
        "_target_: nequip.model.NequIPGNNModel",
        "_target_: nequip.model.NequIPGNNModle",
    )
    return (
        r"nequip\.yaml: training_module\.model\._target_: cannot import "
        r"nequip\.model\.NequIPGNNModle \(nequip\.model has no NequIPGNNModle\)"
    )


def _nequip_key_removed(c: Path) -> str:
    _edit(c / "nequip.yaml", "train_file: ???\n", "")
    return r"nequip\.yaml: train_file: missing \(hillwalker fills this key in\)"


def _nequip_knob_of_wrong_type(c: Path) -> str:
    _edit(c / "nequip.yaml", "max_epochs: 200", "max_epochs: many")
    return r"nequip\.yaml: max_epochs: expected int, found 'many'"


def _npt_without_stress_training(c: Path) -> str:
    _edit(c / "nequip.yaml", "stress_weight: 1000.0", "stress_weight: 0.0")
    return r"nequip\.yaml: training_module\.loss\.coeffs\.stress: is 0\.0; NPT walkers need a model"


MIL53_BREAKERS: dict[str, Breaker] = {
    f.__name__.lstrip("_"): f
    for f in (
        _unknown_plumed_action,
        _atom_99_of_38,
        _bad_plumed_keyword,
        _unclosed_plumed_block,
        _no_metad_with_shared_bias,
        _grid_without_the_start_volume,
        _malformed_campaign_yaml,
        _unknown_key,
        _negative_temperature,
        _volume_under_nvt,
        _missing_structure,
        _unreadable_cif,
        _atoms_on_top_of_each_other,
        _missing_level,
        _cp2k_syntax_error,
        _cp2k_md_instead_of_single_point,
        _element_without_kind,
        _basis_set_not_in_data_file,
        _model_species_mismatch,
        _chemical_species_not_following_types,
        _malformed_nequip_yaml,
        _nequip_target_typo,
        _nequip_key_removed,
        _nequip_knob_of_wrong_type,
        _npt_without_stress_training,
        _compile_neither_bool_nor_auto,
        _method_without_baseline,
        _baseline_is_the_level,
        _target_budget_without_baseline,
        _delta_baseline_runs_as_a_program,
    )
}


@pytest.mark.parametrize("case", sorted(MIL53_BREAKERS))
def test_broken_mil53_gives_its_specific_error(tmp_path: Path, case: str) -> None:
    campaign = _new(tmp_path, "mil53-al")
    expected = MIL53_BREAKERS[case](campaign)
    code, out = _validate(campaign)
    assert code != 0, out
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert any(re.search(expected, line) for line in problems), (expected, out)
    # the line names the file inside the campaign directory (never a temporary copy)
    assert all(str(campaign) in line for line in problems), out


def test_broken_molecule_template_npt(tmp_path: Path) -> None:
    campaign = _new(tmp_path, "alanine-dipeptide")
    expected = _npt_for_a_molecule(campaign)
    code, out = _validate(campaign)
    assert code != 0
    assert re.search(expected, out), out


def test_metad_temperature_differs_from_the_walkers(tmp_path: Path) -> None:
    campaign = _new(tmp_path, "alanine-dipeptide")
    _edit(campaign / "campaign.yaml", "temperature: 300.0", "temperature: 350.0")
    code, out = _validate(campaign)
    assert code != 0
    assert re.search(
        r"plumed\.dat: line 8: METAD TEMP=300 K, but walkers\.temperature is 350 K in .*campaign\.yaml",
        out,
    ), out


def test_invalid_site_profile(tmp_path: Path) -> None:
    campaign = _new(tmp_path, "alanine-dipeptide")
    site = tmp_path / "site.yaml"
    site.write_text("nosuchkey: 1\n")
    code, out = _validate(campaign, "--site", str(site))
    assert code != 0
    assert re.search(r"site\.yaml: nosuchkey: unknown key", out), out


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    campaign = _new(tmp_path, "mil53-al")
    expected = [
        _negative_temperature(campaign),
        _unknown_plumed_action(campaign),
        _model_species_mismatch(campaign),
        _cp2k_syntax_error(campaign),
    ]
    code, out = _validate(campaign)
    assert code != 0
    for pattern in expected:
        assert re.search(pattern, out), (pattern, out)
    assert "4 problems" in out


def test_a_failed_cv_does_not_cascade(tmp_path: Path) -> None:
    # The METAD on a CV that failed to load is not reported again as "label not found".
    campaign = _new(tmp_path, "alanine-dipeptide")
    _edit(campaign / "plumed.dat", "phi: TORSION ATOMS=5,7,9,15", "phi: TORSION ATOMS=5,7,9,150")
    code, out = _validate(campaign)
    assert code != 0
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 1, out
    assert "plumed.dat: line 4: TORSION phi: atom 150 out of range" in problems[0]


def test_console_script_exit_status_and_streams(tmp_path: Path) -> None:
    # The installed `hillwalker` command, as a user runs it: problems on stderr, exit status 1.
    campaign = _new(tmp_path, "alanine-dipeptide")
    n = _append(campaign / "plumed.dat", "x: FOOBAR ARG=phi\n")
    before = _snapshot(campaign)
    done = subprocess.run(
        [str(Path(sys.executable).with_name("hillwalker")), "validate", str(campaign)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert f"plumed.dat: line {n}: FOOBAR x: Action" in done.stderr
    assert "CV phi" in done.stdout and "problem" not in done.stdout
    assert _snapshot(campaign) == before


def test_a_missing_campaign_directory(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "nowhere")])
    assert result.exit_code != 0
    assert f"{tmp_path / 'nowhere'}: not a directory" in result.output
    assert list(tmp_path.iterdir()) == []
