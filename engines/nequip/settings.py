"""hillwalker's training knobs, each a top-level key of the NequIP template."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hillwalker.engines.nequip.model_files import ModelError
from hillwalker.engines.nequip.template import (
    default_template,
    hydra_str,
    hydra_value,
    read_template,
)

#: TrainSettings field -> top-level key of the template YAML
TEMPLATE_KEYS = {
    "epochs": "max_epochs",
    "r_max": "cutoff_radius",
    "l_max": "l_max",
    "num_layers": "num_layers",
    "num_features": "num_features",
    "batch_size": "batch_size",
    "learning_rate": "learning_rate",
    "energy_weight": "energy_weight",
    "force_weight": "force_weight",
    "stress_weight": "stress_weight",
    "seed": "seed",
    "accelerator": "accelerator",
}


@dataclass
class TrainSettings:
    """hillwalker's knobs; each is a top-level key of the template YAML (see TEMPLATE_KEYS)."""

    epochs: int = 200
    r_max: float = 5.0
    l_max: int = 1
    num_layers: int = 2
    num_features: int = 32
    batch_size: int = 4
    learning_rate: float = 0.005
    # loss coefficients: per-atom energy MSE, force MSE, stress MSE (ASE units, see template)
    energy_weight: float = 1.0
    force_weight: float = 1.0
    stress_weight: float = 1000.0
    seed: int = 0
    # "auto": the device passed to train() decides (GPU when CUDA is there)
    accelerator: str = "auto"
    # share of the frames held out for validation (and the checkpoint choice); at least one
    validation_fraction: float = 0.1
    # the hash seed of the train/validation split (None: seed). A campaign keeps it fixed while
    # seed changes each generation, so each generation's validation set holds the previous one's
    split_seed: int | None = None
    # which checkpoint becomes the deployed model: lowest validation force RMSE, or the last
    checkpoint: str = "best"
    # transfer learning: the type embedding and the first this many interaction layers keep the
    # weights they start with (surgery.frozen_layers); 0: everything trains
    frozen_layers: int = 0

    @property
    def validation_seed(self) -> int:
        """The seed that picks the validation frames (data.split)."""
        return self.seed if self.split_seed is None else self.split_seed

    @classmethod
    def from_template(cls, template: Path | None = None, **changes: Any) -> TrainSettings:
        """Settings whose knobs are the template's values, with ``changes`` applied on top."""
        path = Path(template) if template is not None else default_template()
        config = read_template(path)
        values: dict[str, Any] = {}
        for name, key in TEMPLATE_KEYS.items():
            if key not in config:
                continue
            wanted = type(getattr(cls(), name))
            value = config[key]
            if wanted is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, wanted) or isinstance(value, bool):
                raise ModelError(f"{path}: {key}: expected {wanted.__name__}, found {value!r}")
            values[name] = value
        values.update(changes)
        return cls(**values)

    def check(self) -> None:
        problems = []
        for name in ("epochs", "num_layers", "num_features", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.l_max < 0:
            problems.append("l_max must be >= 0")
        if self.r_max <= 0 or self.learning_rate <= 0:
            problems.append("r_max and learning_rate must be > 0")
        if min(self.energy_weight, self.force_weight, self.stress_weight) < 0:
            problems.append("loss weights must be >= 0")
        if not 0.0 < self.validation_fraction < 1.0:
            problems.append("validation_fraction must be between 0 and 1")
        if self.frozen_layers < 0:
            problems.append("frozen_layers must be >= 0")
        if self.checkpoint not in ("best", "last"):
            problems.append("checkpoint must be 'best' or 'last'")
        if self.accelerator not in ("auto", "cpu", "gpu", "cuda"):
            problems.append("accelerator must be auto, cpu, gpu or cuda")
        if problems:
            raise ModelError("training settings: " + "; ".join(problems))


def run_overrides(
    settings: TrainSettings,
    accelerator: str,
    species: list[str],
    data_dir: Path,
    shifts: dict[str, float],
    progress_file: Path,
) -> list[str]:
    """The hydra overrides every run of a template gets: hillwalker's knobs, the model's type
    names and per-type energy shifts, ``data_dir``'s train/val files, the progress file."""
    values = {**dataclasses.asdict(settings), "accelerator": accelerator}
    return [
        *(f"{key}={hydra_value(values[name])}" for name, key in TEMPLATE_KEYS.items()),
        "model_type_names=[" + ",".join(hydra_str(s) for s in species) + "]",
        f"train_file={hydra_str(str(data_dir / 'train.extxyz'))}",
        f"val_file={hydra_str(str(data_dir / 'val.extxyz'))}",
        "per_type_energy_shifts={"
        + ",".join(f"{s}:{hydra_value(v)}" for s, v in shifts.items())
        + "}",
        f"progress_file={hydra_str(str(progress_file))}",
    ]
