"""Material templates: the ones shipped as package data, and new campaign directories made from them.

A template directory holds a start structure, CP2K levels (``levels/*.inp``), a PLUMED input, a
NequIP config, ``campaign.yaml`` and a README whose first line (``# name — description``) is what
``hillwalker templates`` prints. ``generic/`` is not a material: it holds the files that
:func:`new_from_structure` fills in (``{{KEY}}`` placeholders) for a structure nothing ships.

A new campaign directory is built in a temporary directory next to the target and renamed into
place at the end, so an error never leaves a half-made campaign behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from hillwalker.validate import read_structure

TEMPLATES_PACKAGE = "hillwalker.templates"
#: the template directory that ``new --structure`` fills in; not a material
GENERIC = "generic"
#: the template whose NequIP config new materials get (the project's benchmark system)
NEQUIP_REFERENCE = "mil53-al"
#: collective variables ``new --structure`` can set up (``distance``/``torsion`` take atoms)
CVS = ("volume", "distance", "torsion")
#: levels of theory ``new --structure`` can write
LEVELS = ("xtb", "pbe-d3")

_PLACEHOLDER = re.compile(r"\{\{([A-Z0-9_]+)\}\}")
# Basis-set families tried for a PBE-D3 KIND, best first; each must match a GTH-PBE potential's
# valence (…-q<n>).
_BASIS_FAMILIES = ("DZVP-MOLOPT-SR-GTH", "DZVP-MOLOPT-GTH")
_KJ_PER_MOL_PER_K = 0.0083144626


class TemplateError(ValueError):
    """A template or a new campaign cannot be made; the message names the file or option."""


@dataclass(frozen=True)
class TemplateInfo:
    name: str
    description: str


def templates_root() -> Traversable:
    return resources.files(TEMPLATES_PACKAGE)


def shipped_templates() -> list[TemplateInfo]:
    """Material templates that ship (every directory with a campaign.yaml), by name."""
    found = []
    for entry in templates_root().iterdir():
        if not entry.is_dir() or entry.name == GENERIC or entry.name.startswith(("_", ".")):
            continue
        if not entry.joinpath("campaign.yaml").is_file():
            continue
        found.append(TemplateInfo(entry.name, _description(entry)))
    return sorted(found, key=lambda t: t.name)


def _description(entry: Traversable) -> str:
    readme = entry.joinpath("README.md")
    if readme.is_file():
        for line in readme.read_text().splitlines():
            title = line.lstrip("#").strip()
            if title:
                # "# mil53-al — MIL-53(Al) breathing …": the part after the dash
                return title.split(" — ", 1)[-1]
    return "(no README.md)"


def template_dir(name: str) -> Traversable:
    names = [t.name for t in shipped_templates()]
    if name not in names:
        raise TemplateError(
            f"--template {name}: no such template; shipped: {', '.join(names) or 'none'}"
        )
    return templates_root().joinpath(name)


@contextlib.contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """A temporary directory next to ``target`` that becomes ``target`` if the block succeeds.

    Refuses a ``target`` that exists and is not an empty directory.
    """
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise TemplateError(f"{target}: exists and is not an empty directory; choose a new one")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.new-"))
    try:
        yield staging
        if target.exists():
            target.rmdir()  # empty (checked above): rename cannot replace a directory otherwise
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _copy_tree(source: Traversable, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name in {"__pycache__", "__init__.py"} or entry.name.startswith("."):
            continue
        if entry.is_dir():
            _copy_tree(entry, destination / entry.name)
        else:
            (destination / entry.name).write_bytes(entry.read_bytes())


def new_from_template(directory: str | os.PathLike[str], name: str) -> Path:
    """Make a campaign directory that is a copy of the shipped template ``name``."""
    source = template_dir(name)
    target = Path(directory)
    with staged_directory(target) as staging:
        _copy_tree(source, staging)
    return target


# --- a new material from the generic template ------------------------------------------------


@dataclass(frozen=True)
class CvChoice:
    kind: str  # one of CVS
    atoms: tuple[int, ...] = ()  # 1-based, PLUMED's numbering

    @classmethod
    def parse(cls, text: str, n_atoms: int, periodic: bool) -> CvChoice:
        """``volume``, ``distance:I,J`` or ``torsion:I,J,K,L`` (atoms numbered from 1)."""
        kind, _, atoms_text = text.partition(":")
        kind = kind.strip().lower()
        wanted = {"volume": 0, "distance": 2, "torsion": 4}
        if kind not in wanted:
            raise TemplateError(
                f"--cv {text}: unknown CV; choose volume, distance:I,J or torsion:I,J,K,L"
            )
        try:
            atoms = tuple(int(a) for a in atoms_text.split(",")) if atoms_text else ()
        except ValueError:
            raise TemplateError(f"--cv {text}: atom numbers must be integers") from None
        if len(atoms) != wanted[kind]:
            raise TemplateError(f"--cv {text}: {kind} takes {wanted[kind]} atom numbers")
        bad = [a for a in atoms if not 1 <= a <= n_atoms]
        if bad:
            raise TemplateError(
                f"--cv {text}: atom {bad[0]} does not exist (the structure has {n_atoms} atoms, "
                "numbered from 1)"
            )
        if len(set(atoms)) != len(atoms):
            raise TemplateError(f"--cv {text}: the atoms must be distinct")
        if kind == "volume" and not periodic:
            raise TemplateError(
                f"--cv {text}: the structure has no periodic cell, so no volume; "
                "use distance:I,J or torsion:I,J,K,L"
            )
        return cls(kind, atoms)


def fill_placeholders(text: str, values: dict[str, str], source: str) -> str:
    """Replace every ``{{KEY}}``; a key without a value is an error naming ``source``."""
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - values.keys())
    if missing:
        raise TemplateError(f"{source}: no value for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def pbe_kinds(elements: list[str], data_dir: Path) -> str:
    """``&KIND`` sections (MOLOPT DZVP basis + GTH-PBE potential of the same valence) for
    every element, from CP2K's data files; TemplateError naming the elements that have none."""
    basis_names = _names_in(data_dir / "BASIS_MOLOPT")
    potential_names = _names_in(data_dir / "GTH_POTENTIALS")
    sections, missing = [], []
    for element in elements:
        choice = None
        valences = sorted(
            int(name.rsplit("-q", 1)[1])
            for name in potential_names.get(element, set())
            if re.fullmatch(r"GTH-PBE-q\d+", name)
        )
        for family in _BASIS_FAMILIES:
            for q in valences:
                if f"{family}-q{q}" in basis_names.get(element, set()):
                    choice = (f"{family}-q{q}", f"GTH-PBE-q{q}")
                    break
            if choice:
                break
        if choice is None:
            missing.append(element)
            continue
        sections.append(
            f"  &KIND {element}\n   BASIS_SET {choice[0]}\n   POTENTIAL {choice[1]}\n  &END KIND"
        )
    if missing:
        raise TemplateError(
            f"--level pbe-d3: no MOLOPT DZVP basis set with a matching GTH-PBE potential for "
            f"{', '.join(missing)} in {data_dir / 'BASIS_MOLOPT'} and "
            f"{data_dir / 'GTH_POTENTIALS'}; use --level xtb"
        )
    return "\n".join(sections)


