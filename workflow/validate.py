"""``hillwalker validate``: check a campaign directory before anything runs.

Every check runs, and every problem is reported, each as one line ``file: key or line: message``:
campaign.yaml against its schema; the start structure read; the CP2K level parsed with
cp2k-input-tools and every element of the structure covered at that level; the PLUMED input
loaded, line by line, in the real PLUMED kernel with the start structure, one step computed and
the CV values read back; the NequIP config parsed, its ``_target_`` classes located and its
species compared with the structure's; the site profile.

Nothing is written into the campaign directory: PLUMED runs in a temporary directory (its log,
backups and the files of PRINT/METAD go there and are deleted).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from pydantic import ValidationError

from hillwalker.config import (
    CAMPAIGN_FILE,
    Campaign,
    ConfigError,
    Safety,
    read_yaml,
    validation_problems,
)

#: the file the validation step makes PLUMED print every value to (inside the temporary dir)
_VALUES_FILE = "hillwalker-validate.colvar"

_KJ_PER_MOL_PER_EV = 96.48533212331
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
            return f"{v:.4g} kJ/mol ({v / _KJ_PER_MOL_PER_EV:.4g} eV)"
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
    atoms = None
    if material.get("structure"):
        atoms = _check_structure(root / material["structure"], campaign, report)
    if atoms is not None and campaign is not None:
        _check_cross(root, campaign, atoms, report)
    if material.get("level"):
        _check_level(root / material["level"], atoms, report)
    if material.get("plumed"):
        _check_plumed(root / material["plumed"], atoms, campaign, root, report)
    if material.get("nequip"):
        _check_nequip(root / material["nequip"], atoms, campaign, report)
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


def _check_cross(root: Path, campaign: Campaign, atoms: Atoms, report: ValidationReport) -> None:
    path = root / CAMPAIGN_FILE
    periodic = bool(np.all(atoms.pbc)) and atoms.cell.rank == 3
    if campaign.walkers.ensemble == "npt" and not periodic:
        report.problems.append(
            f"{path}: walkers.ensemble: npt needs a periodic cell, and "
            f"{campaign.material.structure} has none (use nvt for a molecule in vacuum)"
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
    return atoms


# --- CP2K level ------------------------------------------------------------------------------


def _check_level(path: Path, atoms: Atoms | None, report: ValidationReport) -> None:
    if not path.is_file():
        report.problems.append(f"{path}: file not found")
        return
    try:
        from hillwalker.engines.cp2k import Level, LevelError
    except ImportError as exc:
        report.unavailable.append(f"{path}: CP2K level check unavailable ({exc})")
        return
    try:
        level = Level.from_file(path)
        if atoms is not None:
            level.check_elements(atoms.get_chemical_symbols())
    except LevelError as exc:
        report.problems.append(str(exc))


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
        from hillwalker.engines.plumed import PlumedInputError, clean_input
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
    actions = {name: action for name, action in (_label_and_action(line) for line in lines) if name}

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
    from hillwalker.engines.plumed import PlumedInputError, prepare_input

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
        action = _label_and_action(line)[1]
        where = f"{path}: line {number}" if number else str(path)
        temp = _keyword(line, "TEMP")
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


def source_line_numbers(text: str, cleaned: list[str]) -> list[int | None]:
    """The 1-based line of ``text`` where each cleaned PLUMED line starts (None if not found).

    A cleaned line starts with the first word of its source line once comments are removed,
    and the cleaned lines come in source order: one forward scan finds them.
    """
    sources = [(n, line.split("#", 1)[0].split()) for n, line in enumerate(text.splitlines(), 1)]
    numbers: list[int | None] = []
    cursor = 0
    for line in cleaned:
        words = line.split()
        found = None
        for i in range(cursor, len(sources)):
            number, source_words = sources[i]
            if source_words and words and source_words[0] == words[0]:
                found, cursor = number, i + 1
                break
        numbers.append(found)
    return numbers


def _label_and_action(line: str) -> tuple[str, str]:
    """(label, ACTION) of a PLUMED line: ``lab: ACTION …`` or ``ACTION … LABEL=lab``."""
    words = line.split()
    if not words:
        return "", ""
    if words[0].endswith(":") and len(words) > 1:
        return words[0][:-1], words[1].upper()
    label = next((w.split("=", 1)[1] for w in words[1:] if w.upper().startswith("LABEL=")), "")
    return label, words[0].upper()


def _keyword(line: str, name: str) -> str | None:
    """Value of ``NAME=value`` in a PLUMED line (case-insensitive name), or None."""
    for word in line.split()[1:]:
        key, eq, value = word.partition("=")
        if eq and key.upper() == name:
            return value
    return None


def _references(line: str, labels: set[str]) -> bool:
    """Whether a PLUMED line uses (in ARG=… or any other key) a value of one of ``labels``."""
    if not labels:
        return False
    words = line.split()[1:]
    for word in words:
        if "=" not in word:
            continue
        for item in word.split("=", 1)[1].split(","):
            if item.split(".", 1)[0] in labels:
                return True
    return False


def _kernel_message(exc: BaseException) -> str:
    """PLUMED's error without its C++ source location lines, with the errors it was raised from.

    ``calc`` raises "An error happened while calculating metad" *from* the real reason ("Looking
    for a value outside the grid…"): both are kept.
    """
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < 5:
        lines = [ln.strip() for ln in str(current).splitlines()]
        kept = [ln for ln in lines if ln and not ln.startswith("(")]
        message = " ".join(kept) or type(current).__name__
        message = re.sub(r"^ERROR in input to action\s+", "", message)
        # "TORSION_SCALAR with label t : atom 99 out of range" -> "atom 99 out of range"
        parts.append(re.sub(r"^\S+ with label \S+ : ", "", message))
        current = current.__cause__ or current.__context__
    return ": ".join(parts)


def load_in_kernel(
    lines: list[str],
    numbers: list[int | None],
    atoms: Atoms,
    source: Path,
    temperature: float,
    timestep: float,
) -> tuple[list[str], list[tuple[str, float]]]:
    """Feed the lines to a real PLUMED kernel with ``atoms``, do one step, read every value.

    Returns (problems, [(value name, value in PLUMED units)]). Runs in a temporary directory:
    the caller's directory gets no log, no backup and no HILLS.
    """
    from hillwalker.engines.plumed_kernel import PlumedKernelError, use_kernel

    try:
        use_kernel()
    except PlumedKernelError as exc:
        raise ImportError(str(exc)) from exc
    import plumed

    problems: list[str] = []
    failed_labels: set[str] = set()
    n = len(atoms)
    periodic = bool(np.all(atoms.pbc)) and atoms.cell.rank == 3
    with (
        tempfile.TemporaryDirectory(prefix="hillwalker-validate-") as tmp,
        contextlib.chdir(tmp),
    ):
        kernel = plumed.Plumed()
        try:
            kernel.cmd("setMDEngine", "python")
            # PLUMED's own units in and out: nm, ps, kJ/mol
            kernel.cmd("setNatoms", n)
            kernel.cmd("setTimestep", timestep / 1000.0)
            kernel.cmd("setKbT", 0.0083144626 * temperature)
            kernel.cmd("setLogFile", "plumed.log")
            kernel.cmd("init")
            for line, number in zip(lines, numbers, strict=True):
                where = f"{source}: line {number}" if number else f"{source}"
                label, action = _label_and_action(line)
                if _references(line, failed_labels):
                    # its cause is already reported; PLUMED would only say "not found"
                    failed_labels.add(label)
                    continue
                try:
                    kernel.cmd("readInputLine", line)
                except Exception as exc:  # plumed.PlumedError and whatever the wrapper raises
                    message = _kernel_message(exc)
                    if "out of range" in message:
                        message += f" (the structure has {n} atoms, numbered 1 to {n})"
                    named = f"{action} {label}" if label else action
                    problems.append(f"{where}: {named}: {message}")
                    if label:
                        failed_labels.add(label)
            try:
                kernel.cmd("readInputLine", f"PRINT ARG=* STRIDE=1 FILE={_VALUES_FILE}")
                _one_step(kernel, atoms, periodic)
            except Exception as exc:
                message = _kernel_message(exc)
                failing = re.search(r"while calculating ([^\s:]+)", message)
                label = failing.group(1) if failing else ""
                number = next(
                    (
                        n
                        for line, n in zip(lines, numbers, strict=True)
                        if _label_and_action(line)[0] == label
                    ),
                    None,
                )
                where = f"{source}: line {number}: {label}" if number else str(source)
                if not problems or number:
                    problems.append(f"{where}: fails on the start structure: {message}")
                return problems, []
        finally:
            kernel.finalize()
        values = _read_values(Path(_VALUES_FILE))
    return problems, values


def _one_step(kernel: Any, atoms: Atoms, periodic: bool) -> None:
    n = len(atoms)
    positions = np.ascontiguousarray(atoms.get_positions() * 0.1)  # Å → nm
    forces = np.zeros((n, 3))
    virial = np.zeros((3, 3))
    masses = np.ascontiguousarray(atoms.get_masses(), dtype=float)
    charges = np.zeros(n)
    kernel.cmd("setStep", 0)
    if periodic:
        # a molecule in vacuum gets no box: any box would make PLUMED apply periodic images
        kernel.cmd("setBox", np.ascontiguousarray(np.asarray(atoms.cell) * 0.1))
    kernel.cmd("setMasses", masses)
    kernel.cmd("setCharges", charges)
    kernel.cmd("setPositions", positions)
    kernel.cmd("setForces", forces)
    kernel.cmd("setVirial", virial)
    kernel.cmd("calc")


def _read_values(path: Path) -> list[tuple[str, float]]:
    if not path.is_file():
        return []
    fields: list[str] = []
    row: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("#! FIELDS"):
            fields = line.split()[2:]
        elif line.strip() and not line.startswith("#"):
            row = line.split()
    return [
        (name, float(value)) for name, value in zip(fields, row, strict=False) if name != "time"
    ]


# --- NequIP ----------------------------------------------------------------------------------


def _check_nequip(
    path: Path, atoms: Atoms | None, campaign: Campaign | None, report: ValidationReport
) -> None:
    try:
        data = read_yaml(path)  # first: malformed YAML is reported with its line
    except ConfigError as exc:
        report.problems.extend(exc.problems)
        return
    if not isinstance(data, dict):
        report.problems.append(f"{path}: expected a mapping of keys at the top level")
        return
    try:
        from hillwalker.engines.nequip import ModelError, TrainSettings
    except ImportError as exc:
        report.unavailable.append(f"{path}: NequIP template check unavailable ({exc})")
    else:
        try:
            # the keys the training engine needs and the types of its knobs
            TrainSettings.from_template(path).check()
        except ModelError as exc:
            report.problems.append(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}")
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        config = OmegaConf.create(data)
    except OmegaConfBaseException as exc:
        report.problems.append(f"{path}: not a valid hydra config: {exc}".splitlines()[0])
        return
    report.problems.extend(_nequip_targets(path, data))
    if atoms is not None:
        _nequip_species(path, config, atoms, report)
        _nequip_stress(path, config, atoms, campaign, report)


def _nequip_species(path: Path, config: Any, atoms: Atoms, report: ValidationReport) -> None:
    """The structure's elements must be the model's species, as training will see them.

    ``model_type_names: ???`` is filled in by the training engine with the species of the data
    (the structure's elements, by atomic number); ``chemical_species`` and the type map must
    follow from it.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    structure_species = sorted(set(atoms.get_chemical_symbols()), key=chemical_symbols.index)
    if OmegaConf.is_missing(config, "model_type_names"):
        config.model_type_names = structure_species
    reported: list[str] | None = None
    for key in ("model_type_names", "chemical_species"):
        try:
            value = OmegaConf.select(config, key, throw_on_missing=True)
            names = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        except OmegaConfBaseException as exc:
            report.problems.append(f"{path}: {key}: {exc}".splitlines()[0])
            continue
        if names is None:
            if key == "chemical_species":
                report.problems.append(f"{path}: {key}: missing (use ${{model_type_names}})")
            continue
        if not isinstance(names, list) or not all(isinstance(s, str) for s in names):
            report.problems.append(f"{path}: {key}: expected a list of element symbols")
            continue
        if names == reported:
            continue  # chemical_species: ${model_type_names}, whose problem is reported
        unknown = [s for s in names if s not in chemical_symbols[1:]]
        if unknown:
            report.problems.append(f"{path}: {key}: {', '.join(unknown)} is not an element")
        missing = [s for s in structure_species if s not in names]
        extra = [s for s in names if s not in structure_species and s not in unknown]
        if unknown or missing or (key == "model_type_names" and extra):
            reported = names
        if missing or (key == "model_type_names" and extra):
            report.problems.append(
                f"{path}: {key}: [{', '.join(names)}] does not match the structure's species "
                f"[{', '.join(structure_species)}]"
                + (
                    " (leave model_type_names: ??? to have them filled in)"
                    if key == "model_type_names"
                    else ""
                )
            )


def _nequip_stress(
    path: Path, config: Any, atoms: Atoms, campaign: Campaign | None, report: ValidationReport
) -> None:
    """NPT walkers move the cell with the model's stress: it must be trained on stress."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if campaign is None or campaign.walkers.ensemble != "npt" or not np.all(atoms.pbc):
        return
    key = "training_module.loss.coeffs.stress"
    try:
        weight = OmegaConf.select(config, key, default=None)
    except OmegaConfBaseException:
        return
    if not (isinstance(weight, int | float) and weight > 0):
        report.problems.append(
            f"{path}: {key}: is {weight}; NPT walkers need a model trained on stress (the cell "
            "collapses otherwise): give stress_weight a positive value"
        )


def _nequip_targets(path: Path, data: Any, key: str = "") -> list[str]:
    """Every ``_target_`` must name an importable class or function."""
    problems: list[str] = []
    if isinstance(data, dict):
        target = data.get("_target_")
        if isinstance(target, str) and "${" not in target:
            why = _why_not_importable(target)
            if why:
                problems.append(
                    f"{path}: {key + '.' if key else ''}_target_: cannot import {target} ({why})"
                )
        for name, value in data.items():
            if name != "_target_":
                problems.extend(_nequip_targets(path, value, f"{key}.{name}" if key else name))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            problems.extend(_nequip_targets(path, value, f"{key}[{i}]"))
    return problems


def _why_not_importable(target: str) -> str | None:
    """None if ``a.b.C`` names an importable module attribute (as hydra locates ``_target_``)."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not module_name.startswith(exc.name):
                return f"importing {module_name} needs {exc.name}, which is not installed"
            continue
        except Exception as exc:  # a module that fails while importing
            return f"importing {module_name} failed: {type(exc).__name__}: {exc}"
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return f"{obj.__name__ if hasattr(obj, '__name__') else module_name} has no {attr}"
            obj = getattr(obj, attr)
        return None
    return f"no module {parts[0]}"


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
