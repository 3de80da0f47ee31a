"""The PLUMED input check (``hillwalker validate``) against the real kernel."""

from __future__ import annotations

from pathlib import Path

import pytest
from ase import Atoms
from ase.io import read

from hillwalker.engines.plumed import clean_input, source_line_numbers
from hillwalker.engines.plumed_check import load_in_kernel

TEMPLATE = Path(__file__).parents[2] / "templates" / "mil53-al"


def check(text: str, atoms: Atoms) -> tuple[list[str], list[tuple[str, float]]]:
    lines = clean_input(text)
    return load_in_kernel(lines, source_line_numbers(text, lines), atoms, Path("p.dat"), 300, 1)


def test_template_gives_the_cell_volume_in_nm3(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    atoms = read(TEMPLATE / "structure.cif")
    problems, values = check((TEMPLATE / "plumed.dat").read_text(), atoms)
    assert problems == []
    assert dict(values)["v"] == pytest.approx(atoms.get_volume() / 1000, abs=1e-5)
    assert dict(values)["metad.bias"] == 0.0
    assert list(tmp_path.iterdir()) == []  # the kernel ran elsewhere


def test_a_rejected_line_is_reported_once_with_its_line() -> None:
    text = "# trimer\nd: DISTANCE ATOMS=1,99\ne: DISTANCE ATOMS=1,2\nPRINT ARG=d,e FILE=COLVAR\n"
    atoms = Atoms("Ar3", positions=[[0, 0, 0], [3.8, 0, 0], [1.9, 3.3, 0]])
    problems, values = check(text, atoms)
    (problem,) = problems  # PRINT fails only because d did: not reported
    assert problem.startswith("p.dat: line 2: DISTANCE d: ")
    assert "(the structure has 3 atoms, numbered 1 to 3)" in problem
    assert values == [("e", pytest.approx(0.38))]
