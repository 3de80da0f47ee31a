"""Body of ``hillwalker pretrain``: one NequIP model pretrained on frames at several levels.

The work is in :mod:`hillwalker.engines.nequip.reptile`; this module reads the multi-level
dataset (:func:`~hillwalker.engines.multilevel.read_levels`: every frame names its level),
applies the command-line options and formats the result. Errors are
:class:`~hillwalker.engines.nequip.ModelError` or :class:`~hillwalker.engines.dataset.DatasetError`,
each one line naming the file, level or option; nothing is written when the inputs are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hillwalker.engines.dataset import labels
from hillwalker.engines.multilevel import read_levels
from hillwalker.engines.nequip import ModelError, TrainSettings, default_template
from hillwalker.engines.nequip.reptile import PretrainedModel, pretrain


def pretrain_levels(
    data: Sequence[Path],
    out_dir: Path,
    *,
    method: str = "reptile",
    k: int = 10,
    epsilon: float = 0.5,
    epsilon_final: float | None = 0.0,
    outer_steps: int = 1000,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    config: Path | None = None,
    reference_level: str | None = None,
    checkpoint_every: int = 50,
    seed: int | None = None,
    device: str = "auto",
    echo: Callable[[str], None] | None = None,
) -> PretrainedModel:
    """Pretrain on the levels found in the files ``data`` (``info["level"]`` of each frame);
    ``echo`` gets a line at every checkpoint (outer step, ε, each level's validation loss)."""
    template = Path(config) if config is not None else default_template()
    if not template.is_file():
        raise ModelError(f"{template}: no such NequIP config file")
    levels = read_levels(data)
    for name, level in levels.items():
        for key, atoms in level.frames.items():
            if "forces" not in labels(atoms):
                raise ModelError(
                    f"{level.sources[key]}: level {name}: no forces label (pretraining needs "
                    "energies and forces)"
                )

    def progress(entry: dict[str, Any]) -> None:
        if echo is not None and entry.get("val"):
            echo(describe_progress(entry, outer_steps))

    return pretrain(
        {name: level.list() for name, level in levels.items()},
        out_dir,
        method=method,
        k=k,
        epsilon=epsilon,
        epsilon_final=epsilon_final,
        outer_steps=outer_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        template=template,
        settings=TrainSettings.from_template(template),
        seed=seed,
        reference_level=reference_level,
        checkpoint_every=checkpoint_every,
        device=device,
        callback=progress,
    )


def describe_progress(entry: dict[str, Any], outer_steps: int) -> str:
    val = entry.get("val") or {}
    losses = ", ".join(f"{name} {v['loss']:.4g}" for name, v in val.items())
    return (
        f"outer step {entry['outer_step']}/{outer_steps}  epsilon {entry['epsilon']:.3g}  "
        f"validation loss: {losses}"
    )


def describe_pretraining(model: PretrainedModel) -> str:
    r = model.record
    lines = [f"pretrained model: {model.directory}", f"  package   {model.package.name}"]
    how = f"k {r['k']}, epsilon {r['epsilon']} -> {r['epsilon_final']}"
    lines.append(
        f"  method    {r['method']}" + (f" ({how})" if r["method"] == "reptile" else "")
        + f", {r['outer_steps']} outer steps, batch {r['batch_size']}, lr {r['learning_rate']}"
    )  # fmt: skip
    lines.append(f"  energies  the model's are level {r['reference_level']}'s (its references)")
    last = (r.get("history") or [{}])[-1].get("val") or {}
    for level in r["levels"]:
        val = last.get(level["name"], {})
        force = val.get("forces_rmse")
        force_text = f", validation force RMSE {1000 * force:.1f} meV/Å" if force else ""
        lines.append(
            f"  level     {level['name']}: {level['n_train']} train, {level['n_val']} "
            f"validation frames{force_text}"
        )
    lines.append(f"  wall time {r['wall_seconds']['total']:.1f} s")
    return "\n".join(lines)
