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
    structure: str = Field(
        description="Start structure (CIF or extxyz), relative to the campaign dir."
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
    plumed: str = Field(description="PLUMED input (PLUMED units: nm, ps, kJ/mol); CVs and METAD.")
    nequip: str = Field(
        description="NequIP hydra config template (YAML) for every generation's model."
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
        "eager package (false), or auto: compile when a generation's walker steps (count x "
        "steps) reach 4000, where compiling pays on CPU (measured: MIL-53 MD 55 vs 23 steps/s, "
        "compile 102 s on one core).",
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
        return self

    def path(self, directory: Path, relative: str) -> Path:
        return (directory / relative).resolve()


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
