"""The free-energy stop rule (stop.fes_change_kj_per_mol) on hand-written PLUMED files.

Two generations' hills snapshots hold Gaussians whose free-energy difference is known in closed
form; the rule must measure exactly that over the visited CV range, and stop or go on by it. The
FES sum itself is checked against PLUMED's own ``sum_hills`` in test_report.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from hillwalker.config import ConfigError, load_campaign
from hillwalker.coverage import fes_change, fes_settled
from hillwalker.state import CampaignDir

SIGMA = 10.0  # Å³, the Gaussians' width along the volume CV
CENTRE = 400.0
VISITED = (370.0, 430.0)  # what the walkers' COLVARs span (the centre is a grid point)


def _hills(path: Path, heights: list[float]) -> None:
    """A PLUMED hills file: one Gaussian per height (kJ/mol) at CENTRE, not well-tempered."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["#! FIELDS time v sigma_v height biasf", "#! SET multivariate false"]
    lines += [f"{i + 1:.1f} {CENTRE} {SIGMA} {h} 1" for i, h in enumerate(heights)]
    path.write_text("\n".join(lines) + "\n")


def _colvar(path: Path, values: tuple[float, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{i:.1f} {v} 0.0" for i, v in enumerate(values)]
    path.write_text("#! FIELDS time v metad.bias\n" + "\n".join(rows) + "\n")


def _campaign(tmp_path: Path, heights: dict[int, list[float]]) -> CampaignDir:
    cdir = CampaignDir(tmp_path / "c")
    for g, hs in heights.items():
        _hills(cdir.generation(g) / "hills" / "HILLS.0", hs)
        _colvar(cdir.generation(g) / "walkers" / "w0" / "COLVAR", (VISITED[0], CENTRE, VISITED[1]))
    return cdir


def _expected_change(added: float) -> float:
    """F_g − F_{g−1}, each shifted to min 0, for one more hill of ``added`` kJ/mol on the same
    centre: added·(1 − K(s)), largest at the visited end farthest from the centre. K is PLUMED's
    stretched Gaussian: (exp(−d²/2) − exp(−6.25)) / (1 − exp(−6.25)) for d²/2 < 6.25, d in σ."""
    far = max(abs(VISITED[0] - CENTRE), abs(VISITED[1] - CENTRE)) / SIGMA
    floor = np.exp(-6.25)
    kernel = (np.exp(-0.5 * far**2) - floor) / (1.0 - floor)
    return added * (1.0 - kernel)


def test_the_fes_change_is_the_closed_form_one(tmp_path: Path) -> None:
    cdir = _campaign(tmp_path, {1: [2.0, 2.0], 2: [2.0, 2.0, 1.5]})
    change = fes_change(cdir, 2)
    assert change == pytest.approx(_expected_change(1.5), rel=1e-9)
    assert fes_settled(cdir, 2, tolerance=1.0) is None  # 1.5 kJ/mol moved: go on
    reason = fes_settled(cdir, 2, tolerance=2.0)
    assert reason is not None and "generations 1 and 2" in reason and "1.49 kJ/mol" in reason


def test_no_measure_without_two_snapshots(tmp_path: Path) -> None:
    cdir = _campaign(tmp_path, {1: [2.0]})
    assert fes_change(cdir, 1) is None and fes_change(cdir, 2) is None
    assert fes_settled(cdir, 2, tolerance=1e9) is None


def test_the_rule_needs_a_shared_bias(tmp_path: Path) -> None:
    from hillwalker.material_templates import new_from_template

    root = tmp_path / "c"
    new_from_template(root, "mil53-al")
    config = yaml.safe_load((root / "campaign.yaml").read_text())
    config["stop"]["fes_change_kj_per_mol"] = 0.5
    (root / "campaign.yaml").write_text(yaml.safe_dump(config))
    assert load_campaign(root).stop.fes_change_kj_per_mol == 0.5
    config["walkers"]["bias"] = "independent"
    (root / "campaign.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"campaign\.yaml.*fes_change_kj_per_mol.*shared"):
        load_campaign(root)