def _names_in(path: Path) -> dict[str, set[str]]:
    """Element → names on its header lines in a CP2K basis or potential file."""
    names: dict[str, set[str]] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read CP2K's data file ({exc.strerror})") from None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in atomic_numbers:
            names.setdefault(parts[0], set()).update(parts[1:])
    return names


def _primitive_cell(source: Path, atoms: Atoms) -> tuple[Atoms, str]:
    """The primitive cell of a periodic structure (pymatgen) and its CIF text."""
    if not np.all(atoms.pbc):
        raise TemplateError(f"--primitive: {source} has no periodic cell to reduce")
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.cif import CifWriter

    reduced = AseAtomsAdaptor.get_structure(atoms).get_primitive_structure()
    cell = AseAtomsAdaptor.get_atoms(reduced)
    return cell, str(CifWriter(reduced))


def reference_nequip_body(stress_weight: float) -> str:
    """The reference NequIP config (``mil53-al/nequip.yaml`` from its ``run:`` key on, without
    its material-specific header) with the top-level ``stress_weight`` replaced.

    Taken from the shipped file each time, so that a new material trains exactly like the
    benchmark one and the two never drift apart.
    """
    source = templates_root().joinpath(NEQUIP_REFERENCE, "nequip.yaml")
    text = source.read_text()
    start = re.search(r"^run:", text, flags=re.M)
    body, count = re.subn(
        r"^stress_weight:.*$",
        f"stress_weight: {stress_weight!r}",
        text[start.start() if start else 0 :],
        count=1,
        flags=re.M,
    )
    if count != 1:
        raise TemplateError(f"{NEQUIP_REFERENCE}/nequip.yaml: stress_weight: missing top-level key")
    return body.rstrip("\n")


