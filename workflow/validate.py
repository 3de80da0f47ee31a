"""``hillwalker validate``: check a campaign directory before anything runs.

Every check runs, and every problem is reported, each as one line ``file: key or line: message``:
campaign.yaml against its schema; the start structure read; the level of theory loaded (a CP2K
input parsed with cp2k-input-tools, or a YAML level file for tblite or PySCF) and every element
of the structure covered at that level; the PLUMED input
loaded, line by line, in the real PLUMED kernel with the start structure, one step computed and
the CV values read back; the NequIP config parsed, its ``_target_`` classes located and its
species compared with the structure's; the site profile.

Nothing is written into the campaign directory: PLUMED runs in a temporary directory (its log,
backups and the files of PRINT/METAD go there and are deleted).

This module is the orchestrator: the PLUMED kernel check is
:func:`hillwalker.engines.plumed_check.load_in_kernel`, the geometry check the single points'
own (:mod:`hillwalker.engines.geometry`), the NequIP config checks are in
:mod:`hillwalker.validate_nequip`.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from pydantic import ValidationError

from hillwalker.config import (
    CAMPAIGN_FILE,
    Campaign,
    ConfigError,
    Safety,
    read_yaml,
    validation_problems,
)
from hillwalker.security import material_outside, permission_warnings
from hillwalker.validate_nequip import check_nequip

# Actions whose ``.bias`` is an energy; their other components (force2, work…) are not shown.
_BIAS_ACTIONS = frozenset(
    {
        "METAD",
        "PBMETAD",
        "RESTRAINT",
        "MOVINGRESTRAINT",
        "UPPER_WALLS",
        "LOWER_WALLS",
        "OPES_METAD",
        "OPES_METAD_EXPLORE",
        "BIASVALUE",
        "EXTERNAL",
    }
)


@dataclass(frozen=True)
class CvValue:
    """One value PLUMED computed on the start structure, in PLUMED units."""

    name: str  # "v", "phi", "metad.bias"
    action: str  # "VOLUME", "TORSION", … ("" if unknown)
    value: float

    @property
    def is_bias(self) -> bool:
        return self.action.upper() in _BIAS_ACTIONS

    def describe(self) -> str:
        """The value with its unit, converted to the units a user thinks in."""
        v = self.value
        kind = self.action.upper()
        if self.is_bias:
            from hillwalker.engines.plumed import KJ_PER_MOL

            return f"{v:.4g} kJ/mol ({v * KJ_PER_MOL:.4g} eV)"
        if kind == "VOLUME":
            return f"{v:.6g} nm³ = {v * 1000:.1f} Å³"
        if kind in {"DISTANCE", "CELL"}:
            return f"{v:.6g} nm = {v * 10:.4g} Å"
        if kind in {"TORSION", "ANGLE"}:
            return f"{v:.4f} rad = {math.degrees(v):.1f}°"
        return f"{v:.6g} (PLUMED units)"


@dataclass
class ValidationReport:
    directory: Path
    problems: list[str] = field(default_factory=list)
    #: checks that could not run because a hillwalker module is missing (not problems of DIR)
    unavailable: list[str] = field(default_factory=list)
    cv_values: list[CvValue] = field(default_factory=list)
    structure_summary: str = ""
    #: not problems (the run goes on), but worth fixing: e.g. a directory others can write to
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_campaign(directory: str | Path, site: str | Path | None = None) -> ValidationReport:
    """Run every check on a campaign directory; never raises for a problem of the directory."""
    root = Path(directory)
    report = ValidationReport(directory=root)
    if not root.is_dir():
        report.problems.append(f"{root}: not a directory")
        return report

    campaign, material = _check_campaign(root, report)
    report.warnings.extend(material_outside(root, material))
    report.warnings.extend(permission_warnings(root))
    if campaign is not None and campaign.materials is not None:
        _check_materials(root, campaign, report)
        if site is not None:
            _check_site(Path(site), report)
        return report
    atoms = None
    if material.get("structure"):
        atoms = _check_structure(root / material["structure"], campaign, report)
    if atoms is not None and campaign is not None:
        _check_cross(root, campaign, atoms, report)
    if material.get("level"):
        _check_level(root / material["level"], atoms, report)
    if material.get("baseline"):
        _check_baseline(root, material, campaign, atoms, report)
    if isinstance(material.get("intermediates"), list):
        _check_intermediates(root, material, atoms, report)
    if material.get("plumed"):
        _check_plumed(root / material["plumed"], atoms, campaign, root, report)
    if material.get("nequip"):
        check_nequip(root / material["nequip"], atoms, campaign, report)
    if campaign is not None and campaign.training.init is not None:
        _check_init(root, campaign, atoms, report)
    if site is not None:
        _check_site(Path(site), report)
    return report


# --- campaign.yaml ---------------------------------------------------------------------------


def _check_campaign(root: Path, report: ValidationReport) -> tuple[Campaign | None, dict[str, str]]:
    """The campaign (None if invalid) and whatever material paths can still be read from it."""
    path = root / CAMPAIGN_FILE
    try:
        data = read_yaml(path)
    except ConfigError as exc:
        report.problems.extend(exc.problems)
        return None, {}
    if not isinstance(data, dict):
        report.problems.append(f"{path}: expected a mapping of keys at the top level")
        return None, {}
    try:
        campaign = Campaign.model_validate(data)
    except ValidationError as exc:
        report.problems.extend(validation_problems(path, exc))
        # The material files can be checked even when another section is wrong.
        raw = data.get("material")
        usable = {}
        if isinstance(raw, dict):
            usable = {k: v for k, v in raw.items() if isinstance(v, str) and v}
        return None, usable
    return campaign, campaign.material.model_dump()


def _check_materials(root: Path, campaign: Campaign, report: ValidationReport) -> None:
    """A campaign of several materials: each one's structure and PLUMED input (with its own
    walkers), the shared level and NequIP template against every material's elements."""
    found: list[Atoms] = []
    summaries = []
    for n, (name, view) in enumerate(campaign.views()):
        files = {"structure": view.structure_file, "plumed": view.plumed_file}
        report.warnings.extend(material_outside(root, files, f"materials.{n}"))
        atoms = _check_structure(root / view.structure_file, view, report)
        if atoms is not None:
            _check_cross(root, view, atoms, report)
            atoms.info["material"] = f"materials.{n} ({name})"
            found.append(atoms)
            summaries.append(f"{name}: {report.structure_summary}")
        _check_plumed(root / view.plumed_file, atoms, view, root, report)
    report.structure_summary = "; ".join(summaries)
    m = campaign.material
    _check_level(root / m.level, None, report)
    before = len(report.problems)
    for atoms in found:
        _check_level(root / m.level, atoms, report)
        for problem in report.problems[before:]:
            report.problems[report.problems.index(problem)] = (
                f"{root / CAMPAIGN_FILE}: {atoms.info['material']}.structure: {problem}"
            )
        before = len(report.problems)
    every = _all_elements(found)
    check_nequip(root / m.nequip, every, campaign, report)
    if campaign.training.init is not None:
        _check_init(root, campaign, every, report)


