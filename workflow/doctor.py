"""`hillwalker doctor`: does every component of the stack really work here?

Each check loads or runs the real thing (CP2K ``--version``, the PLUMED kernel initialised,
torch imported) and returns a :class:`Check` with what it found and, if broken, how to fix it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Check:
    name: str
    ok: bool
    required: bool = True
    version: str | None = None
    path: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # one line: what is wrong and how to fix it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def check_cp2k(executable: str = "cp2k.psmp") -> Check:
    exe = shutil.which(executable)
    if exe is None:
        return Check(
            "cp2k",
            False,
            problem=f"'{executable}' not found on PATH: install it "
            "('apt-get install cp2k' on Debian, or 'module load cp2k' on a cluster)",
        )
    try:
        out = _run([exe, "--version"])
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("cp2k", False, path=exe, problem=f"'{exe} --version' failed: {exc}")
    text = out.stdout + out.stderr
    match = re.search(r"CP2K version\s+(\S+)", text)
    if out.returncode != 0 or match is None:
        return Check(
            "cp2k",
            False,
            path=exe,
            problem=f"'{exe} --version' exited {out.returncode} without a version; reinstall CP2K",
        )
    # The flags are wrapped at a fixed width: join the continuation lines before searching.
    joined = re.sub(r"\n\s{3}", "", text)
    data_dir = os.environ.get("CP2K_DATA_DIR")
    if not data_dir:
        found = re.search(r'__DATA_DIR="([^"]+)"', joined)
        data_dir = found.group(1) if found else None
    check = Check("cp2k", True, version=match.group(1), path=exe, details={"data_dir": data_dir})
    if data_dir is None or not (Path(data_dir) / "BASIS_MOLOPT").is_file():
        check.ok = False
        check.problem = (
            f"CP2K data directory {data_dir!r} has no BASIS_MOLOPT: set CP2K_DATA_DIR to the "
            "folder with CP2K's basis-set and potential files"
        )
    return check


def check_plumed() -> Check:
    from hillwalker.engines.plumed_kernel import PlumedKernelError, use_kernel

    try:
        kernel = use_kernel()
    except PlumedKernelError as exc:
        return Check("plumed", False, problem=str(exc))
    try:
        import plumed
    except ImportError as exc:
        return Check(
            "plumed",
            False,
            path=str(kernel),
            problem=f"the 'plumed' Python wrapper does not import ({exc}): rerun setup.sh",
        )
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "plumed.log"
        try:
            p = plumed.Plumed()
            p.cmd("setMDEngine", "python")
            p.cmd("setNatoms", 1)
            p.cmd("setLogFile", str(log))
            p.cmd("init")
            p.finalize()
        except Exception as exc:
            return Check(
                "plumed",
                False,
                path=str(kernel),
                problem=f"the PLUMED kernel {kernel} does not initialise ({exc})",
            )
        text = log.read_text() if log.exists() else ""
    match = re.search(r"Version:\s*(\S+)", text)
    return Check(
        "plumed",
        True,
        version=match.group(1) if match else None,
        path=str(kernel),
        details={
            "wrapper": importlib.metadata.version("plumed"),
            "from_env": "PLUMED_KERNEL" in os.environ,
        },
    )


def check_torch() -> Check:
    try:
        import torch
    except ImportError as exc:
        return Check("torch", False, problem=f"torch does not import ({exc}): rerun setup.sh")
    cuda = bool(torch.cuda.is_available())
    devices = (
        ["cpu"]
        + [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
        if cuda
        else ["cpu"]
    )
    return Check(
        "torch",
        True,
        version=torch.__version__,
        path=str(Path(torch.__file__).parent),
        details={"cuda": cuda, "devices": devices, "threads": torch.get_num_threads()},
    )


def check_module(name: str, dist: str | None = None, *, required: bool = True) -> Check:
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        return Check(
            dist or name,
            False,
            required=required,
            problem=f"python module '{name}' does not import ({exc}): rerun setup.sh",
        )
    version = importlib.metadata.version(dist or name)
    return Check(
        dist or name,
        True,
        required=required,
        version=version,
        path=str(Path(module.__file__).parent) if module.__file__ else None,
    )


def check_extra(name: str, module: str, extra: str, code: str | None = None) -> Check:
    """An optional level-of-theory code (tblite, PySCF, matscipy): its version, or how to
    install it; ``code``: the level files' ``code:`` value (default: ``name``)."""
    try:
        importlib.import_module(module)
    except Exception as exc:
        return Check(
            name,
            False,
            required=False,
            problem=f"{name} not available ({type(exc).__name__}): needed only for "
            f"'code: {code or name}' level files; install hillwalker[{extra}]",
        )
    return Check(name, True, required=False, version=importlib.metadata.version(name))


def check_slurm() -> Check:
    commands = {c: shutil.which(c) for c in ("sbatch", "squeue", "scancel", "sinfo", "sacct")}
    if not commands["sbatch"]:
        return Check(
            "slurm",
            False,
            required=False,
            problem="SLURM client commands not found (only needed for --site profiles "
            "that use SLURM; Debian: apt-get install slurm-client)",
        )
    out = _run([commands["sbatch"], "--version"])
    words = out.stdout.split()
    return Check(
        "slurm",
        True,
        required=False,
        version=words[-1] if words else None,
        path=commands["sbatch"],
        details={k: v for k, v in commands.items()},
    )


def run_checks() -> list[Check]:
    return [
        check_cp2k(),
        check_plumed(),
        check_torch(),
        check_module("nequip"),
        check_module("parsl"),
        check_module("ase"),
        check_module("pymatgen"),
        check_module("cp2k_input_tools", "cp2k-input-tools"),
        check_extra("tblite", "tblite.interface", "tblite"),
        check_extra("pyscf", "pyscf", "pyscf"),
        check_extra("matscipy", "matscipy.calculators.manybody", "sw", "stillinger-weber"),
        check_slurm(),
    ]
