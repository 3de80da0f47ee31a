"""The CP2K engine: output parsing on stored snippets, level checks, and real CP2K runs."""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import molecule

from hillwalker.engines.cp2k import (
    DEFAULT_LADDER,
    RESULT_FILE,
    Cp2kOutput,
    Level,
    LevelError,
    ScfCorrection,
    SinglePointResult,
    frame_input,
    isolated_atom_energies,
    parse_output,
    single_point,
    to_ase_units,
    write_input,
)
from hillwalker.engines.cp2k.tree import parser

DATA = Path(__file__).resolve().parent.parent / "data"
SNIPPETS = DATA / "cp2k"
ROOT = Path(__file__).resolve().parents[2]
XTB = ROOT / "templates" / "mil53-al" / "levels" / "xtb.inp"
PBE_D3 = ROOT / "templates" / "mil53-al" / "levels" / "pbe-d3.inp"

# CP2K 2023.1 (Debian cp2k.psmp, 1 MPI rank, 1 thread), the shared benchmark input
# mil53_xtb_level.inp run as is (`cp2k.psmp -i mil53_np_cif_xtb.inp`): the ENERGY| line.
MIL53_NP_CIF_ENERGY_HARTREE = -89.350264440912412


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def mil53_np_cif() -> Atoms:
    """The CIF-like np cell and coordinates written in the shared benchmark input."""
    with (SNIPPETS / "mil53_np_cif_xtb.inp").open() as handle:
        tree = parser().parse(handle)
    subsys = tree["+force_eval"][0]["+subsys"]
    cell = [subsys["+cell"][k] for k in "abc"]
    lines = [line.split() for line in subsys["+coord"]["*"]]
    return Atoms(
        [p[0] for p in lines],
        positions=[[float(x) for x in p[1:]] for p in lines],
        cell=cell,
        pbc=True,
    )


