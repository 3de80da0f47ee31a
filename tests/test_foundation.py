"""The installed stack: doctor, the PLUMED kernel through the `plumed` module, the torch pin."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
HILLWALKER = str(Path(sys.executable).parent / "hillwalker")


def _doctor(env=None):
    return subprocess.run(
        [HILLWALKER, "doctor", "--json"], capture_output=True, text=True, env=env, timeout=120
    )


def test_doctor_reports_cp2k_and_plumed():
    out = _doctor()
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True
    assert report["components"]["cp2k"]["version"] == "2023.1"
    assert report["components"]["plumed"]["version"].startswith("2.")
    assert Path(report["components"]["plumed"]["path"]).is_file()


def test_doctor_names_missing_cp2k(tmp_path):
    # A PATH with only the venv's bin: python and hillwalker are there, cp2k.psmp is not.
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    out = _doctor(env)
    assert out.returncode != 0
    assert json.loads(out.stdout)["components"]["cp2k"]["ok"] is False
    assert "cp2k: 'cp2k.psmp' not found on PATH" in out.stderr


def test_user_plumed_kernel_wins_and_a_wrong_one_is_named(tmp_path, monkeypatch):
    from hillwalker.engines.plumed_kernel import PlumedKernelError, bundled_kernel, find_kernel

    monkeypatch.delenv("PLUMED_KERNEL", raising=False)
    assert find_kernel() == bundled_kernel()
    own = tmp_path / "libplumedKernel.so"
    own.write_bytes(b"")
    monkeypatch.setenv("PLUMED_KERNEL", str(own))
    assert find_kernel() == own
    monkeypatch.setenv("PLUMED_KERNEL", str(tmp_path / "nope.so"))
    with pytest.raises(PlumedKernelError, match=r"nope\.so does not exist"):
        find_kernel()


def test_plumed_kernel_evaluates_a_distance(tmp_path):
    """Through the plain `plumed` module: two atoms 3 Å apart → DISTANCE 0.3 nm (PLUMED units)."""
    code = r"""
import sys, numpy as np
from hillwalker.engines.plumed_kernel import use_kernel
use_kernel()
import plumed
p = plumed.Plumed()
p.cmd("setMDEngine", "python"); p.cmd("setNatoms", 2)
p.cmd("setTimestep", 1.0); p.cmd("setKbT", 1.0)
p.cmd("setLogFile", "plumed.log"); p.cmd("init")
p.cmd("readInputLine", "d: DISTANCE ATOMS=1,2 NOPBC")
p.cmd("readInputLine", "PRINT ARG=d FILE=COLVAR STRIDE=1")
pos = np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0]])   # nm
forces = np.zeros((2, 3)); box = np.zeros((3, 3)); virial = np.zeros((3, 3))
masses = np.ones(2); charges = np.zeros(2)
p.cmd("setStep", 0); p.cmd("setBox", box); p.cmd("setMasses", masses); p.cmd("setCharges", charges)
p.cmd("setPositions", pos); p.cmd("setForces", forces); p.cmd("setVirial", virial)
p.cmd("calc")
p.finalize()
"""
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=60)
    rows = [line.split() for line in (tmp_path / "COLVAR").read_text().splitlines()]
    values = [r for r in rows if r and r[0] != "#!"]
    assert float(values[0][1]) == pytest.approx(0.3, abs=1e-9)
    assert np.isfinite(float(values[0][1]))


def test_torch_is_the_pinned_cpu_build():
    import torch

    assert torch.__version__.startswith("2.13.0")
    if not torch.cuda.is_available():  # on a GPU machine a CUDA build is the right one
        assert "+cpu" in torch.__version__ or torch.version.cuda is None
    nvidia = [
        d.metadata["Name"]
        for d in metadata.distributions()
        if d.metadata["Name"].lower().startswith("nvidia-")
    ]
    assert nvidia == []


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    fence = readme.split("```", 2)[1].splitlines()
    commands = [line.split("#")[0].strip() for line in fence[1:] if line.strip()]
    assert len(commands) == 2, commands
    # the whole commands, in order: a filter added in CI (-m "not slow", -k, a path) fails here
    assert commands[1].split(" && ") == _ci_steps(ci)[:2]
    # and the README's lint runs after them
    lint = readme.split("Lint: `", 1)[1].split("`", 1)[0].split(" && ")
    assert set(lint) <= set(_ci_steps(ci)[2:]), (lint, _ci_steps(ci))


def _ci_steps(script: str) -> list[str]:
    """The commands of .ci/run's ``step NAME COMMAND...`` lines, in order."""
    steps = []
    for line in script.splitlines():
        words = shlex.split(line.strip().removeprefix("if ").removesuffix("; then"), comments=True)
        if words[:1] == ["step"]:
            steps.append(" ".join(words[2:]))
    return steps
