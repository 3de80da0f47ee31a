"""A CP2K level of theory: one CP2K input file holding the settings only, parsed and checked.

The frame's cell, coordinates and periodicity never come from the file (they are stripped here and
put in per frame by :mod:`~hillwalker.engines.cp2k.inputs`). A :class:`Level` is the CP2K
implementation of :class:`hillwalker.engines.levels.ReferenceLevel`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ase import Atoms
from ase.data import chemical_symbols
from cp2k_input_tools.parser_errors import ParserError

from hillwalker.engines.cp2k.run import DEFAULT_COMMAND, single_point
from hillwalker.engines.cp2k.tree import (
    PARSER_LOCK,
    as_list,
    get_path,
    parser,
    remove_path,
    set_path,
)
from hillwalker.engines.levels import (
    LevelError,
    RunOptions,
    SinglePointResult,
    free_atom_energies,
)

if TYPE_CHECKING:
    from hillwalker.engines.levels import ReferenceLevel

_RUN_TYPES_OK = {"energy", "energy_force"}


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

    code: ClassVar[str] = "cp2k"

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
            with PARSER_LOCK:
                tree = parser().parse(handle)
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
        kinds = {_kind_element(k): k for k in as_list(get_path(self.force_eval, "SUBSYS/KIND"))}
        for symbol in wanted:
            kind = kinds.get(symbol.lower())
            if kind is None:
                raise LevelError(
                    f"{self.path}: FORCE_EVAL/SUBSYS/KIND: missing_kind: "
                    f"no KIND section for element {symbol}"
                )
            self._check_kind(symbol, kind)

    def single_point(self, atoms: Atoms, workdir: Path, options: RunOptions) -> SinglePointResult:
        """:func:`~hillwalker.engines.cp2k.run.single_point` with the site's and campaign's options."""
        return single_point(
            atoms,
            self,
            workdir,
            command=options.command or DEFAULT_COMMAND,
            omp_threads=options.cores,
            timeout=options.timeout,
            min_distance=options.min_distance,
        )

    def data_file(self, name: str) -> Path:
        """A basis/potential/parameter file: absolute, beside the level, or in CP2K's data."""
        p = Path(name)
        if p.is_absolute():
            return p
        beside = self.path.parent / p
        return beside.resolve() if beside.is_file() else cp2k_data_dir() / p

    def _data_files(self, key: str, default: str) -> list[Path]:
        return [self.data_file(f) for f in as_list(get_path(self.force_eval, key)) or [default]]

    def _check_kind(self, symbol: str, kind: dict[str, Any]) -> None:
        where = f"{self.path}: FORCE_EVAL/SUBSYS/KIND {symbol}"
        basis_files = self._data_files("DFT/BASIS_SET_FILE_NAME", "BASIS_SET")
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
        potential_files = self._data_files("DFT/POTENTIAL_FILE_NAME", "POTENTIAL")
        if pot_name.upper() != "ALL" and not any(
            (symbol.lower(), pot_name.upper()) in _names_in(f) for f in potential_files
        ):
            raise LevelError(
                f"{where}: POTENTIAL: missing_kind: {pot_name} for {symbol} is not in "
                f"{', '.join(str(f) for f in potential_files)}"
            )

    def _xtb_parameter_file(self) -> Path:
        name = get_path(self.force_eval, "DFT/QS/XTB/PARAMETER/PARAM_FILE_NAME") or "xTB_parameters"
        return self.data_file(str(name))


def load(path: str | os.PathLike[str]) -> Level:
    """The level in a CP2K input file (what :func:`hillwalker.engines.levels.load_level` calls)."""
    return Level.from_file(path)


# --- free atoms ------------------------------------------------------------------------------


def isolated_atom_energies(
    level: Level,
    elements: Iterable[str],
    cache_dir: str | os.PathLike[str],
    *,
    command: Sequence[str] = DEFAULT_COMMAND,
    omp_threads: int = 1,
    box: float = 12.0,
) -> dict[str, float]:
    """Energy (eV) of each element as a free atom at ``level``, in its ground-state spin.

    Cached in ``cache_dir/isolated_atoms_<digest>.json`` so each level computes each element once.
    Raises :class:`RuntimeError` naming the element and workdir if one fails.
    """

    def label(symbol: str, multiplicity: int, workdir: Path) -> SinglePointResult:
        atom = Atoms(symbol, positions=[[box / 2] * 3], cell=[box] * 3, pbc=False)
        spin_level = isolated_atom_level(level, multiplicity)
        return single_point(atom, spin_level, workdir, command=command, omp_threads=omp_threads)

    return free_atom_energies(level.digest(), level.name, elements, cache_dir, label)


def isolated_atom_level(level: Level, multiplicity: int) -> Level:
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


def _kind_element(kind: dict[str, Any]) -> str:
    # Coordinates are written with element symbols as kind labels, so only a KIND named after
    # its element (case-insensitive) is used for it; "O1" or "H_water" would match no atom.
    return str(kind.get("_", "")).lower()


def _basis_names(kind: dict[str, Any]) -> list[str]:
    names = []
    for entry in as_list(kind.get("basis_set")):
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


if TYPE_CHECKING:  # mypy checks that a CP2K Level is a ReferenceLevel

    def _is_a_reference_level(level: Level) -> ReferenceLevel:
        return level