def no_temp_files(workdir: Path) -> None:
    leftovers = [p.name for p in workdir.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


# --- output parser (pure, stored snippets) ----------------------------------------------------


def test_parse_converged_output() -> None:
    out = parse_output((SNIPPETS / "mil53_xtb_converged.out").read_text())
    assert out.scf_converged and not out.scf_not_converged
    assert out.scf_steps == 62
    assert out.energy_hartree == pytest.approx(-89.350264440912412, abs=1e-12)
    assert out.forces_hartree_bohr is not None and out.forces_hartree_bohr.shape == (38, 3)
    assert out.forces_hartree_bohr[0].tolist() == [0.00385956, 0.00274573, -0.00749583]
    assert out.forces_hartree_bohr[37].tolist() == [-0.00553354, 0.02822649, 0.01267431]
    assert out.stress_gpa is not None
    assert out.stress_gpa[0, 2] == pytest.approx(-1.79744065413)
    assert out.stress_gpa[2, 2] == pytest.approx(1.03038476527)
    np.testing.assert_allclose(out.stress_gpa, out.stress_gpa.T)
    assert out.cp2k_seconds == pytest.approx(1.898)
    assert out.ended and out.errors == []


def test_parser_agrees_with_pymatgen() -> None:
    # An independent parser on the same real output: the same numbers (pymatgen keeps CP2K's
    # units for forces and stress and converts the energy with its own Hartree).
    from pymatgen.io.cp2k.outputs import Cp2kOutput as PymatgenOutput

    path = SNIPPETS / "mil53_xtb_converged.out"
    ours = parse_output(path.read_text())
    theirs = PymatgenOutput(str(path), auto_load=False)
    theirs.parse_energies()
    theirs.parse_forces()
    theirs.parse_stresses()
    assert ours.energy_hartree is not None
    assert theirs.final_energy == pytest.approx(ours.energy_hartree * units.Hartree, rel=1e-8)
    np.testing.assert_array_equal(theirs.data["forces"][-1], ours.forces_hartree_bohr)
    np.testing.assert_array_equal(theirs.data["stress_tensor"][-1], ours.stress_gpa)


def test_parse_scf_not_converged_output() -> None:
    out = parse_output((SNIPPETS / "mil53_xtb_ot_not_converged.out").read_text())
    # CP2K 2023.1 prints a warning, then energy and forces of the unconverged density.
    assert not out.scf_converged and out.scf_not_converged
    assert out.energy_hartree is not None and out.forces_hartree_bohr is not None


def test_parse_outer_scf_loop() -> None:
    # With an OUTER_SCF (the PBE-D3 level) the outer loop's verdict counts.
    ok = parse_output((SNIPPETS / "h2o_pbe_outer_scf_converged.out").read_text())
    assert ok.scf_converged and not ok.scf_not_converged
    assert ok.energy_hartree == pytest.approx(-17.220223130549975, abs=1e-12)
    assert ok.stress_gpa is not None and ok.forces_hartree_bohr is not None
    bad = parse_output((SNIPPETS / "h2o_pbe_outer_scf_failed.out").read_text())
    assert not bad.scf_converged and bad.scf_not_converged


def test_parse_abort_output() -> None:
    out = parse_output((SNIPPETS / "xtb_ot_abort.out").read_text())
    assert out.energy_hartree is None and out.forces_hartree_bohr is None
    assert not out.ended
    assert out.errors == [
        "Full_kinetic not available for semi-empirical methods",
        "preconditioner.F:330",
    ]


def test_parse_empty_output() -> None:
    out = parse_output("")
    assert out.energy_hartree is None and out.forces_hartree_bohr is None and not out.ended


def test_conversion_to_ase_units_and_sign() -> None:
    out = Cp2kOutput(
        energy_hartree=-2.0,
        forces_hartree_bohr=np.array([[1.0, 0.0, -0.5]]),
        stress_gpa=np.array([[1.0, 0.4, 0.5], [0.4, 2.0, 0.6], [0.5, 0.6, 3.0]]),
    )
    energy, forces, stress = to_ase_units(out, periodic=True)
    assert energy == pytest.approx(-2.0 * 27.211386, rel=1e-6)
    # CODATA 2018: 1 Hartree/bohr = 27.211386246 eV / 0.529177210903 Å = 51.422067476 eV/Å
    np.testing.assert_allclose(forces, [[51.422067476, 0.0, -25.711033738]], rtol=1e-7)
    # CP2K compressive-positive → ASE tensile-positive; 1 GPa = 1/160.21766 eV/Å³; Voigt order.
    gpa = 1 / 160.21766208
    np.testing.assert_allclose(stress, -np.array([1.0, 2.0, 3.0, 0.6, 0.5, 0.4]) * gpa, rtol=1e-8)
    _, _, none = to_ase_units(out, periodic=False)
    assert none is None


# --- levels ------------------------------------------------------------------------------------


def test_level_from_template_strips_frame_and_hashes_settings(tmp_path: Path) -> None:
    level = Level.from_file(XTB)
    assert level.name == "xtb" and level.is_xtb
    # The benchmark input with its cell and coordinates is the same level as the template.
    with_coords = Level.from_file(SNIPPETS / "mil53_np_cif_xtb.inp")
    assert "+coord" not in with_coords.force_eval.get("+subsys", {})
    reworded = tmp_path / "xtb.inp"
    reworded.write_text("# a comment\n" + XTB.read_text().replace("PROJECT mil53", "PROJECT x"))
    assert Level.from_file(reworded).digest() == level.digest()
    hotter = tmp_path / "hot.inp"
    hotter.write_text(
        XTB.read_text().replace("ELECTRONIC_TEMPERATURE 1000", "ELECTRONIC_TEMPERATURE 2000")
    )
    assert Level.from_file(hotter).digest() != level.digest()


def test_malformed_level_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.inp"
    bad.write_text(XTB.read_text().replace("EPS_SCF 1.0E-6", "EPS_SCFF 1.0E-6"))
    with pytest.raises(LevelError, match=r"bad\.inp: .*SCF.*EPS_SCFF"):
        Level.from_file(bad)
    with pytest.raises(LevelError, match=r"missing\.inp: cannot read"):
        Level.from_file(tmp_path / "missing.inp")
    geo = tmp_path / "geo.inp"
    geo.write_text(XTB.read_text().replace("RUN_TYPE ENERGY_FORCE", "RUN_TYPE GEO_OPT"))
    with pytest.raises(LevelError, match=r"geo\.inp: GLOBAL/RUN_TYPE"):
        Level.from_file(geo)
    empty = tmp_path / "empty.inp"
    empty.write_text("&GLOBAL\n&END GLOBAL\n")
    with pytest.raises(LevelError, match=r"empty\.inp: FORCE_EVAL: section missing"):
        Level.from_file(empty)


def test_check_elements() -> None:
    pbe = Level.from_file(PBE_D3)
    pbe.check_elements(["H", "C", "N", "O", "Al", "Zn", "Zr", "Cr", "Cu"])
    with pytest.raises(LevelError, match=r"pbe-d3\.inp: .*KIND.*missing_kind.*Xe"):
        pbe.check_elements(["H", "Xe"])
    Level.from_file(XTB).check_elements(["H", "C", "O", "Al", "Rn"])
    with pytest.raises(LevelError, match=r"xtb\.inp: .*missing_kind.*GFN1-xTB.*U"):
        Level.from_file(XTB).check_elements(["U"])


def test_missing_basis_name_in_data_file(tmp_path: Path) -> None:
    level_file = tmp_path / "typo.inp"
    level_file.write_text(
        PBE_D3.read_text().replace(
            "BASIS_SET DZVP-MOLOPT-SR-GTH-q6", "BASIS_SET DZVP-MOLOPT-XX-GTH-q6"
        )
    )
    with pytest.raises(
        LevelError,
        match=r"typo\.inp: .*KIND O: BASIS_SET: missing_kind: "
        r"DZVP-MOLOPT-XX-GTH-q6",
    ):
        Level.from_file(level_file).check_elements(["O", "H"])


def test_frame_input_puts_cell_coordinates_and_periodicity() -> None:
    level = Level.from_file(XTB)
    atoms = mil53_np_cif()
    text = write_input(frame_input(atoms, level))
    tree = parser().parse(io.StringIO(text))
    fe = tree["+force_eval"][0]
    np.testing.assert_array_equal([fe["+subsys"]["+cell"][k] for k in "abc"], atoms.cell[:])
    coords = [line.split() for line in fe["+subsys"]["+coord"]["*"]]
    np.testing.assert_array_equal([[float(x) for x in c[1:]] for c in coords], atoms.positions)
    assert fe["+dft"]["+poisson"]["periodic"] == "xyz"
    assert fe["stress_tensor"] == "analytical"

    water = molecule("H2O")  # no cell, no periodicity
    tree = frame_input(water, level)
    fe = tree["+force_eval"][0]
    assert fe["+subsys"]["+cell"]["periodic"] == "none"
    assert fe["+dft"]["+poisson"] == {"periodic": "none", "poisson_solver": "mt"}
    assert fe["+dft"]["+qs"]["+xtb"]["do_ewald"] is False
    assert fe["stress_tensor"] == "none"
    box = np.array([fe["+subsys"]["+cell"][k] for k in "abc"])
    pos = np.array([[float(x) for x in line.split()[1:]] for line in fe["+subsys"]["+coord"]["*"]])
    assert np.all(pos > 4.0) and np.all(pos < np.diag(box) - 4.0)  # centred, vacuum around


def test_poisson_solver_follows_the_frame(tmp_path: Path) -> None:
    # A level written for molecules (MT) used on a crystal: the cell's periodicity wins.
    (tmp_path / "mt.inp").write_text(
        XTB.read_text().replace("POISSON_SOLVER PERIODIC", "POISSON_SOLVER MT")
    )
    fe = frame_input(mil53_np_cif(), Level.from_file(tmp_path / "mt.inp"))["+force_eval"][0]
    assert fe["+dft"]["+poisson"] == {"periodic": "xyz", "poisson_solver": "periodic"}
    # A wavelet solver stays for a molecule: the level chose a non-periodic solver itself.
    (tmp_path / "wavelet.inp").write_text(
        XTB.read_text().replace("POISSON_SOLVER PERIODIC", "POISSON_SOLVER WAVELET")
    )
    fe = frame_input(molecule("H2O"), Level.from_file(tmp_path / "wavelet.inp"))["+force_eval"][0]
    assert fe["+dft"]["+poisson"] == {"periodic": "none", "poisson_solver": "wavelet"}


def test_ladder_edits_are_data() -> None:
    level = Level.from_file(XTB)
    tree = frame_input(mil53_np_cif(), level)
    steps = [rung.correct(tree) for rung in DEFAULT_LADDER]
    # The MIL-53 level already diagonalizes with Broyden mixing and smearing: that rung is a no-op.
    assert steps[0] == {"name": "more_scf_steps", "set": {"DFT/SCF/MAX_SCF": 800}}
    assert steps[1] is None
    assert steps[2] == {
        "name": "gentler_mixing_hotter_smearing",
        "set": {
            "DFT/SCF/MIXING/ALPHA": 0.05,
            "DFT/SCF/MIXING/NBUFFER": 12,
            "DFT/SCF/SMEAR/ELECTRONIC_TEMPERATURE": 2000.0,
        },
    }
    json.dumps(steps)


# --- real CP2K ---------------------------------------------------------------------------------


def test_mil53_np_reference_energy(tmp_path: Path) -> None:
    atoms = mil53_np_cif()
    result = single_point(atoms, Level.from_file(XTB), tmp_path / "sp")
    assert result.status == "done", result.message
    assert result.energy is not None and result.forces is not None and result.stress is not None
    assert result.energy / units.Hartree == pytest.approx(MIL53_NP_CIF_ENERGY_HARTREE, abs=1e-6)
    assert result.forces.shape == (38, 3) and result.stress.shape == (6,)
    assert np.abs(result.forces.sum(axis=0)).max() < 1e-4
    assert result.attempts == 1 and result.corrections == [] and result.failure is None
    assert 0 < result.code_seconds < result.wall_seconds
    record = json.loads((tmp_path / "sp" / RESULT_FILE).read_text())
    assert record["status"] == "done" and record["energy_eV"] == result.energy
    no_temp_files(tmp_path / "sp")

    frame = result.to_atoms(atoms, level="xtb", generation=0)
    assert frame.get_potential_energy() == result.energy
    assert frame.info["status"] == "done" and frame.info["level"] == "xtb"
    np.testing.assert_array_equal(frame.get_stress(), result.stress)


def test_ot_diis_is_rescued_by_the_ladder(tmp_path: Path) -> None:
    # The same level with OT/DIIS: it does not converge for MIL-53 at GFN1-xTB.
    text = XTB.read_text()
    start = text.index("   &DIAGONALIZATION")
    end = text.index("   &END SMEAR\n") + len("   &END SMEAR\n")
    ot = (
        text[:start] + "   &OT\n    MINIMIZER DIIS\n    PRECONDITIONER FULL_SINGLE_INVERSE\n"
        "   &END OT\n" + text[end:]
    ).replace("MAX_SCF 400", "MAX_SCF 15")
    ot = ot.replace("   ADDED_MOS 20\n", "")
    (tmp_path / "ot.inp").write_text(ot)
    result = single_point(mil53_np_cif(), Level.from_file(tmp_path / "ot.inp"), tmp_path / "sp")
    assert result.status == "done", result.message
    assert [c["name"] for c in result.corrections] == [
        "more_scf_steps",
        "diagonalization_broyden_smearing",
    ]
    assert result.corrections[0]["set"] == {"DFT/SCF/MAX_SCF": 30}
    assert result.corrections[1]["remove"] == ["DFT/SCF/OT"]
    assert result.corrections[1]["set"]["DFT/SCF/MAX_SCF"] == 200
    assert result.attempts == 3
    for attempt in (1, 2):
        out = parse_output((tmp_path / "sp" / f"attempt-{attempt}.out").read_text())
        assert out.scf_not_converged
    # Rescued into exactly the reference settings, so exactly the reference energy.
    assert result.energy is not None
    assert result.energy / units.Hartree == pytest.approx(MIL53_NP_CIF_ENERGY_HARTREE, abs=1e-6)
    frame = result.to_atoms(mil53_np_cif())
    assert json.loads(frame.info["corrections"]) == result.corrections


def test_scf_gives_up_at_the_end_of_the_ladder(tmp_path: Path) -> None:
    (tmp_path / "short.inp").write_text(XTB.read_text().replace("MAX_SCF 400", "MAX_SCF 4"))
    ladder = (ScfCorrection("more_scf_steps", scale_max_scf=2.0),)
    result = single_point(mil53_np_cif(), Level.from_file(tmp_path / "short.inp"),
                          tmp_path / "sp", ladder=ladder)  # fmt: skip
    assert_failed(result, "scf_not_converged")
    assert result.attempts == 2 and "after 2 attempt(s)" in (result.message or "")
    assert result.corrections == [{"name": "more_scf_steps", "set": {"DFT/SCF/MAX_SCF": 8}}]
    frame = result.to_atoms(mil53_np_cif(), generation=3)
    assert frame.info["status"] == "failed" and frame.info["failure"] == "scf_not_converged"
    assert json.loads(frame.info["corrections"]) == result.corrections
    assert frame.info["generation"] == 3 and frame.calc is None


def test_forces_and_stress_match_finite_differences(tmp_path: Path) -> None:
    """A small triclinic periodic water cell at GFN1-xTB: F = −dE/dx, σ = (1/V) dE/dε (ASE)."""
    text = XTB.read_text().replace("EPS_SCF 1.0E-6", "EPS_SCF 1.0E-9")
    (tmp_path / "tight.inp").write_text(text)
    level = Level.from_file(tmp_path / "tight.inp")
    cell = [[4.2, 0.0, 0.0], [0.4, 4.4, 0.0], [0.3, -0.2, 4.6]]
    atoms = Atoms(
        "OH2", positions=[[1, 1, 1], [1.96, 1.1, 1.05], [0.75, 1.92, 1.1]], cell=cell, pbc=True
    )
    calls = iter(range(100))

    def energy(frame: Atoms) -> float:
        result = single_point(frame, level, tmp_path / f"sp{next(calls)}")
        assert result.status == "done", result.message
        assert result.energy is not None
        return result.energy

    ref = single_point(atoms, level, tmp_path / "ref")
    assert ref.forces is not None and ref.stress is not None
    h = 0.003
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions[1, 0] += h
    minus.positions[1, 0] -= h
    fd_force = -(energy(plus) - energy(minus)) / (2 * h)
    assert abs(ref.forces[1, 0]) > 0.1
    assert ref.forces[1, 0] == pytest.approx(fd_force, abs=2e-3)

    eps, volume = 0.002, atoms.get_volume()
    for voigt, (i, j) in ((0, (0, 0)), (5, (0, 1))):
        strained = []
        for sign in (1, -1):
            e = np.zeros((3, 3))
            e[i, j] = e[j, i] = sign * eps / (1 if i == j else 2)  # Voigt: ε_xy = γ/2
            frame = atoms.copy()
            frame.set_cell(atoms.cell[:] @ (np.eye(3) + e), scale_atoms=True)
            strained.append(energy(frame))
        fd_stress = (strained[0] - strained[1]) / (2 * eps) / volume
        assert abs(ref.stress[voigt]) > 1e-3
        assert ref.stress[voigt] == pytest.approx(fd_stress, rel=0.01, abs=2e-5)


def test_molecule_without_periodicity(tmp_path: Path) -> None:
    water = molecule("H2O")
    result = single_point(water, Level.from_file(XTB), tmp_path / "sp")
    assert result.status == "done", result.message
    assert result.stress is None and result.forces is not None
    assert np.abs(result.forces.sum(axis=0)).max() < 1e-3  # no periodic images, no net force
    frame = result.to_atoms(water)
    assert not frame.pbc.any() and "stress" not in frame.calc.results


# --- faults ------------------------------------------------------------------------------------


def launcher(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "launch.sh"
    script.write_text("#!/bin/bash\n" + textwrap.dedent(body))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return [str(script)]


def alive(pid: int) -> bool:
    # A killed child of the killed launcher may linger as a zombie until someone reaps it.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in {"Z", "X"}


def assert_failed(result: SinglePointResult, failure: str) -> None:
    assert result.status == "failed" and result.failure == failure
    assert result.energy is None and result.forces is None and result.stress is None
    record = json.loads((result.workdir / RESULT_FILE).read_text())
    assert record["status"] == "failed" and record["failure"] == failure
    no_temp_files(result.workdir)


def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    # The launcher starts real CP2K as a child (as mpirun would) and records its PID.
    command = launcher(
        tmp_path,
        """
        cp2k.psmp "$@" &
        echo $! > child.pid
        wait
    """,
    )
    text = (
        XTB.read_text()
        .replace("MAX_SCF 400", "MAX_SCF 100000")
        .replace("EPS_SCF 1.0E-6", "EPS_SCF 1.0E-30")
    )
    (tmp_path / "slow.inp").write_text(text)
    start = time.perf_counter()
    result = single_point(
        mil53_np_cif(),
        Level.from_file(tmp_path / "slow.inp"),
        tmp_path / "sp",
        command=command,
        timeout=3.0,
    )
    assert time.perf_counter() - start < 30
    assert_failed(result, "timeout")
    assert "timeout" in (result.message or "")
    child = int((tmp_path / "sp" / "child.pid").read_text())
    deadline = time.monotonic() + 2.0  # a SIGKILL is delivered asynchronously
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child), f"CP2K (pid {child}) survived the timeout"
    frame = result.to_atoms(mil53_np_cif())
    assert frame.info["status"] == "failed" and frame.info["failure"] == "timeout"
    assert frame.calc is None


def processes_in(directory: Path) -> list[str]:
    """Live processes whose working directory is ``directory`` (CP2K runs in its workdir)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            here = proc.name.isdigit() and os.readlink(proc / "cwd") == str(directory)
            if here and alive(int(proc.name)):
                found.append(f"{proc.name} {(proc / 'comm').read_text().strip()}")
        except OSError:
            continue
    return found


def test_timeout_stops_mpirun_and_all_its_ranks(tmp_path: Path) -> None:
    text = XTB.read_text().replace("MAX_SCF 400", "MAX_SCF 100000")
    (tmp_path / "slow.inp").write_text(text.replace("EPS_SCF 1.0E-6", "EPS_SCF 1.0E-30"))
    mpirun = ["mpirun", "--oversubscribe", "-np", "2", "cp2k.psmp"]
    if os.geteuid() == 0:
        mpirun.insert(1, "--allow-run-as-root")
    work = tmp_path / "sp"
    seen: set[str] = set()
    running = threading.Event()
    running.set()

    def watch() -> None:  # proves the check below can see CP2K's processes at all
        while running.is_set():
            seen.update(p.split()[1] for p in processes_in(work.resolve()))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    level = Level.from_file(tmp_path / "slow.inp")
    try:
        result = single_point(mil53_np_cif(), level, work, command=mpirun, timeout=4.0)
    finally:
        running.clear()
        watcher.join()
    assert {"mpirun", "cp2k.psmp"} <= seen
    assert_failed(result, "timeout")
    deadline = time.monotonic() + 2.0
    while processes_in(work.resolve()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_in(work.resolve()) == []


def test_cp2k_dies_with_the_worker_that_started_it(tmp_path: Path) -> None:
    # A worker killed outright (SIGKILL from Parsl or SLURM) runs no cleanup code at all.
    text = XTB.read_text().replace("MAX_SCF 400", "MAX_SCF 100000")
    (tmp_path / "slow.inp").write_text(text.replace("EPS_SCF 1.0E-6", "EPS_SCF 1.0E-30"))
    work = (tmp_path / "sp").resolve()
    script = (
        "import sys, ase.io\n"
        "from hillwalker.engines.cp2k import Level, single_point\n"
        "single_point(ase.io.read(sys.argv[1]), Level.from_file(sys.argv[2]), sys.argv[3])\n"
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", script, str(DATA / "mil53_np_relaxed_xtb.extxyz"),
         str(tmp_path / "slow.inp"), str(work)]
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not any("cp2k.psmp" in p for p in processes_in(work)):
            assert time.monotonic() < deadline and worker.poll() is None, "CP2K never started"
            time.sleep(0.1)
    finally:
        worker.kill()
        worker.wait()
    deadline = time.monotonic() + 5.0
    while processes_in(work) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_in(work) == []


def test_crashing_launcher(tmp_path: Path) -> None:
    command = launcher(tmp_path, "echo 'launcher: no such partition' >&2\nexit 1\n")
    result = single_point(mil53_np_cif(), Level.from_file(XTB), tmp_path / "sp", command=command)
    assert_failed(result, "crash")
    assert "exit status 1" in (result.message or "")
    assert "no such partition" in (result.message or "")
    # an unexplained crash is rerun once, unchanged, and the rerun is on the record
    assert result.attempts == 2
    assert [c["name"] for c in result.corrections] == ["rerun_after_crash"]
    assert "no such partition" in result.corrections[0]["after"]
    # the input it was given is there, complete, for whoever looks
    Level.from_file(tmp_path / "sp" / "attempt-1.inp")
    sp = tmp_path / "sp"
    assert (sp / "attempt-2.inp").read_text() == (sp / "attempt-1.inp").read_text()


def test_a_crash_cp2k_did_not_explain_is_rerun_and_the_rerun_labels_the_frame(
    tmp_path: Path,
) -> None:
    # The first launch dies the way a lost node or a killed MPI rank does; the second is real CP2K.
    command = launcher(
        tmp_path,
        f"""\
        if [ ! -e {tmp_path}/failed-once ]; then
            touch {tmp_path}/failed-once
            echo 'srun: error: node042: task 0: Killed' >&2
            exit 137
        fi
        exec cp2k.psmp "$@"
        """,
    )
    result = single_point(mil53_np_cif(), Level.from_file(XTB), tmp_path / "sp", command=command)
    assert result.status == "done", result.message
    assert result.energy / units.Hartree == pytest.approx(MIL53_NP_CIF_ENERGY_HARTREE, abs=1e-6)
    assert result.attempts == 2
    assert result.corrections == [
        {
            "name": "rerun_after_crash",
            "after": f"CP2K exit status 137 ({tmp_path / 'sp' / 'attempt-1.out'}): "
            "srun: error: node042: task 0: Killed",
        }
    ]
    labeled = result.to_atoms(mil53_np_cif())
    assert json.loads(labeled.info["corrections"])[0]["name"] == "rerun_after_crash"


def test_no_crash_reruns_means_the_first_crash_is_final(tmp_path: Path) -> None:
    command = launcher(tmp_path, "echo 'launcher: no such partition' >&2\nexit 1\n")
    result = single_point(
        mil53_np_cif(), Level.from_file(XTB), tmp_path / "sp", command=command, crash_reruns=0
    )
    assert_failed(result, "crash")
    assert result.attempts == 1 and result.corrections == []


def test_cp2k_abort_is_a_crash_with_its_message(tmp_path: Path) -> None:
    text = XTB.read_text()
    start = text.index("   &DIAGONALIZATION")
    end = text.index("   &END SMEAR\n") + len("   &END SMEAR\n")
    (tmp_path / "abort.inp").write_text(text[:start] + "   &OT\n   &END OT\n" + text[end:])
    result = single_point(molecule("H2O"), Level.from_file(tmp_path / "abort.inp"), tmp_path / "sp")
    assert_failed(result, "crash")
    # CP2K's own words from its ABORT box reach the result
    assert "OT with ADDED_MOS/=0 not implemented" in (result.message or "")


def test_atoms_too_close(tmp_path: Path) -> None:
    atoms = mil53_np_cif()
    atoms.positions[5] = atoms.positions[4] + [0.2, 0.0, 0.0]
    result = single_point(atoms, Level.from_file(XTB), tmp_path / "sp")
    assert_failed(result, "bad_geometry")
    assert "atoms 4 (C) and 5 (C) are 0.200 Å apart" in (result.message or "")
    assert not (tmp_path / "sp" / "attempt-1.inp").exists()  # CP2K was not started
    # across the periodic boundary too
    atoms = Atoms("H2", positions=[[0.1, 0, 0], [3.9, 0, 0]], cell=[4, 4, 4], pbc=True)
    assert single_point(atoms, Level.from_file(XTB), tmp_path / "pbc").failure == "bad_geometry"


def test_element_without_basis_set(tmp_path: Path) -> None:
    atoms = molecule("H2O")
    atoms[0].symbol = "Xe"
    result = single_point(atoms, Level.from_file(PBE_D3), tmp_path / "sp")
    assert_failed(result, "missing_kind")
    assert "pbe-d3.inp" in (result.message or "") and "Xe" in (result.message or "")
    assert not (tmp_path / "sp" / "attempt-1.inp").exists()


def test_isolated_atom_energies_are_computed_once(tmp_path: Path) -> None:
    level = Level.from_file(XTB)
    energies = isolated_atom_energies(level, ["O", "H", "H"], tmp_path)
    assert set(energies) == {"H", "O"}
    # GFN1-xTB: a neutral free H atom has no charge, repulsion or dispersion terms; its energy
    # is the 1s level energy of xTB_parameters (Hl = -10.923452 eV).
    assert energies["H"] == pytest.approx(-10.923452, abs=1e-5)
    oxygen_input = next(tmp_path.glob("atom_*_O/attempt-1.inp")).read_text()
    assert "MULTIPLICITY 3" in oxygen_input and "UKS" in oxygen_input
    assert "SMEAR" not in oxygen_input
    cache = tmp_path / f"isolated_atoms_{level.digest()}.json"
    assert json.loads(cache.read_text()) == energies
    stamp = cache.stat().st_mtime_ns
    assert isolated_atom_energies(level, ["H"], tmp_path) == {"H": energies["H"]}
    assert cache.stat().st_mtime_ns == stamp  # nothing recomputed


def test_kind_must_be_named_after_its_element(tmp_path: Path) -> None:
    # Atoms are labeled with their element symbol in &COORD: a KIND "O1" matches no atom.
    renamed = tmp_path / "renamed.inp"
    renamed.write_text(PBE_D3.read_text().replace("&KIND O\n", "&KIND O1\n"))
    with pytest.raises(LevelError, match=r"renamed\.inp: FORCE_EVAL/SUBSYS/KIND: .*element O"):
        Level.from_file(renamed).check_elements(["O", "H"])


@pytest.mark.slow
def test_pbe_d3_level_runs_with_stress(tmp_path: Path) -> None:
    """The MOF PBE-D3(BJ) template level, for real, on a small periodic water cell (~25 s)."""
    water = molecule("H2O")
    water.cell = [[5.5, 0.0, 0.0], [0.3, 5.2, 0.0], [0.2, 0.1, 5.4]]
    water.pbc = True
    water.positions += 2.5
    result = single_point(water, Level.from_file(PBE_D3), tmp_path / "sp")
    assert result.status == "done", result.message
    assert result.corrections == []  # OT/DIIS converges for a closed-shell molecule
    assert result.stress is not None and result.forces is not None
    assert np.all(np.isfinite(result.stress)) and result.forces.shape == (3, 3)
    # At 1000 Ry the grid's egg-box error is small: the net force is close to 0 (0.15 eV/Å at
    # 500 Ry, measured).
    assert np.abs(result.forces.sum(axis=0)).max() < 0.01
    output = (tmp_path / "sp" / "attempt-1.out").read_text()
    assert "Dispersion energy:" in output  # D3(BJ) found its parameter file and ran
    assert (
        "GLOBAL| Basis set file name                                        BASIS_MOLOPT" in output
    )


def test_a_full_disk_is_an_error_not_a_failed_single_point(small_disk):
    # 16 KiB left: the input fits, CP2K's output is cut off before its forces. Without the
    # low-disk check this single point would be recorded as a CP2K crash (with crash_reruns=0,
    # no second attempt whose input write would raise first) and never be run again
    from conftest import fill_disk

    fill_disk(small_disk, leave=16 << 10)
    work = small_disk / "sp"
    with pytest.raises(OSError) as caught:
        single_point(mil53_np_cif(), Level.from_file(XTB), work, crash_reruns=0)
    assert caught.value.errno == errno.ENOSPC
    assert "cp2k single point failed (crash)" in str(caught.value)
    assert (work / "attempt-1.out").is_file()  # CP2K did run
    assert not (work / RESULT_FILE).exists()
