"""CP2K single points: a level of theory (one CP2K input file) + a frame → energy, forces, stress.

The level file holds the settings only; the frame's cell, coordinates and periodicity are put into
the parsed input tree (cp2k-input-tools) for every run, never by string templating. Inside, units
are ASE's (eV, Å, eV/Å³, ASE stress sign); CP2K's Hartree, bohr and GPa (with the opposite stress
sign) are converted in :func:`_to_ase_units` only.

``single_point`` never raises for a CP2K problem: an SCF that does not converge goes up the retry
ladder (see :mod:`hillwalker.engines.cp2k_failures`), and whatever still fails is returned as a
result with ``status="failed"`` and a failure class, so one bad frame never stops a campaign.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.data import chemical_symbols
from cp2k_input_tools.generator import CP2KInputGenerator
from cp2k_input_tools.parser import CP2KInputParser
from cp2k_input_tools.parser_errors import ParserError

from hillwalker.engines.cp2k_failures import (
    DEFAULT_LADDER,
    FAILURES,
    ScfCorrection,
    get_path,
    remove_path,
    set_path,
)
from hillwalker.engines.cp2k_output import Cp2kOutput, parse_output
from hillwalker.engines.files import atomic_write_json, atomic_write_text
from hillwalker.engines.geometry import DEFAULT_MIN_DISTANCE, geometry_problem
from hillwalker.engines.processes import die_with_parent

__all__ = [
    "DEFAULT_LADDER",
    "FAILURES",
    "Level",
    "LevelError",
    "SinglePointResult",
    "cp2k_data_dir",
    "isolated_atom_energies",
    "parse_output",
    "single_point",
]

#: name of the record a finished single point leaves in its workdir (written last, atomically)
RESULT_FILE = "result.json"

# Solvers that can treat a cell without periodic images; anything else is replaced by MT for a
# frame without periodicity (PERIODIC would silently add images).
_NONPERIODIC_SOLVERS = {"mt", "wavelet", "analytic", "multipole", "implicit"}
_ISOLATED_ONLY_SOLVERS = {"mt", "analytic", "multipole"}
# Vacuum around a molecule on each side (Å): MT needs a box about twice the density's extent.
_MOLECULE_PADDING = 5.0

_RUN_TYPES_OK = {"energy", "energy_force"}


_PARSER_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _parser() -> CP2KInputParser:
    # Building a parser loads CP2K's 20 MB input schema (~3 s); one per process is enough.
    return CP2KInputParser()


class _Generator(CP2KInputGenerator):
    """The generator on the parser's already loaded schema (saves a second ~3 s XML load)."""

    def __init__(self, schema: Any) -> None:
        self._parse_tree = schema
        self._shift = 3


@functools.lru_cache(maxsize=1)
def _generator() -> CP2KInputGenerator:
    schema = getattr(_parser(), "_spec", None)  # cp2k-input-tools 0.9 keeps it there
    return _Generator(schema) if schema is not None else CP2KInputGenerator()


class LevelError(ValueError):
    """A level file is unusable: the message names the file and the section or key."""