def _structure_name(source: Path) -> str:
    return "structure.cif" if source.suffix.lower() == ".cif" else "structure.xyz"


def _cv_values(cv: CvChoice, atoms: Atoms, temperature: float) -> dict[str, str]:
    values = {"TEMPERATURE": f"{temperature:g}", "ATOMS": ",".join(map(str, cv.atoms))}
    if cv.kind == "volume":
        v0 = atoms.get_volume() / 1000.0  # Å³ → nm³
        values |= {
            "V0_NM3": f"{v0:.4f}",
            "V0_A3": f"{v0 * 1000:.1f}",
            "SIGMA": f"{0.01 * v0:.4g}",
            "GRID_MIN": f"{0.5 * v0:.4g}",
            "GRID_MAX": f"{2.0 * v0:.4g}",
            "WALL_LOW": f"{0.7 * v0:.4g}",
            "WALL_HIGH": f"{1.7 * v0:.4g}",
            # 50 kJ/mol once the volume is 10 % of V0 beyond a wall
            "KAPPA": f"{50.0 / (0.1 * v0) ** 2:.4g}",
        }
    elif cv.kind == "distance":
        i, j = (a - 1 for a in cv.atoms)
        d0 = atoms.get_distance(i, j, mic=bool(np.all(atoms.pbc))) / 10.0  # Å → nm
        values |= {
            "D0_NM": f"{d0:.4f}",
            "D0_A": f"{d0 * 10:.3f}",
            "GRID_MAX": f"{2 * d0 + 0.5:.3f}",
            "WALL_HIGH": f"{2 * d0 + 0.2:.3f}",
        }
    else:
        i, j, k, m = (a - 1 for a in cv.atoms)
        t0 = atoms.get_dihedral(i, j, k, m, mic=bool(np.all(atoms.pbc)))
        values["T0_DEG"] = f"{(t0 + 180) % 360 - 180:.1f}"
    return values


