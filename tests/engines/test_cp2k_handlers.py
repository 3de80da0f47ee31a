"""CP2K failure handlers on stored outputs: which failure a run had, and what is changed next."""

from __future__ import annotations

import copy
from pathlib import Path

from hillwalker.engines.cp2k import DEFAULT_LADDER, Level, parse_output
from hillwalker.engines.cp2k.handlers import (
    Corrector,
    RerunAfterCrash,
    ScfCorrection,
    default_handlers,
    diagnose,
)
from hillwalker.engines.cp2k.output import Cp2kOutput, Cp2kRun
from hillwalker.engines.cp2k.tree import get_path

SNIPPETS = Path(__file__).resolve().parent.parent / "data" / "cp2k"
XTB = Path(__file__).resolve().parents[2] / "templates" / "mil53-al" / "levels" / "xtb.inp"


def stored_run(name: str | None, returncode: int = 0, tail: str = "") -> Cp2kRun:
    out = parse_output((SNIPPETS / name).read_text()) if name else Cp2kOutput()
    return Cp2kRun(returncode, False, out, Path("/work/attempt-1.out"), tail)


def test_diagnose_names_the_failure_of_a_run() -> None:
    ok = stored_run("mil53_xtb_converged.out")
    assert diagnose(ok, n_atoms=38, periodic=True, attempt=1) is None
    wrong_size = diagnose(ok, n_atoms=3, periodic=True, attempt=1)
    assert wrong_size is not None and wrong_size.failure == "crash"
    assert "forces for 38 atoms, expected 3" in wrong_size.message

    scf = diagnose(
        stored_run("mil53_xtb_ot_not_converged.out"), n_atoms=38, periodic=True, attempt=2
    )
    assert scf is not None and scf.failure == "scf_not_converged"
    assert scf.message == "SCF not converged after 2 attempt(s) (/work/attempt-1.out)"

    abort = diagnose(
        stored_run("xtb_ot_abort.out", returncode=1), n_atoms=38, periodic=True, attempt=1
    )
    assert abort is not None and abort.failure == "crash"
    assert "Full_kinetic not available for semi-empirical methods" in abort.message

    lost = diagnose(stored_run(None, 137, "srun: Killed"), n_atoms=38, periodic=True, attempt=1)
    assert (
        lost is not None
        and lost.message == "CP2K exit status 137 (/work/attempt-1.out): srun: Killed"
    )


def test_the_ladder_climbs_in_order_and_skips_a_rung_with_nothing_to_change() -> None:
    tree = copy.deepcopy(Level.from_file(XTB).tree)  # already diagonalizes with Broyden mixing
    problem = diagnose(
        stored_run("mil53_xtb_ot_not_converged.out"), n_atoms=38, periodic=True, attempt=1
    )
    assert problem is not None
    corrector = Corrector(default_handlers())
    edits = []
    while (edit := corrector.correct(tree, problem)) is not None:
        edits.append(edit)
    # the xTB template already diagonalizes with Broyden mixing and smearing: that rung is skipped
    assert [e["name"] for e in edits] == ["more_scf_steps", "gentler_mixing_hotter_smearing"]
    assert all(e["name"] != "rerun_after_crash" for e in edits)  # an SCF problem is not rerun
    assert get_path(tree["+force_eval"][0], "DFT/SCF/MIXING/ALPHA") == 0.05


def test_a_crash_is_rerun_only_when_cp2k_did_not_explain_it_and_time_is_left() -> None:
    tree = copy.deepcopy(Level.from_file(XTB).tree)
    lost = diagnose(stored_run(None, 137, "srun: Killed"), n_atoms=38, periodic=True, attempt=1)
    assert lost is not None
    rerun = RerunAfterCrash(max_corrections=2)
    corrector = Corrector([*DEFAULT_LADDER, rerun])
    assert corrector.correct(tree, lost) == {"name": "rerun_after_crash", "after": lost.message}
    assert corrector.correct(tree, lost) is not None
    assert corrector.correct(tree, lost) is None  # spent after max_corrections
    late = diagnose(stored_run(None, 137), n_atoms=38, periodic=True, attempt=1, time_left=False)
    assert late is not None and not rerun.check(late)
    abort = diagnose(
        stored_run("xtb_ot_abort.out", returncode=1), n_atoms=38, periodic=True, attempt=1
    )
    assert abort is not None and not rerun.check(abort)  # CP2K's ABORT: the input's fault


def test_a_handler_edit_is_data() -> None:
    rung = ScfCorrection("bigger", set=(("DFT/SCF/EPS_SCF", 1e-5),))
    tree = copy.deepcopy(Level.from_file(XTB).tree)
    assert rung.correct(tree) == {"name": "bigger", "set": {"DFT/SCF/EPS_SCF": 1e-5}}
    assert rung.correct(tree) is None  # already so: nothing to change