def cp2k_data_dir() -> Path:
    """Where CP2K looks up bare basis/potential file names (``CP2K_DATA_DIR`` first)."""
    env = os.environ.get("CP2K_DATA_DIR")
    if env:
        return Path(env)
    candidates = [Path("/usr/share/cp2k")]
    exe = shutil.which("cp2k.psmp")
    if exe:
        root = Path(exe).resolve().parent.parent
        candidates += [root / "share" / "cp2k" / "data", root / "share" / "cp2k", root / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


@dataclass(frozen=True)
class Level:
    """A level of theory: one CP2K input file, parsed and checked, without cell or coordinates."""

    name: str
    path: Path
    text: str
    tree: dict[str, Any] = field(repr=False, compare=False, hash=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Level:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise LevelError(f"{p}: cannot read the level file: {exc.strerror or exc}") from exc
        return cls.from_text(text, path=p)

    @classmethod
    def from_text(cls, text: str, *, path: Path, name: str | None = None) -> Level:
        handle = io.StringIO(text)
        handle.name = str(path)
        try:
            with _PARSER_LOCK:
                tree = _parser().parse(handle)
        except ParserError as exc:
            raise LevelError(f"{path}: {_describe_parser_error(exc)}") from exc
        except (ValueError, KeyError, TypeError) as exc:  # the parser lets some through raw
            raise LevelError(f"{path}: not a valid CP2K input: {exc}") from exc
        tree = _check_and_strip(tree, path)
        return cls(name=name or path.stem, path=path, text=text, tree=tree)

    @property
    def force_eval(self) -> dict[str, Any]:
        fe: dict[str, Any] = self.tree["+force_eval"][0]
        return fe

    @property
    def is_xtb(self) -> bool:
        return str(get_path(self.force_eval, "DFT/QS/METHOD") or "").lower() == "xtb"

    def digest(self) -> str:
        """Content hash of the settings (not of comments, layout, cell or coordinates)."""
        tree = copy.deepcopy(self.tree)
        tree.get("+global", {}).pop("project_name", None)  # names output files only
        blob = json.dumps(tree, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def check_elements(self, symbols: Iterable[str]) -> None:
        """Raise :class:`LevelError` unless every element can be run at this level."""
        wanted = sorted(set(symbols))
        if self.is_xtb:
            known = _xtb_elements(self._xtb_parameter_file())
            missing = [s for s in wanted if s not in known]
            if missing:
                raise LevelError(
                    f"{self.path}: FORCE_EVAL/DFT/QS/XTB: missing_kind: no GFN1-xTB parameters "
                    f"for {', '.join(missing)}"
                )
            return
        kinds = {_kind_element(k): k for k in _as_list(get_path(self.force_eval, "SUBSYS/KIND"))}
        basis_files = [
            self._data_file(f)
            for f in _as_list(get_path(self.force_eval, "DFT/BASIS_SET_FILE_NAME")) or ["BASIS_SET"]
        ]
        potential_files = [
            self._data_file(f)
            for f in _as_list(get_path(self.force_eval, "DFT/POTENTIAL_FILE_NAME")) or ["POTENTIAL"]
        ]
        for symbol in wanted:
            kind = kinds.get(symbol.lower())
            where = f"{self.path}: FORCE_EVAL/SUBSYS/KIND {symbol}"
            if kind is None:
                raise LevelError(
                    f"{self.path}: FORCE_EVAL/SUBSYS/KIND: missing_kind: "
                    f"no KIND section for element {symbol}"
                )
            for basis in _basis_names(kind):
                if not any((symbol.lower(), basis.upper()) in _names_in(f) for f in basis_files):
                    raise LevelError(
                        f"{where}: BASIS_SET: missing_kind: {basis} for {symbol} is not in "
                        f"{', '.join(str(f) for f in basis_files)}"
                    )
            if not _basis_names(kind):
                raise LevelError(f"{where}: BASIS_SET: missing_kind: no basis set for {symbol}")
            potential = kind.get("potential")
            if not potential:
                raise LevelError(f"{where}: POTENTIAL: missing_kind: no potential for {symbol}")
            pot_name = potential if isinstance(potential, str) else potential[-1]
            if pot_name.upper() != "ALL" and not any(
                (symbol.lower(), pot_name.upper()) in _names_in(f) for f in potential_files
            ):
                raise LevelError(
                    f"{where}: POTENTIAL: missing_kind: {pot_name} for {symbol} is not in "
                    f"{', '.join(str(f) for f in potential_files)}"
                )

    def _data_file(self, name: str) -> Path:
        p = Path(name)
        if p.is_absolute():
            return p
        beside = self.path.parent / p
        return beside.resolve() if beside.is_file() else cp2k_data_dir() / p

    def _xtb_parameter_file(self) -> Path:
        name = get_path(self.force_eval, "DFT/QS/XTB/PARAMETER/PARAM_FILE_NAME") or "xTB_parameters"
        return self._data_file(str(name))


@dataclass
class SinglePointResult:
    status: str  # "done" | "failed"
    energy: float | None  # eV
    forces: np.ndarray | None  # eV/Å, (n, 3)
    stress: np.ndarray | None  # eV/Å³, Voigt (xx yy zz yz xz xy), ASE sign; None without pbc
    failure: str | None  # one of FAILURES
    corrections: list[dict[str, Any]]
    attempts: int
    cp2k_seconds: float
    wall_seconds: float
    workdir: Path
    message: str | None = None  # why it failed, in a line
    scf_steps: int | None = None
    process_seconds: float = 0.0  # CP2K processes from start to exit (includes MPI start-up)

    def to_atoms(self, atoms: Atoms, **provenance: Any) -> Atoms:
        """A labeled copy of ``atoms`` (failed: an unlabeled copy) with status, failure and
        corrections (JSON text, so it survives extxyz) in ``info``."""
        from hillwalker.engines.dataset import (
            label,
        )  # workflow side; imported late to keep engines light

        info = {
            "status": self.status,
            "failure": self.failure,
            "corrections": json.dumps(self.corrections) if self.corrections else None,
            "failure_message": self.message,
            **provenance,
        }
        if self.status == "done" and self.energy is not None and self.forces is not None:
            return label(atoms, self.energy, self.forces, self.stress, **info)
        frame = atoms.copy()
        frame.calc = None
        for key in ("energy", "forces", "stress", "free_energy"):
            frame.info.pop(key, None)
        frame.info.update({k: v for k, v in info.items() if v is not None})
        return frame

    def as_record(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "energy_eV": self.energy,
            "forces_eV_per_A": None if self.forces is None else self.forces.tolist(),
            "stress_eV_per_A3": None if self.stress is None else self.stress.tolist(),
            "failure": self.failure,
            "message": self.message,
            "corrections": self.corrections,
            "attempts": self.attempts,
            "scf_steps": self.scf_steps,
            "cp2k_seconds": self.cp2k_seconds,
            "process_seconds": self.process_seconds,
            "wall_seconds": self.wall_seconds,
        }


def single_point(
    atoms: Atoms,
    level: Level,
    workdir: str | os.PathLike[str],
    *,
    command: Sequence[str] = ("cp2k.psmp",),
    omp_threads: int = 1,
    timeout: float | None = None,
    min_distance: float = DEFAULT_MIN_DISTANCE,
    ladder: Sequence[ScfCorrection] = DEFAULT_LADDER,
    crash_reruns: int = 1,
) -> SinglePointResult:
    """Energy, forces (and stress for a periodic frame) of ``atoms`` at ``level``.

    ``command`` launches CP2K (``-i``/``-o`` are appended), e.g. ``["mpirun", "-np", "2",
    "cp2k.psmp"]``. ``timeout`` (s) bounds the whole single point, all attempts together; on
    expiry the process group is killed. A crash that CP2K did not explain (no ABORT message:
    the launcher, MPI, a signal, a node) is rerun unchanged up to ``crash_reruns`` times, and
    each rerun is recorded in ``corrections``; a CP2K ABORT is the input's fault and is not
    rerun. Every file goes into ``workdir``: ``attempt-N.inp/.out`` and, last, ``result.json``.
    """
    start = time.perf_counter()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    # Files of an earlier run in this directory would be mistaken for this one's.
    for stale in [work / RESULT_FILE, *work.glob("attempt-*")]:
        stale.unlink(missing_ok=True)
    corrections: list[dict[str, Any]] = []
    cp2k_seconds = 0.0
    process_seconds = 0.0

    def finish(result_kwargs: dict[str, Any]) -> SinglePointResult:
        result = SinglePointResult(
            corrections=corrections,
            cp2k_seconds=cp2k_seconds,
            process_seconds=process_seconds,
            wall_seconds=time.perf_counter() - start,
            workdir=work,
            **result_kwargs,
        )
        atomic_write_json(work / RESULT_FILE, result.as_record())
        return result

    def failed(failure: str, message: str, attempts: int) -> SinglePointResult:
        return finish(
            {
                "status": "failed",
                "energy": None,
                "forces": None,
                "stress": None,
                "failure": failure,
                "message": message,
                "attempts": attempts,
            }
        )

    problem = geometry_problem(atoms, min_distance)
    if problem:
        return failed("bad_geometry", problem, 0)
    try:
        level.check_elements(atoms.get_chemical_symbols())
    except LevelError as exc:
        return failed("missing_kind", str(exc), 0)

    tree = frame_input(atoms, level)
    periodic = bool(np.all(atoms.pbc))
    attempt = 0
    scf_steps: int | None = None
    rungs = iter(ladder)
    while True:
        attempt += 1
        remaining = None if timeout is None else timeout - (time.perf_counter() - start)
        if remaining is not None and remaining <= 0:
            return failed(
                "timeout", f"no time left for attempt {attempt} (timeout {timeout} s)", attempt - 1
            )
        run = _run_cp2k(tree, work, f"attempt-{attempt}", command, omp_threads, remaining)
        cp2k_seconds += run.output.cp2k_seconds or 0.0
        process_seconds += run.seconds
        if run.timed_out:
            return failed(
                "timeout",
                f"CP2K killed after the {timeout} s timeout "
                f"(attempt {attempt}, {work / run.output_name})",
                attempt,
            )
        out = run.output
        scf_steps = out.scf_steps
        if (
            out.energy_hartree is not None
            and out.forces_hartree_bohr is not None
            and not out.scf_converged
        ):
            # Parsed but SCF not converged: climb the ladder.
            for rung in rungs:
                edit = rung.correct(tree)
                if edit is not None:
                    corrections.append(edit)
                    break
            else:
                return failed(
                    "scf_not_converged",
                    f"SCF not converged after {attempt} attempt(s) ({work / run.output_name})",
                    attempt,
                )
            continue
        if run.returncode != 0 or out.energy_hartree is None or out.forces_hartree_bohr is None:
            detail = "; ".join(out.errors) or run.stderr_tail or "no energy/forces in the output"
            message = f"CP2K exit status {run.returncode} ({work / run.output_name}): {detail}"
            time_left = timeout is None or time.perf_counter() - start < timeout
            if not out.errors and crash_reruns > 0 and time_left:
                crash_reruns -= 1
                corrections.append({"name": "rerun_after_crash", "after": message})
                continue
            return failed("crash", message, attempt)
        if out.forces_hartree_bohr.shape != (len(atoms), 3):
            return failed(
                "crash",
                f"{work / run.output_name}: forces for "
                f"{len(out.forces_hartree_bohr)} atoms, expected {len(atoms)}",
                attempt,
            )
        if periodic and out.stress_gpa is None:
            return failed("crash", f"{work / run.output_name}: no stress tensor printed", attempt)
        energy, forces, stress = _to_ase_units(out, periodic)
        return finish(
            {
                "status": "done",
                "energy": energy,
                "forces": forces,
                "stress": stress,
                "failure": None,
                "attempts": attempt,
                "scf_steps": scf_steps,
            }
        )


def frame_input(atoms: Atoms, level: Level) -> dict[str, Any]:
    """The level's input tree with this frame's cell, coordinates and periodicity put in."""
    tree = copy.deepcopy(level.tree)
    glob = tree.setdefault("+global", {})
    glob["project_name"] = "hillwalker"
    glob["run_type"] = "energy_force"
    fe = tree["+force_eval"][0]
    fe["method"] = "quickstep"
    periodic = bool(np.all(atoms.pbc))
    subsys = fe.setdefault("+subsys", {})
    if periodic:
        cell = np.asarray(atoms.cell)
        positions = atoms.get_positions()
        period = "xyz"
        fe["stress_tensor"] = (
            fe.get("stress_tensor")
            if str(fe.get("stress_tensor", "none")).lower() not in {"none"}
            else "analytical"
        )
    else:
        cell, positions = _molecule_box(atoms)
        period = "none"
        fe["stress_tensor"] = "none"
    subsys["+cell"] = {
        "a": cell[0].tolist(),
        "b": cell[1].tolist(),
        "c": cell[2].tolist(),
        "periodic": period,
    }
    subsys["+coord"] = {
        "*": [
            f"{s} {x!r} {y!r} {z!r}"
            for s, (x, y, z) in zip(atoms.get_chemical_symbols(), positions.tolist(), strict=True)
        ]
    }
    dft = fe.setdefault("+dft", {})
    poisson = dft.setdefault("+poisson", {})
    poisson["periodic"] = period
    solver = str(poisson.get("poisson_solver", "periodic")).lower()
    if periodic and solver in _ISOLATED_ONLY_SOLVERS:
        poisson["poisson_solver"] = "periodic"  # these cannot treat a 3-D periodic cell
    if not periodic:
        if solver not in _NONPERIODIC_SOLVERS:
            poisson["poisson_solver"] = "mt"
        if level.is_xtb:
            set_path(fe, "DFT/QS/XTB/DO_EWALD", False)
    for key in ("basis_set_file_name", "potential_file_name"):
        if key in dft:
            names = _as_list(dft[key])
            resolved = [
                str(level._data_file(n)) if (level.path.parent / n).is_file() else n for n in names
            ]
            dft[key] = resolved if isinstance(dft[key], list) else resolved[0]
    # Wavefunction restart files (4 x ~100 KB per MIL-53 frame) are never read back: off,
    # unless the level asks for them.
    scf = dft.setdefault("+scf", {})
    if isinstance(scf, dict):
        scf_print = scf.setdefault("+print", {})
        scf_print.setdefault("+restart", {"_": "OFF"})
        scf_print.setdefault("+restart_history", {"_": "OFF"})
    prints = fe.setdefault("+print", {})
    prints["+forces"] = {"_": "ON"}
    if periodic:
        prints["+stress_tensor"] = {"_": "ON"}
    else:
        prints.pop("+stress_tensor", None)
    return tree


def write_input(tree: dict[str, Any]) -> str:
    with _PARSER_LOCK:
        return "\n".join(_generator().line_iter(tree)) + "\n"


def isolated_atom_energies(
    level: Level,
    elements: Iterable[str],
    cache_dir: str | os.PathLike[str],
    *,
    command: Sequence[str] = ("cp2k.psmp",),
    omp_threads: int = 1,
    box: float = 12.0,
) -> dict[str, float]:
    """Energy (eV) of each element as a free atom at ``level``, in its ground-state spin.

    Cached in ``cache_dir/isolated_atoms_<digest>.json`` so each level computes each element once.
    Raises :class:`RuntimeError` naming the element and workdir if one fails.
    """
    cache = Path(cache_dir)
    cache_file = cache / f"isolated_atoms_{level.digest()}.json"
    known: dict[str, float] = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    for symbol in sorted(set(elements)):
        if symbol in known:
            continue
        atom = Atoms(symbol, positions=[[box / 2] * 3], cell=[box] * 3, pbc=False)
        spin_level = _isolated_atom_level(level, _GROUND_STATE_MULTIPLICITY.get(symbol, 1))
        result = single_point(
            atom,
            spin_level,
            cache / f"atom_{level.digest()}_{symbol}",
            command=command,
            omp_threads=omp_threads,
        )
        if result.status != "done" or result.energy is None:
            raise RuntimeError(
                f"isolated {symbol} atom at level {level.name} failed: "
                f"{result.failure}: {result.message}"
            )
        known[symbol] = result.energy
        atomic_write_json(cache_file, known)
    return {s: known[s] for s in sorted(set(elements))}


# Ground-state spin multiplicities (2S+1) of free atoms (Hund's rules).
_GROUND_STATE_MULTIPLICITY = {
    "H": 2,
    "He": 1,
    "Li": 2,
    "Be": 1,
    "B": 2,
    "C": 3,
    "N": 4,
    "O": 3,
    "F": 2,
    "Ne": 1,
    "Na": 2,
    "Mg": 1,
    "Al": 2,
    "Si": 3,
    "P": 4,
    "S": 3,
    "Cl": 2,
    "Ar": 1,
    "K": 2,
    "Ca": 1,
    "Sc": 2,
    "Ti": 3,
    "V": 4,
    "Cr": 7,
    "Mn": 6,
    "Fe": 5,
    "Co": 4,
    "Ni": 3,
    "Cu": 2,
    "Zn": 1,
    "Ga": 2,
    "Ge": 3,
    "As": 4,
    "Se": 3,
    "Br": 2,
    "Kr": 1,
    "Zr": 3,
    "Ag": 2,
    "Cd": 1,
}


def _isolated_atom_level(level: Level, multiplicity: int) -> Level:
    """The level for a free atom: spin-polarized at its ground-state multiplicity, integer
    occupations (smearing would spread the electrons over the degenerate p/d shell, and needs
    empty orbitals that a minimal basis such as xTB's may not have for one spin)."""
    tree = copy.deepcopy(level.tree)
    fe = tree["+force_eval"][0]
    for path in ("DFT/SCF/SMEAR", "DFT/SCF/ADDED_MOS"):
        remove_path(fe, path)
    if multiplicity > 1:
        set_path(fe, "DFT/UKS", True)
        set_path(fe, "DFT/MULTIPLICITY", multiplicity)
    return Level(name=level.name, path=level.path, text=level.text, tree=tree)


# --- running ---------------------------------------------------------------------------------


@dataclass
class _Run:
    returncode: int | None
    timed_out: bool
    output: Cp2kOutput
    output_name: str
    stderr_tail: str
    seconds: float = 0.0


def _run_cp2k(
    tree: dict[str, Any],
    work: Path,
    stem: str,
    command: Sequence[str],
    omp_threads: int,
    timeout: float | None,
) -> _Run:
    inp, out = f"{stem}.inp", f"{stem}.out"
    atomic_write_text(work / inp, write_input(tree))
    (work / out).unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(omp_threads))
    # A cp2k.psmp started without mpirun is an MPI singleton: by default Open MPI then forks a
    # helper daemon first (~0.3 s per run, measured); this run never spawns, so skip it.
    env.setdefault("OMPI_MCA_ess_singleton_isolated", "1")
    argv = [*command, "-i", inp, "-o", out]
    timed_out = False
    with (work / f"{stem}.stdout").open("wb") as log:
        started = time.perf_counter()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=work,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        except OSError as exc:
            return _Run(None, False, Cp2kOutput(), out, f"cannot start {argv[0]!r}: {exc}")
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        except BaseException:
            _kill_group(proc)  # interrupted (Ctrl-C, task cancelled): leave no CP2K behind
            raise
        seconds = time.perf_counter() - started
    text = (work / out).read_text(errors="replace") if (work / out).is_file() else ""
    stdout = (work / f"{stem}.stdout").read_text(errors="replace")
    tail = " | ".join(line.strip() for line in stdout.strip().splitlines()[-3:])
    return _Run(proc.returncode, timed_out, parse_output(text), out, tail, seconds)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to CP2K's whole process group (mpirun and its ranks, or a wrapper and its
    child), then SIGKILL to whatever of the group is left: the launcher may exit before the
    program it started has stopped."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # anyone left in the group (zombies included)?
        except ProcessLookupError:
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)


