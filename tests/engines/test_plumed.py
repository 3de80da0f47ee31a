"""PLUMED input handling, units at the PLUMED edge, and hills (read, sum, count, snapshot).

Every input is also fed to the real PLUMED kernel, and the Gaussian sums are compared with the
bias that the kernel applies through ``ase.calculators.plumed.Plumed``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.lj import LennardJones
from ase.calculators.plumed import Plumed
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

from hillwalker.engines.plumed import (
    KJ_PER_MOL,
    BiasedCalculator,
    HillsError,
    PlumedInputError,
    bias_from_hills,
    clean_input,
    colvar_rows,
    count_hills,
    fields_header,
    init_bias_dir,
    prepare_input,
    read_hills,
    read_input,
    restore_hills,
    snapshot_hills,
)
from hillwalker.engines.plumed_kernel import use_kernel

TEMPLATE = Path(__file__).parents[2] / "templates" / "mil53-al" / "plumed.dat"


def kernel_accepts(lines: list[str], tmp_path: Path, natoms: int = 4) -> None:
    """Feed the lines to a real PLUMED kernel, one ``readInputLine`` each (raises if rejected)."""
    use_kernel()
    import plumed

    # relative FILE= (HILLS, COLVAR) are opened in the working directory: keep them in tmp_path
    with contextlib.chdir(tmp_path):
        p = plumed.Plumed()
        p.cmd("setNatoms", natoms)
        p.cmd("setMDEngine", "python")
        p.cmd("setTimestep", 0.001)
        p.cmd("setKbT", 2.5)  # kJ/mol, as an MD engine passes it (well-tempered METAD needs it)
        p.cmd("setLogFile", str(tmp_path / "kernel.log"))
        p.cmd("init")
        try:
            for line in lines:
                p.cmd("readInputLine", line)
        finally:
            p.finalize()


# ------------------------------------------------------------------------- clean_input

VARIANTS = {
    "one line each": (
        "d: DISTANCE ATOMS=1,2\n"
        "metad: METAD ARG=d SIGMA=0.01 HEIGHT=1 PACE=10 FILE=HILLS\n"
        "PRINT ARG=d,metad.bias FILE=COLVAR STRIDE=5\n"
    ),
    "comments and blanks": (
        "# a comment line\n"
        "\n"
        "d: DISTANCE ATOMS=1,2   # trailing comment\n"
        "   \n"
        "metad: METAD ARG=d SIGMA=0.01 HEIGHT=1 PACE=10 FILE=HILLS\n"
        "#PRINT ARG=d FILE=OLD\n"
        "PRINT ARG=d,metad.bias FILE=COLVAR STRIDE=5\n"
    ),
    "continuation closed by ... METAD": (
        "d: DISTANCE ATOMS=1,2\n"
        "METAD ...\n"
        "  LABEL=metad\n"
        "  ARG=d      # the CV\n"
        "\n"
        "  SIGMA=0.01 HEIGHT=1\n"
        "  PACE=10 FILE=HILLS\n"
        "... METAD\n"
        "PRINT ARG=d,metad.bias FILE=COLVAR STRIDE=5\n"
        "ENDPLUMED\n"
        "this text is after ENDPLUMED and ignored\n"
    ),
    "labelled continuation closed by ...": (
        "d: DISTANCE ATOMS=1,2\n"
        "metad: METAD ...\n"
        "  ARG=d SIGMA=0.01\n"
        "  HEIGHT=1 PACE=10 FILE=HILLS\n"
        "...\n"
        "PRINT ...\n  ARG=d,metad.bias\n  FILE=COLVAR STRIDE=5\n...\n"
    ),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_clean_input_variants_are_accepted_by_the_kernel(name: str, tmp_path: Path) -> None:
    lines = clean_input(VARIANTS[name], source=name)
    assert len(lines) == 3
    assert not any("#" in line or "..." in line for line in lines)
    assert lines[0] == "d: DISTANCE ATOMS=1,2"
    assert "ARG=d" in lines[1] and "PACE=10" in lines[1]
    kernel_accepts(lines, tmp_path)


def test_kernel_rejects_a_comment_line_given_alone(tmp_path: Path) -> None:
    # why clean_input exists: the kernel takes one action per readInputLine, no comments
    with pytest.raises(Exception, match="#"):
        kernel_accepts(["# a comment"], tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("d: DISTANCE ATOMS=1,2\nMETAD ...\n ARG=d\n", r"plumed\.dat, line 2: .*never closed"),
        ("d: DISTANCE ATOMS=1,2\n...\n", r"plumed\.dat, line 2: '\.\.\.' closes no open block"),
        ("UNITS LENGTH=A\nd: DISTANCE ATOMS=1,2\n", r"plumed\.dat: UNITS is not supported"),
        ("d: DISTANCE ATOMS=__FILL__\n", r"plumed\.dat, line 1: __FILL__"),
        ("# only a comment\n\n", r"plumed\.dat: no PLUMED actions"),
    ],
)
def test_clean_input_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(PlumedInputError, match=message):
        clean_input(text, source="plumed.dat")


def test_template_is_read_and_accepted_by_the_kernel(tmp_path: Path) -> None:
    lines = read_input(TEMPLATE)
    assert any(line.startswith("v: VOLUME") for line in lines)
    metad = next(line for line in lines if "METAD" in line)
    assert "GRID_MIN=0.200" in metad and "GRID_MAX=1.000" in metad
    # walls at 340 and 800 Å³, written in nm³
    assert any("UPPER_WALLS" in line and "AT=0.800" in line for line in lines)
    assert any("LOWER_WALLS" in line and "AT=0.340" in line for line in lines)
    prepared = prepare_input(
        lines, walker_id=0, n_walkers=2, bias_dir=tmp_path / "bias", mode="shared",
        workdir=tmp_path,
    )  # fmt: skip
    kernel_accepts(prepared, tmp_path)


# ------------------------------------------------------------------------- prepare_input


def test_prepare_input_shared_independent_none(tmp_path: Path) -> None:
    lines = clean_input(VARIANTS["continuation closed by ... METAD"])
    bias = tmp_path / "bias"
    shared = prepare_input(lines, walker_id=1, n_walkers=3, bias_dir=bias, mode="shared")
    metad = next(line for line in shared if "METAD" in line)
    assert "FILE=HILLS" in metad
    assert "WALKERS_N=3" in metad and "WALKERS_ID=1" in metad
    assert f"WALKERS_DIR={bias.resolve()}" in metad
    assert "WALKERS_RSTRIDE=10" in metad  # defaults to PACE
    assert "RESTART" not in shared  # no hills yet

    init_bias_dir(bias, 3)
    assert sorted(p.name for p in bias.iterdir()) == ["HILLS.0", "HILLS.1", "HILLS.2"]
    again = prepare_input(
        lines, walker_id=1, n_walkers=3, bias_dir=bias, mode="shared", rstride=7, workdir=tmp_path
    )
    assert again[0] == "RESTART"
    assert "WALKERS_RSTRIDE=7" in next(line for line in again if "METAD" in line)
    assert f"FILE={(tmp_path / 'COLVAR').resolve()}" in again[-1]

    independent = prepare_input(lines, walker_id=2, n_walkers=3, bias_dir=bias, mode="independent")
    metad = next(line for line in independent if "METAD" in line)
    assert f"FILE={(bias / 'HILLS.2').resolve()}" in metad
    assert "WALKERS" not in metad

    none = prepare_input(lines, walker_id=0, n_walkers=3, bias_dir=bias, mode="none")
    assert not any("METAD" in line or "RESTART" in line for line in none)
    assert none[-1].startswith("PRINT ARG=d ")  # metad.bias dropped from PRINT
    for prepared in (again, independent, none):
        kernel_accepts(prepared, tmp_path)


def test_prepare_input_errors() -> None:
    lines = ["d: DISTANCE ATOMS=1,2", "PRINT ARG=d FILE=COLVAR"]
    with pytest.raises(PlumedInputError, match="needs exactly one METAD"):
        prepare_input(lines, walker_id=0, n_walkers=1, bias_dir="b", mode="shared", source="x")
    with pytest.raises(PlumedInputError, match=r"walker 2 is not one of 0\.\.1"):
        prepare_input(lines, walker_id=2, n_walkers=2, bias_dir="b", mode="none")
    with pytest.raises(PlumedInputError, match="bias mode 'both'"):
        prepare_input(lines, walker_id=0, n_walkers=1, bias_dir="b", mode="both")  # type: ignore[arg-type]


# ------------------------------------------------------------------------- units


def test_distance_restraint_converts_nm_and_kj_per_mol(tmp_path: Path) -> None:
    """3 Å is 0.3 nm; RESTRAINT energy and force come back in eV and eV/Å."""
    use_kernel()
    atoms = Atoms("Ar2", positions=[[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    kappa, at = 500.0, 0.25  # kJ/mol/nm², nm
    lines = [
        "d: DISTANCE ATOMS=1,2",
        f"r: RESTRAINT ARG=d AT={at} KAPPA={kappa}",
        f"PRINT ARG=d,r.bias FILE={tmp_path / 'COLVAR'} FMT=%20.12f",
    ]
    lj = LennardJones(sigma=3.4, epsilon=0.0104, rc=10.0)
    with Plumed(lj, lines, timestep=units.fs, atoms=atoms, log=str(tmp_path / "log")) as calc:
        atoms.calc = calc
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        unbiased = lj.get_potential_energy(atoms)
        unbiased_forces = lj.get_forces(atoms)
    colvar = np.loadtxt(tmp_path / "COLVAR")
    assert colvar[1] == pytest.approx(0.3, abs=1e-12)  # nm
    bias_kj = 0.5 * kappa * (0.3 - at) ** 2
    assert colvar[2] == pytest.approx(bias_kj, abs=1e-9)
    assert energy - unbiased == pytest.approx(bias_kj * KJ_PER_MOL, abs=1e-12)
    # dE/dr = κ(d − at) kJ/mol/nm → eV/Å; it pulls the atoms together (d > at)
    force_ev_per_a = kappa * (0.3 - at) * KJ_PER_MOL / (units.nm / units.Angstrom)
    bias_forces = forces - unbiased_forces
    np.testing.assert_allclose(bias_forces[1], [-force_ev_per_a, 0, 0], atol=1e-12)
    np.testing.assert_allclose(bias_forces[0], [force_ev_per_a, 0, 0], atol=1e-12)
    assert units.nm == pytest.approx(10.0)
    # the one FIELDS reader (status, validate) reads what PLUMED wrote
    (row,) = colvar_rows(tmp_path / "COLVAR")
    assert row == pytest.approx({"time": 0.0, "d": 0.3, "r.bias": bias_kj}, abs=1e-9)


def test_colvar_rows_follow_each_fields_header(tmp_path: Path) -> None:
    path = tmp_path / "COLVAR"
    path.write_text(
        "#! FIELDS time d metad.bias\n"
        "#! SET min_d 0\n"
        " 0.000 0.38 0.0\n"
        "\n"
        "#! FIELDS time d e\n"  # a restart with other columns
        " 0.005 0.39 1.5\n"
        " 0.010 0.4"  # being written: one value short, the other cut
    )
    rows = list(colvar_rows(path))
    assert rows == [
        {"time": 0.0, "d": 0.38, "metad.bias": 0.0},
        {"time": 0.005, "d": 0.39, "e": 1.5},
        {"time": 0.01, "d": 0.4},
    ]
    assert list(colvar_rows(tmp_path / "missing")) == []
    assert fields_header("#! FIELDS time v sigma_v height biasf") == [
        "time", "v", "sigma_v", "height", "biasf"
    ]  # fmt: skip
    assert fields_header("#! SET min_d 0") is None and fields_header("0.1 0.2") is None


def test_biased_calculator_equals_ase_plumed(tmp_path: Path) -> None:
    """The lean wrapper gives ASE's energy, forces and stress (bias virial included)."""
    use_kernel()
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True).repeat((2, 2, 1))
    atoms.rattle(0.1, seed=1)
    atoms.set_cell(atoms.cell * [1.0, 1.02, 0.97], scale_atoms=True)
    lines = [
        "v: VOLUME",
        "d: DISTANCE ATOMS=1,2",
        "r: RESTRAINT ARG=v,d AT=0.5,0.3 KAPPA=2000,300",
    ]
    got = {}
    for cls in (Plumed, BiasedCalculator):
        lj = LennardJones(sigma=3.4, epsilon=0.0104, rc=8.0)
        frame = atoms.copy()
        with cls(lj, lines, timestep=units.fs, atoms=frame, log=str(tmp_path / "log")) as calc:
            frame.calc = calc
            got[cls] = (frame.get_potential_energy(), frame.get_forces(), frame.get_stress())
            bias = calc.results["energy"] - lj.results["energy"]
    assert bias > 0.01  # the restraint acts
    ase_result, lean_result = got[Plumed], got[BiasedCalculator]
    assert lean_result[0] == pytest.approx(ase_result[0], abs=1e-12)
    np.testing.assert_allclose(lean_result[1], ase_result[1], atol=1e-12)
    np.testing.assert_allclose(lean_result[2], ase_result[2], atol=1e-12)
    assert (
        np.abs(
            lean_result[2] - LennardJones(sigma=3.4, epsilon=0.0104, rc=8.0).get_stress(atoms)
        ).max()
        > 1e-4
    )  # the bias virial is in the stress


