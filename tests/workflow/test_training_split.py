"""A campaign's validation set is fixed across generations (plus new frames): the settings it
hands each generation's training pick the same validation frames as the dataset grows, although
the training seed changes every generation (measured bug: the split was drawn with that seed, so
each generation validated on frames the warm-started model had trained on, and a generation's
validation error could not be compared with the last one's)."""

from __future__ import annotations

from pathlib import Path

import yaml

from hillwalker.config import Campaign
from hillwalker.engines.dataset import read_frames
from hillwalker.engines.multilevel import frame_id
from hillwalker.engines.nequip.data import split
from hillwalker.settings import train_settings, training_changes

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "mil53_xtb_frames.extxyz"


def _ids(frames: list) -> set[str]:
    return {frame_id(f) for f in frames}


def test_each_generation_validates_on_the_last_ones_validation_frames_and_no_trained_one() -> None:
    job = ROOT / "examples" / "mil53-xtb"
    cfg = Campaign.model_validate(yaml.safe_load((job / "campaign.yaml").read_text()))
    template = job / cfg.material.nequip
    frames = read_frames(DATA)  # 48 labeled MIL-53 frames: generation 0 (24), then 4 per walker
    for i, atoms in enumerate(frames):  # generation, as the main job's 4 walkers add them
        atoms.info["generation"] = 0 if i < 24 else 1 + (i - 24) // 4
    seeds, trained, validated = set(), set(), set()
    for g in range(7):
        changes = training_changes(cfg, g, warm=g > 0)
        s = train_settings(template, changes, split_seed=cfg.seed)
        seeds.add(s.seed)
        train, val = split(frames[: 24 + 4 * g], s.validation_fraction, s.validation_seed)
        moved, dropped = len(_ids(val) & trained), len(validated - _ids(val))
        assert moved == 0, f"generation {g} validates on {moved} frame(s) trained on before"
        assert dropped == 0, f"generation {g} dropped {dropped} earlier validation frame(s)"
        trained |= _ids(train)
        validated |= _ids(val)
    assert len(seeds) == 7  # the training seed does change each generation
    assert len(validated) == round(cfg.training.validation_fraction * 48)
