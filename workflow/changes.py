"""Which edits of campaign.yaml a campaign can take between runs, and which need ``--force``."""

from __future__ import annotations

import json
from collections.abc import Callable

from hillwalker.campaign import CampaignError
from hillwalker.config import Campaign
from hillwalker.engines.files import atomic_write_json, file_digest
from hillwalker.state import CampaignDir

#: settings that the existing data or bias depend on: changing them needs ``--force``
UNSAFE_CHANGES = {
    "level": "the level of theory of the existing labels",
    "baseline": "the level of theory of the existing baseline labels",
    "intermediates": "the levels of theory between the baseline and the target",
    "structure": "the start structure of generation 0",
    "plumed": "the collective variables of the kept bias",
    "generation0": "the frames of generation 0",
    "init": "the model generation 0 started from (training.init, training.species_map)",
    "seed": "the seed every finished task was keyed with",
}


def check_changes(cdir: CampaignDir, cfg: Campaign, *, force: bool = False) -> list[str]:
    """Compare campaign.yaml (and the files it names) with what the last run used.

    Safe changes (more generations, more walkers, other epochs or thresholds) are applied and
    returned as notes; unsafe ones raise :class:`CampaignError` unless ``force``.
    """
    root = cdir.root
    m = cfg.material
    views = cfg.views()
    now = {
        "level": file_digest(root / m.level),
        "baseline": file_digest(root / m.baseline) if m.baseline else None,
        "intermediates": [file_digest(root / f) for f in m.intermediates]
        if m.intermediates
        else None,
        # a campaign of several materials: by material (one added is a safe change)
        **_by_material(
            views,
            structure=lambda view: file_digest(root / view.structure_file),
            plumed=lambda view: file_digest(root / view.plumed_file),
            # unset options (None) left out: a run recorded before an option existed compares
            # equal
            generation0=lambda view: view.generation0.model_dump(exclude_none=True),
        ),
        "seed": cfg.seed,
        "init": _init_digest(cdir, cfg),
        "config": cfg.model_dump(),
    }
    path = cdir.inputs
    try:
        before = json.loads(path.read_text())
    except FileNotFoundError:
        before = None
    except ValueError:
        raise CampaignError(
            f"{path}: corrupt (unreadable JSON). Delete it to accept the current campaign.yaml as is."
        ) from None
    notes: list[str] = []
    if before is not None:
        unsafe = [
            f"{key} changed: {why}"
            for key, why in UNSAFE_CHANGES.items()
            if _changed(before.get(key), now[key])
        ]
        if unsafe and not force:
            raise CampaignError(
                f"{root / 'campaign.yaml'}: unsafe change since the last run: "
                + "; ".join(unsafe)
                + ". Undo it, start a new campaign directory, or run with --force to go on anyway."
            )
        notes = [f"forced: {u}" for u in unsafe]
        old, new = before.get("config", {}), now["config"]
        for section in sorted(set(old) | set(new)):
            if _set(old.get(section)) != _set(new.get(section)) and section not in UNSAFE_CHANGES:
                notes.append(
                    f"applied change in {section}: {old.get(section)} -> {new.get(section)}"
                )
    atomic_write_json(path, now)
    return notes


def _by_material(
    views: list[tuple[str | None, Campaign]], **digests: Callable[[Campaign], object]
) -> dict[str, object]:
    """Each digest of the one material, or ``{"materials": {name: digest}}``."""
    if views[0][0] is None:
        return {key: digest(views[0][1]) for key, digest in digests.items()}
    return {
        key: {"materials": {name: digest(view) for name, view in views}}
        for key, digest in digests.items()
    }


def _changed(before: object, now: object) -> bool:
    """A setting of the last run changed; for settings by material, a material's setting
    changed or a material was removed (a material added is no change of the others')."""
    if isinstance(before, dict) and isinstance(now, dict) and set(before) == {"materials"}:
        old, new = before["materials"], now.get("materials", {})
        return any(name not in new or new[name] != value for name, value in old.items())
    return before != now


def _set(section: object) -> object:
    """A config section without its unset (None) options, so that an option added to the
    schema since the last run is no change."""
    if isinstance(section, dict):
        return {k: v for k, v in section.items() if v is not None}
    return section


def _init_digest(cdir: CampaignDir, cfg: Campaign) -> str | None:
    """The digest of the package training.init names (with training.species_map, if set);
    None when unset or unreadable (a missing model is reported by validation before any run)."""
    if cfg.training.init is None:
        return None
    from hillwalker.engines.nequip import ModelError
    from hillwalker.settings import init_package

    try:
        digest = file_digest(init_package(cdir.root, cfg))
    except ModelError:
        return None
    species_map = cfg.training.species_map
    return digest + (f" {sorted(species_map.items())}" if species_map else "")