def run_lj_metad(tmp_path: Path, metad: str, steps: int = 60) -> tuple[list, Path]:
    """Langevin MD of an LJ Ar trimer under METAD; per step: (time ps, CV nm, ASE bias eV)."""
    use_kernel()
    atoms = Atoms("Ar3", positions=[[0, 0, 0], [3.8, 0, 0], [1.9, 3.2, 0]])
    lj = LennardJones(sigma=3.4, epsilon=0.0104, rc=10.0)
    hills = tmp_path / "HILLS"
    lines = ["d: DISTANCE ATOMS=1,2", f"metad: {metad} FILE={hills}"]
    dt_fs = 4.0
    records = []
    with Plumed(
        lj, lines, timestep=dt_fs * units.fs, atoms=atoms, kT=units.kB * 80,
        log=str(tmp_path / "plumed.log"),
    ) as calc:  # fmt: skip
        atoms.calc = calc
        thermalize_momenta(atoms, temperature_K=80, rng=np.random.default_rng(3))
        dyn = Langevin(
            atoms, dt_fs * units.fs, temperature_K=80, friction=0.02, fixcm=False,
            rng=np.random.default_rng(4),
        )  # fmt: skip
        for _ in dyn.irun(steps):
            step = calc.istep - 1
            bias = calc.results["energy"] - lj.results["energy"]
            records.append((step * dt_fs / 1000.0, atoms.get_distance(0, 1) / 10.0, bias))
    return records, hills