def _all_elements(frames: list[Atoms]) -> Atoms | None:
    """One frame holding every element of ``frames`` (for the checks of the shared model's
    types), periodic as the first one."""
    if not frames:
        return None
    symbols = sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})
    first = frames[0]
    return Atoms(
        symbols,
        positions=[[2.0 * i, 0.0, 0.0] for i in range(len(symbols))],
        cell=first.cell,
        pbc=first.pbc,
    )


def _check_cross(root: Path, campaign: Campaign, atoms: Atoms, report: ValidationReport) -> None:
    path = root / CAMPAIGN_FILE
    periodic = bool(np.all(atoms.pbc)) and atoms.cell.rank == 3
    if campaign.walkers.ensemble == "npt" and not periodic:
        report.problems.append(
            f"{path}: walkers.ensemble: npt needs a periodic cell, and "
            f"{campaign.structure_file} has none (use nvt for a molecule in vacuum)"
        )


def _check_init(
    root: Path, campaign: Campaign, atoms: Atoms | None, report: ValidationReport
) -> None:
    """training.init names a model whose types cover the structure's elements."""
    from hillwalker.engines.nequip import ModelError
    from hillwalker.engines.nequip.deploy import model_species
    from hillwalker.settings import init_package

    where = f"{root / CAMPAIGN_FILE}: training.init"
    try:
        package = init_package(root, campaign)
        species = model_species(package)
    except ModelError as exc:
        report.problems.append(f"{where}: {exc}")
        return
    species_map = campaign.training.species_map or {}
    for new, old in sorted(species_map.items()):
        if old not in species:
            report.problems.append(
                f"{root / CAMPAIGN_FILE}: training.species_map: {new}: {old} is not a type of "
                f"{package} (its types: {' '.join(species)})"
            )
    covered = set(species) | set(species_map)
    missing = sorted(set(atoms.get_chemical_symbols()) - covered) if atoms else []
    if missing:
        report.problems.append(
            f"{where}: {package} has no type for {', '.join(missing)} (its types: "
            f"{' '.join(species)}); start from a model of these elements, or map each onto one "
            "of its types with training.species_map (e.g. {Ga: Al})"
        )


# --- structure -------------------------------------------------------------------------------


