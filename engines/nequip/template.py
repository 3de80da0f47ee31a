"""The NequIP hydra template: reading it, and overrides in hydra's command-line syntax.

The training configuration stays nequip's own YAML (a material template such as
``templates/mil53-al/nequip.yaml``); hillwalker only overrides keys on the ``nequip-train``
command line. Values never go through ``${oc.env:...}``, which yields strings.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hillwalker.engines.nequip.model_files import ModelError


def default_template() -> Path:
    """The MIL-53(Al) NequIP template shipped as package data."""
    return Path(str(resources.files("hillwalker.templates") / "mil53-al" / "nequip.yaml"))


def read_template(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the NequIP template ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ModelError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(config, dict):
        raise ModelError(f"{path}: a NequIP template must be a YAML mapping")
    for key in ("run", "data", "trainer", "training_module"):
        if key not in config:
            raise ModelError(f"{path}: {key}: missing (a nequip config needs it)")
    for key in ("model_type_names", "train_file", "val_file", "per_type_energy_shifts"):
        if key not in config:
            raise ModelError(f"{path}: {key}: missing (hillwalker fills this key in)")
    return config


def without_stress(config: dict[str, Any], template: Path) -> list[str]:
    """Overrides that swap the template's stress loss and metrics for energy+forces ones.

    For frames without stress (molecules): nequip's EnergyForceLoss/Metrics reject stress keys.
    The metrics' coefficients are replaced whole, since hydra cannot delete a key whose value
    is null (``stress_rmse: null``).
    """
    module = config.get("training_module") or {}
    loss, metrics = module.get("loss") or {}, module.get("val_metrics") or {}
    if not isinstance(loss, dict) or not isinstance(metrics, dict):
        raise ModelError(f"{template}: training_module.loss/val_metrics: expected mappings")
    overrides = []
    if "Stress" in str(loss.get("_target_", "")):
        overrides.append("training_module.loss._target_=nequip.train.EnergyForceLoss")
    if isinstance(loss.get("coeffs"), dict) and loss["coeffs"].get("stress") is not None:
        overrides.append("~training_module.loss.coeffs.stress")
    if "Stress" in str(metrics.get("_target_", "")):
        overrides.append("training_module.val_metrics._target_=nequip.train.EnergyForceMetrics")
        if metrics.get("coeffs") is not None:
            overrides.append("~training_module.val_metrics.coeffs")
        overrides.append("++training_module.val_metrics.coeffs={forces_rmse:1.0}")
    return overrides


def hydra_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return hydra_str(str(value))


def hydra_str(text: str) -> str:
    """A hydra override string literal (quoted, so paths with any characters survive)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