def test_ase_bias_equals_sum_of_gaussians_from_hills(tmp_path: Path) -> None:
    """Well-tempered hills (file heights w·γ/(γ−1)) summed in eV match what ASE applied."""
    records, hills_path = run_lj_metad(
        tmp_path, "METAD ARG=d SIGMA=0.01 HEIGHT=0.8 PACE=5 BIASFACTOR=6 TEMP=80"
    )
    hills = read_hills(hills_path)
    assert len(hills) == count_hills(hills_path) == 12
    assert hills.cv_names == ("d",)
    assert np.all(hills.biasf == 6)
    # the first hill is the full height: 0.8 kJ/mol in eV, though the file says 0.8·6/5
    assert hills.heights[0] == pytest.approx(0.8 * KJ_PER_MOL, rel=1e-12)
    # time column in ps: hills every 5 steps of 4 fs
    np.testing.assert_allclose(hills.times, 0.02 * np.arange(1, 13), atol=1e-12)
    biases = []
    for time_ps, cv, ase_bias in records:
        expected = bias_from_hills(hills.before(time_ps), cv)[0]
        assert ase_bias == pytest.approx(expected, abs=1e-6)
        biases.append(ase_bias)
    # a test that could not fail would see no bias at all
    assert max(biases) > 0.5 * 0.8 * KJ_PER_MOL