def read_structure(path: Path) -> Atoms:
    """The first frame of a CIF or (ext)xyz file; ValueError naming the file if unreadable."""
    from ase.io import read

    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            # ase warns about P1 "triclinic" settings and pymatgen-style CIF tags; harmless here
            warnings.simplefilter("ignore")
            atoms = read(path, index=0)
    except Exception as exc:  # ase raises anything from its many format readers
        text = str(exc).strip()
        # some readers stop with a bare StopIteration/IndexError when no atom block is found
        detail = text.splitlines()[0] if text else f"no structure found ({type(exc).__name__})"
        raise ValueError(f"{path}: unreadable structure: {detail}") from exc
    if not isinstance(atoms, Atoms) or len(atoms) == 0:
        raise ValueError(f"{path}: unreadable structure: no atoms in the file")
    if not np.all(np.isfinite(atoms.positions)):
        raise ValueError(f"{path}: unreadable structure: positions are not finite numbers")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any() and not pbc.all():
        raise ValueError(f"{path}: periodic along {pbc.tolist()} only: all three or none")
    if pbc.all() and atoms.cell.rank < 3:
        raise ValueError(f"{path}: periodic, but the cell is not three-dimensional")
    return atoms


def _check_structure(
    path: Path, campaign: Campaign | None, report: ValidationReport
) -> Atoms | None:
    try:
        atoms = read_structure(path)
    except ValueError as exc:
        report.problems.append(str(exc))
        return None
    try:
        from hillwalker.engines.geometry import geometry_problem
    except ImportError as exc:
        report.unavailable.append(f"{path}: geometry check unavailable ({exc})")
    else:
        # the same test every single point gets: a CIF with doubled sites fails here, not in CP2K
        min_distance = (campaign.safety if campaign else Safety()).min_distance
        problem = geometry_problem(atoms, min_distance)
        if problem:
            report.problems.append(f"{path}: {problem} (safety.min_distance in campaign.yaml)")
    periodic = bool(np.all(atoms.pbc))
    cell = f", cell volume {atoms.get_volume():.1f} Å³" if periodic else ", no cell (vacuum)"
    report.structure_summary = (
        f"{path.name}: {len(atoms)} atoms, {atoms.get_chemical_formula(mode='hill')}{cell}"
    )
    if campaign is not None and campaign.safety.keep_bonds:
        from hillwalker.engines.geometry import bond_graph

        kept = len(bond_graph(atoms).bonds)
        report.structure_summary += f", {kept} covalent bonds kept"
        if not kept:
            report.warnings.append(
                f"{path}: no covalent bond between non-metals to keep "
                "(safety.keep_bonds in campaign.yaml checks nothing here)"
            )
    return atoms


# --- level of theory ---------------------------------------------------------------------------


def _check_level(path: Path, atoms: Atoms | None, report: ValidationReport) -> None:
    if not path.is_file():
        report.problems.append(f"{path}: file not found")
        return
    from hillwalker.engines.levels import LevelError, check_frames, load_level

    try:
        level = load_level(path)  # any code: a CP2K input or a YAML level file
        if atoms is not None:
            check_frames(level, [atoms])
    except LevelError as exc:
        report.problems.append(str(exc))
    except ImportError as exc:  # the level's code's Python side (cp2k-input-tools) is missing
        report.unavailable.append(f"{path}: level check unavailable ({exc})")


def _check_baseline(
    root: Path,
    material: dict[str, str],
    campaign: Campaign | None,
    atoms: Atoms | None,
    report: ValidationReport,
) -> None:
    """The baseline level loads and covers the structure; its name differs from the target's;
    a delta baseline runs in the walker's process."""
    path = root / material["baseline"]
    before = len(report.problems)
    _check_level(path, atoms, report)
    if len(report.problems) > before or not path.is_file():
        return
    from hillwalker.engines.levels import LevelError, level_calculator, load_level

    try:
        baseline = load_level(path)
        target = root / material.get("level", "")
        if target.is_file() and load_level(target).name == baseline.name:
            report.problems.append(
                f"{path}: material.baseline: its level name {baseline.name!r} is the name of "
                "material.level too; labels of the two levels would be mixed (rename one file)"
            )
        if campaign is not None and campaign.training.method == "delta":
            level_calculator(baseline, 1)
    except LevelError as exc:
        report.problems.append(f"material.baseline: {exc}")
    except ImportError as exc:
        report.unavailable.append(f"{path}: level check unavailable ({exc})")


