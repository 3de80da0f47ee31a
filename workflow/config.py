"""campaign.yaml: *what* a campaign computes (where it runs is a site profile, see sites.py).

Every field has a description and a unit; unknown keys are refused. Errors name the file and
the dotted key, e.g. ``campaign.yaml: walkers.temperature: Input should be greater than 0``.

File paths inside campaign.yaml are relative to the campaign directory.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from ase.data import chemical_symbols
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hillwalker.engines.geometry import DEFAULT_MIN_DISTANCE

CAMPAIGN_FILE = "campaign.yaml"

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """campaign.yaml (or another YAML input) is unreadable or invalid; lists every problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Material(_Model):
    structure: str | None = Field(
        None,
        description="Start structure (CIF or extxyz), relative to the campaign dir (each "
        "materials entry's own in a campaign of several materials).",
    )
    level: str = Field(
        description="Level of theory of every label (the target level where there is a "
        "baseline): a CP2K input (*.inp) or a level file (*.yaml: tblite, PySCF)."
    )
    baseline: str | None = Field(
        None,
        description="A cheaper level of theory (level file) that labels every frame the "
        "campaign makes, while the level above labels only a chosen few (labeling.target_*); "
        "training.method says how the two are learned.",
    )
    intermediates: list[str] | None = Field(
        None,
        min_length=1,
        description="training.method hierarchical: levels between the baseline and the "
        "target (level files, cheapest first), one NequIP model per step of the ladder. Each "
        "labels the frames the target labels and more as generation0.intermediate_frames and "
        "labeling.intermediate_per_generation allow (default: every frame of generation 0, "
        "every walker's final frame).",
    )
    plumed: str | None = Field(
        None,
        description="PLUMED input (PLUMED units: nm, ps, kJ/mol); CVs and METAD (each "
        "materials entry's own in a campaign of several materials).",
    )
    nequip: str = Field(
        description="NequIP hydra config template (YAML) for every generation's model."
    )


#: a material's name: a directory name (its bias lives in bias/NAME) and a word in logs
MATERIAL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"


class MaterialEntry(_Model):
    """One material of a campaign of several: its own start structure, bias and walkers, one
    model for all (docs/multi-material.md)."""

    name: str = Field(
        pattern=MATERIAL_NAME,
        max_length=64,
        description="The material's name: in every frame's provenance, its bias directory "
        "(bias/NAME) and the per-material errors.",
    )
    structure: str = Field(description="Start structure (CIF or extxyz).")
    plumed: str = Field(
        description="PLUMED input of this material's walkers (its own CVs, walls and bias)."
    )
    walkers: dict[str, Any] = Field(
        default_factory=dict,
        description="This material's changes to the campaign's walkers section (count, "
        "temperature, pressure, steps, ...).",
    )
    generation0: dict[str, Any] = Field(
        default_factory=dict,
        description="This material's changes to the campaign's generation0 section (frames, "
        "position_sigma, cell_strain).",
    )


class Generation0(_Model):
    frames: int = Field(16, gt=0, description="Number of perturbed frames labeled in generation 0.")
    position_sigma: float = Field(
        0.05, ge=0, description="Std. dev. of the Gaussian displacement of every coordinate, Å."
    )
    cell_strain: float = Field(
        0.03,
        ge=0,
        lt=0.5,
        description="Max. amplitude of the random symmetric cell strain (fraction).",
    )
    target_frames: int | None = Field(
        None,
        gt=0,
        description="With a baseline: how many of the frames (the first ones) are labeled at "
        "the target level too (default: all); the baseline labels every frame.",
    )
    intermediate_frames: int | None = Field(
        None,
        gt=0,
        description="With material.intermediates: how many of the frames (the first ones) "
        "each intermediate level labels (default: all); at least the target's.",
    )