def test_bias_from_hills_matches_a_grid_run_to_grid_accuracy(tmp_path: Path) -> None:
    records, hills_path = run_lj_metad(
        tmp_path, "METAD ARG=d SIGMA=0.01 HEIGHT=0.8 PACE=5 GRID_MIN=0 GRID_MAX=1.5 GRID_BIN=3000"
    )
    hills = read_hills(hills_path)
    assert np.all(hills.biasf == -1)  # not well-tempered: heights as written
    for time_ps, cv, ase_bias in records:
        expected = bias_from_hills(hills.before(time_ps), cv)[0]
        assert ase_bias == pytest.approx(expected, abs=2e-5)


# ------------------------------------------------------------------------- hills files

HILLS_TEXT = """#! FIELDS time phi psi sigma_phi sigma_psi height biasf
#! SET multivariate false
#! SET kerneltype stretched-gaussian
#! SET min_phi -pi
#! SET max_phi pi
#! SET min_psi -pi
#! SET max_psi pi
 0.1 3.1 0.0 0.3 0.3 1.2 -1
 0.2 -3.1 0.5 0.3 0.3 1.2 -1
"""


def test_read_hills_periodic_cvs_and_a_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "HILLS.3"
    path.write_text(HILLS_TEXT + " 0.3 1.0 1.0 0.3")  # a line being written: not a hill yet
    hills = read_hills(path)
    assert len(hills) == 2 == count_hills(path)
    assert hills.cv_names == ("phi", "psi")
    assert list(hills.walkers) == [3, 3]
    assert hills.periods[0] == pytest.approx((-np.pi, np.pi))
    # phi = π is next to both centres across the periodic boundary (3.1 and −3.1)
    at_pi = bias_from_hills(hills, [[np.pi, 0.0]])[0]
    at_zero = bias_from_hills(hills, [[0.0, 0.0]])[0]
    assert at_pi > 1.0 * KJ_PER_MOL
    assert at_zero == 0.0