def _to_ase_units(out: Cp2kOutput, periodic: bool) -> tuple[float, np.ndarray, np.ndarray | None]:
    assert out.energy_hartree is not None and out.forces_hartree_bohr is not None
    energy = out.energy_hartree * units.Hartree
    forces = out.forces_hartree_bohr * (units.Hartree / units.Bohr)
    stress = None
    if periodic and out.stress_gpa is not None:
        # CP2K prints the stress with the opposite sign to ASE (positive = compressive there).
        s = -out.stress_gpa * units.GPa
        stress = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    return energy, forces, stress


def _molecule_box(atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """A cubic-ish box for a frame without periodicity, the molecule in its centre."""
    pos = atoms.get_positions()
    if atoms.cell.rank == 3 and np.allclose(atoms.cell, np.diag(np.diag(atoms.cell))):
        cell = np.asarray(atoms.cell)
        centre = np.diag(cell) / 2
    else:
        extent = pos.max(axis=0) - pos.min(axis=0)
        lengths = np.maximum(2 * extent + 2 * _MOLECULE_PADDING, 10.0)
        cell = np.diag(lengths)
        centre = lengths / 2
    shifted = pos - (pos.max(axis=0) + pos.min(axis=0)) / 2 + centre
    return cell, shifted


# --- level checks ----------------------------------------------------------------------------


def _check_and_strip(tree: dict[str, Any], path: Path) -> dict[str, Any]:
    run_type = str(get_path(tree, "GLOBAL/RUN_TYPE") or "energy_force").lower()
    if run_type not in _RUN_TYPES_OK:
        raise LevelError(
            f"{path}: GLOBAL/RUN_TYPE: is {run_type.upper()}, a level must be a "
            "single point (ENERGY_FORCE)"
        )
    evals = tree.get("+force_eval")
    if not evals:
        raise LevelError(f"{path}: FORCE_EVAL: section missing")
    if len(evals) != 1:
        raise LevelError(f"{path}: FORCE_EVAL: {len(evals)} sections, a level has exactly one")
    fe = evals[0]
    method = str(fe.get("method", "quickstep")).lower()
    if method not in {"qs", "quickstep"}:
        raise LevelError(f"{path}: FORCE_EVAL/METHOD: is {method.upper()}, only QS is supported")
    if "+dft" not in fe:
        raise LevelError(f"{path}: FORCE_EVAL/DFT: section missing")
    if "+motion" in tree:
        raise LevelError(f"{path}: MOTION: a level is a single point, remove the MOTION section")
    subsys = fe.get("+subsys", {})
    # The frame brings these; a stale cell or coordinates from the level must not leak in.
    for key in ("+cell", "+coord", "+topology", "+velocity"):
        subsys.pop(key, None)
    return tree


def _describe_parser_error(exc: ParserError) -> str:
    message = exc.args[0] if exc.args else str(exc)
    ctx = exc.args[1] if len(exc.args) > 1 else None
    where = []
    section = getattr(getattr(ctx, "section", None), "name", None)
    if section:
        where.append(f"section {section}")
    line = getattr(ctx, "line", None)
    if line:
        where.append(f"line {line.strip()!r}")
    return f"{', '.join(where)}: {message}" if where else str(message)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _kind_element(kind: dict[str, Any]) -> str:
    # Coordinates are written with element symbols as kind labels, so only a KIND named after
    # its element (case-insensitive) is used for it; "O1" or "H_water" would match no atom.
    return str(kind.get("_", "")).lower()


def _basis_names(kind: dict[str, Any]) -> list[str]:
    names = []
    for entry in _as_list(kind.get("basis_set")):
        name = entry if isinstance(entry, str) else entry[-1]
        if str(name).upper() != "NONE":
            names.append(str(name))
    return names


@functools.lru_cache(maxsize=64)
def _names_in_cached(path: str, mtime: float) -> frozenset[tuple[str, str]]:
    names: set[tuple[str, str]] = set()
    symbols = {s.lower() for s in chemical_symbols}
    with Path(path).open(errors="replace") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) >= 2 and parts[0].lower() in symbols and not parts[0].startswith("#"):
                names.update((parts[0].lower(), n.upper()) for n in parts[1:])
    return frozenset(names)


def _names_in(path: Path) -> frozenset[tuple[str, str]]:
    """(element, NAME) pairs of the basis sets or potentials in a CP2K data file."""
    try:
        return _names_in_cached(str(path), path.stat().st_mtime)
    except OSError:
        return frozenset()


@functools.lru_cache(maxsize=8)
def _xtb_elements(path: Path) -> frozenset[str]:
    known: set[str] = set()
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return frozenset()
    for line in lines:
        parts = line.split()
        if parts and not parts[0].startswith("#") and parts[0] in chemical_symbols:
            known.add(parts[0])
    return frozenset(known)