class Walkers(_Model):
    count: int = Field(4, gt=0, description="Number of walkers exploring concurrently.")
    ensemble: Literal["nvt", "npt"] = Field(
        "npt", description="nvt: Langevin thermostat; npt: full-cell MTK barostat (frameworks)."
    )
    temperature: float = Field(300.0, gt=0, description="Temperature, K.")
    pressure: float = Field(0.0, description="External pressure for npt, GPa (converted to eV/Å³).")
    timestep: float = Field(1.0, gt=0, le=5, description="MD time step, fs.")
    steps: int = Field(500, gt=0, description="MD steps per walker per generation.")
    bias: Literal["shared", "independent", "none"] = Field(
        "shared",
        description="shared: all walkers deposit into one bias (PLUMED multiple walkers); "
        "independent: one bias per walker; none: plain MD (the baseline).",
    )
    start: Literal["continue", "reset"] = Field(
        "continue",
        description="Where each generation's walkers start: their last state (continue) or the "
        "start structure (reset). The bias is never cleared.",
    )
    copies: int = Field(
        0,
        ge=0,
        le=16,
        description="Perturbed copies of each walker's labeled frame, labeled beside it "
        "(generation0's position_sigma and cell_strain; the same copies on a resumed run): the "
        "forces and strains around where the walkers went that MD at their temperature does not "
        "reach. Each copy is a single point: a generation labels count × (1 + copies).",
    )


