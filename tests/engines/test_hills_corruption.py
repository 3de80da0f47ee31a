"""A walker's hills file cut short between segments (a full disk, a bad copy, an edit) is named,
with the way out, before the next segment runs: never silently continued with hills missing.

Real PLUMED and MD on the Lennard-Jones trimer of walker_job.py (about a second each).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hillwalker.engines.plumed import count_hills
from hillwalker.engines.walkers import Walker, WalkerError, run_segment

sys.path.insert(0, str(Path(__file__).parent))
from walker_job import PLUMED_INPUT, PausingLJ, lj_settings, trimer


def _first_segment(tmp_path: Path) -> tuple[Path, Path]:
    bias = tmp_path / "bias"
    first = run_segment(
        trimer(), PausingLJ(), PLUMED_INPUT, tmp_path / "g1", Walker(0, 1, 1, bias),
        lj_settings(steps=100), seed=1,
    )  # fmt: skip
    assert first.status == "done" and count_hills(bias) == 20  # a hill every 5 steps
    return bias, first.state_path


@pytest.mark.parametrize("cut", ["mid-line", "half"])
def test_a_truncated_hills_file_is_named_before_the_next_segment(tmp_path: Path, cut: str) -> None:
    bias, state = _first_segment(tmp_path)
    hills = bias / "HILLS.0"
    text = hills.read_bytes()
    # mid-line: the last hill loses its tail (PLUMED then merges it with the next line);
    # half: ten hills gone, on line boundaries, so the file still parses
    kept = len(text) - 30 if cut == "mid-line" else text.index(b"\n", len(text) // 2) + 1
    hills.write_bytes(text[:kept])
    with pytest.raises(WalkerError) as err:
        run_segment(
            state, PausingLJ(), PLUMED_INPUT, tmp_path / "g2", Walker(0, 2, 1, bias),
            lj_settings(steps=50), seed=2,
        )  # fmt: skip
    message = str(err.value)
    assert str(hills) in message and "20" in message and "snapshot" in message
    assert hills.read_bytes() == text[:kept]  # nothing appended to the damaged file


def test_an_intact_hills_file_goes_on(tmp_path: Path) -> None:
    """The control: the same two segments without the cut add 10 hills to the 20."""
    bias, state = _first_segment(tmp_path)
    run_segment(
        state, PausingLJ(), PLUMED_INPUT, tmp_path / "g2", Walker(0, 2, 1, bias),
        lj_settings(steps=50), seed=2,
    )  # fmt: skip
    assert count_hills(bias) == 30