def new_from_structure(
    directory: str | os.PathLike[str],
    structure: str | os.PathLike[str],
    *,
    cv: str = "volume",
    level: str = "xtb",
    temperature: float = 300.0,
    primitive: bool = False,
) -> Path:
    """Make a campaign directory for a material nothing ships, from the generic template.

    The structure is copied unchanged (or reduced to its primitive cell with pymatgen when
    ``primitive``: every label then costs less); the level gets the structure's elements (KINDs from
    CP2K's data files for PBE-D3); the PLUMED input gets the CV with widths, grid and walls
    set from the start structure; NPT walkers for the volume, NVT otherwise.
    """
    source = Path(structure)
    target = Path(directory)
    if level not in LEVELS:
        raise TemplateError(f"--level {level}: choose one of {', '.join(LEVELS)}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise TemplateError(f"--temperature {temperature}: must be a positive number of K")
    try:
        atoms = read_structure(source)
    except ValueError as exc:
        raise TemplateError(str(exc)) from None
    reduced_cif = None
    if primitive:
        atoms, reduced_cif = _primitive_cell(source, atoms)
    choice = CvChoice.parse(cv, len(atoms), bool(np.all(atoms.pbc)))
    structure_name = "structure.cif" if reduced_cif else _structure_name(source)
    values = _generic_values(target, source, atoms, choice, level, temperature, structure_name)
    values["CV"] = cv
    values["COPIED"] = (
        "reduced to its primitive cell (pymatgen)" if reduced_cif else "copied unchanged"
    )
    _write_generic(target, source, atoms, choice, level, values, structure_name, reduced_cif)
    return target


def _generic_values(
    target: Path,
    source: Path,
    atoms: Atoms,
    choice: CvChoice,
    level: str,
    temperature: float,
    structure_name: str,
) -> dict[str, str]:
    """The generic template's placeholders for this structure, CV, level and temperature."""
    from hillwalker.engines.cp2k import cp2k_data_dir

    periodic = bool(np.all(atoms.pbc))
    elements = sorted(set(atoms.get_chemical_symbols()), key=atomic_numbers.__getitem__)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", target.resolve().name) or "campaign"
    ensemble = "npt" if choice.kind == "volume" else "nvt"
    summary = f"{len(atoms)} atoms, {atoms.get_chemical_formula(mode='hill')}" + (
        f", cell volume {atoms.get_volume():.1f} Å³" if periodic else ", no cell"
    )
    cv_text = {
        "volume": "VOLUME",
        "distance": f"DISTANCE of atoms {','.join(map(str, choice.atoms))}",
        "torsion": f"TORSION of atoms {','.join(map(str, choice.atoms))}",
    }[choice.kind]
    return {
        "NAME": name,
        "PROJECT": re.sub(r"\W+", "_", name),
        "DESCRIPTION": f"{ensemble.upper()} metadynamics on {cv_text}, {level} labels",
        "SOURCE": source.name,
        "STRUCTURE": structure_name,
        "SUMMARY": summary,
        "LEVEL": f"levels/{level}.inp",
        "LEVEL_NAME": level,
        "LEVEL_NOTE": "GFN1-xTB" if level == "xtb" else "PBE-D3(BJ), MOLOPT DZVP, GTH-PBE",
        "CV_NOTE": cv_text,
        "ELEMENTS": " ".join(elements),
        "ENSEMBLE": ensemble,
        "TEMPERATURE": f"{temperature:g}",
        "CELL_STRAIN": "0.03" if periodic else "0.0",
        "STRESS_NOTE": "periodic: trained on stress, which NPT walkers need"
        if periodic
        else "no cell: no stress labels, no stress loss",
        "KINDS": pbe_kinds(elements, cp2k_data_dir()) if level == "pbe-d3" else "",
        "NEQUIP_BODY": reference_nequip_body(1000.0 if periodic else 0.0),
    } | _cv_values(choice, atoms, temperature)


def _write_generic(
    target: Path,
    source: Path,
    atoms: Atoms,
    choice: CvChoice,
    level: str,
    values: dict[str, str],
    structure_name: str,
    reduced_cif: str | None,
) -> None:
    """Fill the generic template into ``target`` (all files, or none)."""
    from hillwalker.engines.cp2k import Level, LevelError

    level_file = values["LEVEL"]
    generic = templates_root().joinpath(GENERIC)
    files = {
        "campaign.yaml": generic.joinpath("campaign.yaml"),
        "README.md": generic.joinpath("README.md"),
        "nequip.yaml": generic.joinpath("nequip.yaml"),
        "plumed.dat": generic.joinpath("plumed", f"{choice.kind}.dat"),
        level_file: generic.joinpath("levels", f"{level}.inp"),
    }
    with staged_directory(target) as staging:
        for relative, template in files.items():
            text = fill_placeholders(template.read_text(), values, f"{GENERIC}/{template.name}")
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_text(text)
        if reduced_cif is not None:
            (staging / structure_name).write_text(reduced_cif)
        elif source.suffix.lower() in {".cif", ".xyz", ".extxyz"}:
            shutil.copyfile(source, staging / structure_name)
        else:
            atoms.write(staging / structure_name, format="extxyz")
        try:
            Level.from_file(staging / level_file).check_elements(values["ELEMENTS"].split())
        except LevelError as exc:
            raise TemplateError(str(exc).replace(str(staging), str(target))) from None