class Training(_Model):
    method: Literal["direct", "delta", "hierarchical", "transfer"] = Field(
        "direct",
        description="How a campaign with material.baseline learns its levels: direct (one "
        "model of the target level), delta (the baseline level computed at every MD step + a "
        "model of target - baseline; needs a baseline that runs in-process: tblite, PySCF), "
        "hierarchical (a model of the baseline + a model of target - baseline), transfer "
        "(pretrain on the baseline, fine-tune on the target). See docs/multifidelity.md.",
    )
    mode: Literal["scratch", "warm"] = Field(
        "warm",
        description="Train each generation from scratch or warm-start from the previous model.",
    )
    epochs: int = Field(
        200, gt=0, description="Epochs of the generation-0 model (and scratch runs)."
    )
    warm_epochs: int | None = Field(
        None, gt=0, description="Epochs of warm-started generations (default: same as epochs)."
    )
    validation_fraction: float = Field(
        0.1, gt=0, lt=1, description="Fraction held out for validation."
    )
    max_label_force: float | None = Field(
        100.0,
        gt=0,
        description="Frames whose reference force on some atom exceeds this (eV/Å) stay in "
        "dataset.extxyz but are left out of training: a walker that went where its model was "
        "badly wrong can bring back a torn geometry (MIL-53 at the volume walls: 200-250 eV/Å, "
        "1.2 eV/atom above every other frame; thermal and perturbed frames stay below ~40), "
        "and two such frames in 36 doubled the model's test error. null: train on every frame.",
    )
    init: str | None = Field(
        None,
        description="A trained model (model directory or .nequip.zip; relative paths from the "
        "campaign directory) that generation 0 fine-tunes instead of starting from random "
        "weights: a pretrained model (hillwalker pretrain), or another campaign's final model. "
        "Generation 0 then trains warm_epochs. training.method direct only.",
    )
    species_map: dict[str, str] | None = Field(
        None,
        description="With training.init: elements the start model lacks, each started from one "
        "it has (new: source, e.g. {Ga: Al}): every per-type weight copied from the source "
        "element, the new element's energy reference fitted to generation 0's labels "
        "(docs/element-transfer.md).",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra NequIP settings (hillwalker TrainSettings fields, e.g. num_features).",
    )
    compile: Literal["auto", True, False] = Field(
        "auto",
        description="AOTInductor-compile each model for the walkers (true), run them on the "
        "eager package (false), or auto: compile when the walker time it saves, on the cores "
        "that run walkers side by side, outweighs the compile (measured on CPU: MIL-53 MD 55 vs "
        "23 steps/s, compile 66 s; e.g. 4 walkers x 1000 steps on 2 cores: eager).",
    )

    @field_validator("overrides")
    @classmethod
    def _known_overrides(cls, value: dict[str, Any]) -> dict[str, Any]:
        from hillwalker.engines.nequip import TrainSettings

        known = {f.name for f in dataclasses.fields(TrainSettings)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(
                f"unknown setting {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        return value


class Stop(_Model):
    generations: int = Field(
        3, ge=0, description="Number of walker generations after generation 0."
    )
    max_single_points: int | None = Field(
        None, gt=0, description="Stop once this many single points were spent (done + failed)."
    )
    target_force_rmse: float | None = Field(
        None,
        gt=0,
        description="Stop once a model's force RMSE is at or below this, meV/Å: on the test "
        "set named by target_set, else on the model's validation frames.",
    )
    target_set: str | None = Field(
        None, description="The evaluation.test_sets entry target_force_rmse is measured on."
    )
    coverage_generations: int | None = Field(
        None,
        gt=0,
        description="Stop once the range of CV values the walkers visited has not grown for "
        "this many generations in a row.",
    )
    coverage_tolerance: float = Field(
        0.01,
        ge=0,
        description="Growth of the visited CV range below this fraction of it counts as none.",
    )
    fes_change_kj_per_mol: float | None = Field(
        None,
        gt=0,
        description="Stop once the free-energy surface from the shared bias changed by at most "
        "this between two generations, kJ/mol (the largest change over the visited CV range, "
        "each surface shifted to a minimum of 0; 1 or 2 CVs; needs walkers.bias shared).",
    )


class Evaluation(_Model):
    test_sets: dict[str, str] = Field(
        default_factory=dict,
        description="Labeled frames the campaign never trains on, scored after every training: "
        "name → extxyz file (relative to the campaign dir), labels at the campaign's level.",
    )


class Safety(_Model):
    max_force: float = Field(
        25.0, gt=0, description="Stop a walker segment above this force, eV/Å."
    )
    min_distance: float = Field(
        DEFAULT_MIN_DISTANCE,
        gt=0,
        description="Stop a segment / refuse a single point below this distance, Å.",
    )
    max_temperature: float = Field(
        3000.0, gt=0, description="Stop a segment above this instantaneous temperature, K."
    )
    keep_bonds: bool = Field(
        False,
        description="Stop a segment when a covalent bond of the material's start structure breaks "
        "(stretched past 1.5x the covalent radii) or a new one forms (closer than 1.2x; between "
        "non-metals, or a metal and H or C): the broken configuration is labeled and the walker "
        "goes back to its last intact state. For frameworks and molecular crystals; not for "
        "melts, liquids or reactions.",
    )
    blow_up_label: Literal["failed", "last_safe"] = Field(
        "failed",
        description="What a walker segment that blew up sends to the reference level: 'failed', "
        "the configuration where it failed (if sane for a single point), and the walker starts "
        "its next segment where this one started; 'last_safe', the last state in the segment "
        "that passed every check (when it got past its first check; else as 'failed'), and the "
        "walker goes on from there once that frame is labeled and trained on.",
    )


class Labeling(_Model):
    timeout: float = Field(1800.0, gt=0, description="Wall-time limit of one CP2K run, s.")
    baseline_snapshots: int = Field(
        4,
        ge=0,
        description="With a baseline: frames taken evenly along each walker segment and "
        "labeled at the baseline level, besides the segment's final frame.",
    )
    target_per_generation: int | None = Field(
        None,
        gt=0,
        description="With a baseline: walkers whose final frame is labeled at the target level "
        "each generation (the first ones; default: every walker).",
    )
    intermediate_per_generation: int | None = Field(
        None,
        gt=0,
        description="With material.intermediates: walkers whose final frame each intermediate "
        "level labels each generation (the first ones; default: every walker); at least "
        "labeling.target_per_generation.",
    )
    target_budget: int | None = Field(
        None,
        gt=0,
        description="With a baseline: target-level single points in all, generation 0 "
        "included; a generation labels at most what is left of it, and the campaign stops "
        "once it is spent.",
    )


class Campaign(_Model):
    name: str = Field("campaign", description="A name for logs and reports.")
    material: Material
    materials: list[MaterialEntry] | None = Field(
        None,
        min_length=1,
        description="Several materials learned by one model: each with its own start "
        "structure, PLUMED input, walkers and generation-0 frames; material names the levels "
        "and the NequIP template they share. Without it the campaign has one material "
        "(material.structure, material.plumed).",
    )
    generation0: Generation0 = Field(default_factory=Generation0)  # type: ignore[arg-type]
    walkers: Walkers = Field(default_factory=Walkers)  # type: ignore[arg-type]
    training: Training = Field(default_factory=Training)  # type: ignore[arg-type]
    stop: Stop = Field(default_factory=Stop)  # type: ignore[arg-type]
    safety: Safety = Field(default_factory=Safety)  # type: ignore[arg-type]
    labeling: Labeling = Field(default_factory=Labeling)  # type: ignore[arg-type]
    evaluation: Evaluation = Field(default_factory=Evaluation)  # type: ignore[arg-type]
    seed: int = Field(
        0, ge=0, description="Seed of every random choice (perturbations, MD, training)."
    )

    @model_validator(mode="after")
    def _materials(self) -> Campaign:
        m = self.material
        if self.materials is None:
            for key in ("structure", "plumed"):
                if getattr(m, key) is None:
                    raise ValueError(
                        f"material.{key}: missing (or list several materials under materials:)"
                    )
            return self
        for key in ("structure", "plumed"):
            if getattr(m, key) is not None:
                raise ValueError(
                    f"material.{key}: with materials: each material names its own {key} "
                    "(material keeps the levels and the NequIP template they share)"
                )
        seen: set[str] = set()
        for n, entry in enumerate(self.materials):
            if entry.name in seen:
                raise ValueError(f"materials.{n}.name: {entry.name!r} is used twice")
            seen.add(entry.name)
            _merged(Walkers, self.walkers, entry.walkers, f"materials.{n}.walkers")
            _merged(Generation0, self.generation0, entry.generation0, f"materials.{n}.generation0")
            for key in ("bias", "start"):
                if key in entry.walkers:
                    raise ValueError(
                        f"materials.{n}.walkers.{key}: one setting for all materials "
                        f"(campaign walkers.{key})"
                    )
            if "target_frames" in entry.generation0:
                raise ValueError(
                    f"materials.{n}.generation0.target_frames: one setting for all materials"
                )
        rules = ("coverage_generations", "fes_change_kj_per_mol")
        for rule in rules:
            if getattr(self.stop, rule) is not None:
                raise ValueError(
                    f"stop.{rule}: not yet for a campaign of several materials (each material "
                    "has its own CVs and bias)"
                )
        if m.baseline is not None:
            raise ValueError(
                "material.baseline: a campaign of several materials has one level of theory for now"
            )
        return self

    def views(self) -> list[tuple[str | None, Campaign]]:
        """(name, campaign of that material alone) for every material: the campaign itself
        (name None) without materials:, else one per entry, its structure, PLUMED input,
        walkers and generation0 in place of the campaign's."""
        if self.materials is None:
            return [(None, self)]
        return [(entry.name, self.view(entry.name)) for entry in self.materials]

    def view(self, name: str) -> Campaign:
        """The campaign of material ``name`` alone (see :meth:`views`)."""
        for entry in self.materials or []:
            if entry.name == name:
                break
        else:
            raise KeyError(name)
        return self.model_copy(
            update={
                "material": self.material.model_copy(
                    update={"structure": entry.structure, "plumed": entry.plumed}
                ),
                "materials": None,
                "walkers": _merged(Walkers, self.walkers, entry.walkers, "walkers"),
                "generation0": _merged(
                    Generation0, self.generation0, entry.generation0, "generation0"
                ),
            }
        )

    @property
    def structure_file(self) -> str:
        """material.structure of a one-material campaign (or view)."""
        if self.material.structure is None:
            raise ValueError("a campaign of several materials: take each one's view()")
        return self.material.structure

    @property
    def plumed_file(self) -> str:
        """material.plumed of a one-material campaign (or view)."""
        if self.material.plumed is None:
            raise ValueError("a campaign of several materials: take each one's view()")
        return self.material.plumed

    @model_validator(mode="after")
    def _fes_rule_has_a_shared_bias(self) -> Campaign:
        if self.stop.fes_change_kj_per_mol is not None and self.walkers.bias != "shared":
            raise ValueError(
                "stop.fes_change_kj_per_mol: needs walkers.bias: shared (the surface is the "
                f"walkers' common bias; walkers.bias is {self.walkers.bias})"
            )
        return self

    @model_validator(mode="after")
    def _target_set_exists(self) -> Campaign:
        target = self.stop.target_set
        if target is not None and target not in self.evaluation.test_sets:
            known = ", ".join(sorted(self.evaluation.test_sets)) or "none"
            raise ValueError(
                f"stop.target_set: {target!r} is not an evaluation.test_sets entry (known: {known})"
            )
        return self

    @model_validator(mode="after")
    def _species_map_needs_init(self) -> Campaign:
        species_map = self.training.species_map
        if species_map is None:
            return self
        if self.training.init is None:
            raise ValueError(
                "training.species_map: maps new elements onto those of the training.init "
                "model; name that model in training.init"
            )
        for new, old in species_map.items():
            for element in (new, old):
                if element not in chemical_symbols[1:]:
                    raise ValueError(f"training.species_map: {element!r} is no chemical element")
            if new == old:
                raise ValueError(f"training.species_map: {new} is mapped onto itself")
        return self

    @model_validator(mode="after")
    def _levels_fit_the_method(self) -> Campaign:
        baseline = self.material.baseline
        if baseline is None:
            if self.training.method != "direct":
                raise ValueError(
                    f"training.method: {self.training.method} learns on top of a cheaper level: "
                    "name it in material.baseline (a level file)"
                )
            needs = [
                name
                for name, value in (
                    ("generation0.target_frames", self.generation0.target_frames),
                    ("labeling.target_per_generation", self.labeling.target_per_generation),
                    ("labeling.target_budget", self.labeling.target_budget),
                )
                if value is not None
            ]
            if needs:
                raise ValueError(
                    f"{needs[0]}: needs material.baseline (without one every frame is labeled "
                    "at material.level; stop.max_single_points limits them)"
                )
        elif self.training.init is not None:
            raise ValueError(
                f"training.init: starts generation 0 of a one-level campaign (training.method "
                f"direct); with material.baseline, method {self.training.method} trains its own "
                "parts (hillwalker pretrain + train --init, docs/meta-learning.md)"
            )
        elif Path(baseline) == Path(self.material.level):
            raise ValueError(f"material.baseline: {baseline} is material.level itself")
        target_frames = self.generation0.target_frames
        if target_frames is not None and target_frames > self.generation0.frames:
            raise ValueError(
                f"generation0.target_frames: {target_frames} is more than "
                f"generation0.frames ({self.generation0.frames})"
            )
        self._check_intermediates()
        return self

    def _check_intermediates(self) -> None:
        """material.intermediates fit the method and the labeling counts make a ladder: each
        level labels at least the frames of the level above it."""
        middle = self.material.intermediates
        if middle is None:
            for key, value in (
                ("generation0.intermediate_frames", self.generation0.intermediate_frames),
                ("labeling.intermediate_per_generation", self.labeling.intermediate_per_generation),
            ):
                if value is not None:
                    raise ValueError(f"{key}: needs material.intermediates")
            return
        if self.training.method != "hierarchical":
            raise ValueError(
                "material.intermediates: only training.method hierarchical learns a ladder of "
                f"levels (training.method is {self.training.method})"
            )
        ladder = [str(self.material.baseline), *middle, self.material.level]
        for n, name in enumerate(middle):
            if ladder.count(name) > 1 or any(Path(name) == Path(o) for o in ladder if o != name):
                raise ValueError(
                    f"material.intermediates.{n}: {name} is named twice among material.baseline, "
                    "material.intermediates and material.level"
                )
        g0 = self.generation0
        # (unset target counts: every frame, every walker)
        pairs = (
            ("generation0.intermediate_frames", g0.intermediate_frames,
             g0.target_frames or g0.frames, "generation0.target_frames"),
            ("labeling.intermediate_per_generation", self.labeling.intermediate_per_generation,
             self.labeling.target_per_generation or self.walkers.count,
             "labeling.target_per_generation"),
        )  # fmt: skip
        for key, middle_count, target_count, target_key in pairs:
            if middle_count is not None and middle_count < target_count:
                raise ValueError(
                    f"{key}: {middle_count} is fewer than the target labels ({target_key}: "
                    f"{target_count}); every target frame needs its intermediate labels"
                )
        if g0.intermediate_frames is not None and g0.intermediate_frames > g0.frames:
            raise ValueError(
                f"generation0.intermediate_frames: {g0.intermediate_frames} is more than "
                f"generation0.frames ({g0.frames})"
            )

    def path(self, directory: Path, relative: str) -> Path:
        return (directory / relative).resolve()


def _merged(model: type[M], base: BaseModel, changes: dict[str, Any], where: str) -> M:
    """``base`` with ``changes`` applied, validated as a whole (errors name ``where``)."""
    try:
        return model.model_validate({**base.model_dump(), **changes})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(part) for part in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ValueError(f"{where}.{key}: {msg}") from None


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a :class:`ConfigError` naming the file and line if it can't."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}:{where}: malformed YAML: {problem}"]) from None


def validation_problems(path: Path, exc: ValidationError) -> list[str]:
    """One line per pydantic error: ``file: dotted.key: message``."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{path}: {key}: {msg}")
    return lines


def load_model(path: Path, model: type[M], *, empty_ok: bool = False) -> M:
    """Read a YAML file into a pydantic model; a :class:`ConfigError` naming file and keys."""
    data = read_yaml(path)
    if data is None and empty_ok:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping of keys at the top level"])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_problems(path, exc)) from None


def load_campaign(directory: str | Path) -> Campaign:
    """Read and validate ``<directory>/campaign.yaml``."""
    return load_model(Path(directory) / CAMPAIGN_FILE, Campaign)
