"""The train/validation split is stable as a campaign's dataset grows: a frame placed in training
is never validated on later (a warm-started model would be scored on frames it learned), and each
generation's validation set holds the previous one's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hillwalker.engines.dataset import read_frames, write_frames
from hillwalker.engines.nequip.data import split

DATA = Path(__file__).parents[1] / "data" / "mil53_xtb_frames.extxyz"


def _ids(frames: list) -> set[bytes]:
    return {np.round(f.positions, 6).tobytes() for f in frames}


def test_the_split_never_moves_a_training_frame_to_validation(tmp_path: Path) -> None:
    frames = read_frames(DATA)  # 48 labeled MIL-53 frames, as generations 0 (24), 1, 2, 3
    for i, atoms in enumerate(frames):
        atoms.info["generation"] = 0 if i < 24 else 1 + (i - 24) // 8
    seen_train: set[bytes] = set()
    seen_val: set[bytes] = set()
    sizes = []
    for n in (24, 32, 40, 48):  # the dataset as generations add frames
        train, val = split(frames[:n], 0.15, seed=0)
        assert len(train) + len(val) == n and val and train
        train_ids, val_ids = _ids(train), _ids(val)
        assert not (val_ids & seen_train)  # a training frame never becomes a validation one
        assert seen_val <= val_ids  # and a validation frame stays one
        seen_train |= train_ids
        seen_val |= val_ids
        sizes.append(len(val))
    # the fraction asked for, of the frames so far: round(0.15 x 24, 32, 40, 48)
    assert sizes == [4, 5, 6, 7]


def test_the_split_is_the_same_for_frames_read_back_and_depends_on_the_seed(
    tmp_path: Path,
) -> None:
    frames = read_frames(DATA)
    path = tmp_path / "copy.extxyz"
    write_frames(path, frames)
    again = read_frames(path)
    assert _ids(split(frames, 0.15, seed=0)[1]) == _ids(split(again, 0.15, seed=0)[1])
    assert _ids(split(frames, 0.15, seed=0)[1]) != _ids(split(frames, 0.15, seed=1)[1])
    # at least one frame each way, even where the fraction gives none
    train, val = split(frames[:2], 0.01, seed=0)
    assert len(train) == 1 and len(val) == 1