def test_read_hills_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "HILLS.0"
    path.write_text(HILLS_TEXT + " 0.3 1.0 1.0 0.3 0.3 x -1\n")
    with pytest.raises(HillsError, match=r"HILLS\.0, line 10: not a number"):
        read_hills(path)
    path.write_text(HILLS_TEXT + " 0.3 1.0 1.0 0.3\n")
    with pytest.raises(HillsError, match=r"HILLS\.0, line 10: 4 columns, the header names 7"):
        read_hills(path)
    with pytest.raises(HillsError, match="no such hills file"):
        read_hills(tmp_path / "missing")


def test_snapshot_count_and_restore(tmp_path: Path) -> None:
    bias = tmp_path / "bias"
    init_bias_dir(bias, 2)
    (bias / "HILLS.0").write_text(HILLS_TEXT)
    (bias / "HILLS.1").write_text(HILLS_TEXT + " 0.3 1.0 1.0 0.3 0.3 1.2 -1\n 0.4 1.0")
    (bias / "notes.txt").write_text("not hills")
    assert count_hills(bias) == 5
    dest = tmp_path / "generations" / "003" / "hills"
    copied = snapshot_hills(bias, dest, generation=3, model="model-2.nequip.pt2")
    assert [p.name for p in copied] == ["HILLS.0", "HILLS.1"]
    assert not (dest / "notes.txt").exists()
    assert (dest / "HILLS.1").read_text().endswith("1.2 -1\n")  # the cut line is not copied
    manifest = json.loads((dest / "hills.json").read_text())
    assert manifest["generation"] == 3 and manifest["model"] == "model-2.nequip.pt2"
    assert manifest["hills"] == 5 and manifest["files"]["HILLS.1"]["hills"] == 3
    assert not list(dest.glob(".*.tmp"))

    (bias / "HILLS.0").write_text("")  # the live bias is lost
    assert restore_hills(dest, bias) == 5
    assert count_hills(bias) == 5
    (dest / "HILLS.0").write_text("tampered\n")
    with pytest.raises(HillsError, match=r"HILLS\.0: content differs"):
        restore_hills(dest, bias)