def _check_intermediates(
    root: Path, material: dict[str, Any], atoms: Atoms | None, report: ValidationReport
) -> None:
    """Each intermediate level loads and covers the structure; no two levels share a name."""
    from hillwalker.engines.levels import LevelError, load_level

    names: dict[str, str] = {}
    for key in ("level", "baseline"):
        path = root / str(material.get(key) or "")
        try:
            names[load_level(path).name] = f"material.{key}" if path.is_file() else ""
        except (LevelError, ImportError):
            continue
    for n, name in enumerate(material["intermediates"]):
        path = root / str(name)
        before = len(report.problems)
        _check_level(path, atoms, report)
        if len(report.problems) > before or not path.is_file():
            continue
        try:
            level_name = load_level(path).name
        except (LevelError, ImportError):
            continue
        if level_name in names:
            report.problems.append(
                f"{path}: material.intermediates.{n}: its level name {level_name!r} is that of "
                f"{names[level_name] or 'another level'} too; labels of the two would be mixed "
                "(rename one file)"
            )
        names[level_name] = f"material.intermediates.{n}"


# --- PLUMED ----------------------------------------------------------------------------------


def _check_plumed(
    path: Path,
    atoms: Atoms | None,
    campaign: Campaign | None,
    root: Path,
    report: ValidationReport,
) -> None:
    if not path.is_file():
        report.problems.append(f"{path}: file not found")
        return
    try:
        from hillwalker.engines.plumed import (
            PlumedInputError,
            clean_input,
            parse_action,
            source_line_numbers,
        )
        from hillwalker.engines.plumed_check import load_in_kernel
    except ImportError as exc:
        report.unavailable.append(f"{path}: PLUMED input check unavailable ({exc})")
        return
    text = path.read_text(errors="replace")
    try:
        lines = clean_input(text, str(path))
    except PlumedInputError as exc:
        report.problems.append(str(exc))
        return
    numbers = source_line_numbers(text, lines)
    actions = {label: action for label, action, _ in map(parse_action, lines) if label}

    if campaign is not None:
        _check_plumed_for_campaign(path, lines, numbers, campaign, root / CAMPAIGN_FILE, report)
    if atoms is None:
        return  # the kernel needs the structure; its own problem is already reported
    temperature = campaign.walkers.temperature if campaign is not None else 300.0
    timestep = campaign.walkers.timestep if campaign is not None else 1.0
    try:
        problems, values = load_in_kernel(lines, numbers, atoms, path, temperature, timestep)
    except ImportError as exc:
        report.unavailable.append(f"{path}: PLUMED kernel check unavailable ({exc})")
        return
    report.problems.extend(problems)
    found = [CvValue(n, actions.get(n.split(".")[0], ""), v) for n, v in values]
    report.cv_values = [c for c in found if not c.is_bias or c.name.endswith(".bias")]


def _check_plumed_for_campaign(
    path: Path,
    lines: list[str],
    numbers: list[int | None],
    campaign: Campaign,
    campaign_file: Path,
    report: ValidationReport,
) -> None:
    """What the walkers will do with this input: the bias mode, the temperature, the ensemble."""
    from hillwalker.engines.plumed import (
        PlumedInputError,
        keyword_value,
        parse_action,
        prepare_input,
    )

    # the walkers run this input rewritten for their bias mode: it must allow that
    try:
        with tempfile.TemporaryDirectory(prefix="hillwalker-validate-") as bias_dir:
            prepare_input(
                lines,
                walker_id=0,
                n_walkers=campaign.walkers.count,
                bias_dir=bias_dir,
                mode=campaign.walkers.bias,
                source=str(path),
            )
    except PlumedInputError as exc:
        report.problems.append(f"{exc} (walkers.bias: {campaign.walkers.bias} in {campaign_file})")
    for line, number in zip(lines, numbers, strict=True):
        _, action, keywords = parse_action(line)
        where = f"{path}: line {number}" if number else str(path)
        temp = keyword_value(keywords, "TEMP")
        if action == "METAD" and temp is not None:
            try:
                mismatch = abs(float(temp) - campaign.walkers.temperature) > 1e-6
            except ValueError:
                mismatch = False  # not a number: the kernel reports it
            if mismatch:
                # well-tempered METAD scales its hills with this T; the walkers run at another
                report.problems.append(
                    f"{where}: METAD TEMP={temp} K, but walkers.temperature is "
                    f"{campaign.walkers.temperature:g} K in {campaign_file} (make them equal, "
                    "or drop TEMP: the walkers pass their temperature to PLUMED)"
                )
        if action == "VOLUME" and campaign.walkers.ensemble == "nvt":
            report.problems.append(
                f"{where}: VOLUME is constant in walkers.ensemble nvt ({campaign_file}); "
                "use npt to bias the volume"
            )


# --- site profile ----------------------------------------------------------------------------


def _check_site(path: Path, report: ValidationReport) -> None:
    try:
        from hillwalker.sites import load_site
    except ImportError as exc:
        report.unavailable.append(f"{path}: site profile check unavailable ({exc})")
        return
    try:
        load_site(path)
    except ConfigError as exc:
        report.problems.extend(exc.problems)
