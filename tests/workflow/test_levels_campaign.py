"""A campaign whose reference level is not CP2K: tblite GFN2-xTB labels alanine dipeptide through
the same loop (walkers with NequIP and PLUMED, labels by tblite, training), unchanged."""

from __future__ import annotations

from pathlib import Path

import ase.io
import pytest
import yaml

from hillwalker.engines.dataset import labels, read_frames
from hillwalker.material_templates import new_from_template
from hillwalker.runner import run_campaign


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_generation_labeled_by_tblite_gfn2(tmp_path: Path) -> None:
    root = tmp_path / "ala"
    new_from_template(root, "alanine-dipeptide")
    # the template's molecule has no cell (volume 0): its model is compiled without stress
    assert ase.io.read(root / "structure.xyz").cell.rank == 0
    config = yaml.safe_load((root / "campaign.yaml").read_text())
    config["material"]["level"] = "levels/gfn2.yaml"
    config["generation0"]["frames"] = 4
    config["walkers"].update({"count": 1, "steps": 40})
    config["training"].update(
        {"epochs": 3, "warm_epochs": 2, "validation_fraction": 0.25, "compile": True,
         "overrides": {"num_features": 8, "batch_size": 2}}
    )  # fmt: skip
    config["stop"] = {"generations": 1}
    (root / "campaign.yaml").write_text(yaml.safe_dump(config))

    models = run_campaign(root)

    assert [m.directory.parent.name for m in models] == ["000", "001"]
    # compiled (what the walker of generation 1 ran; training.compile: true, the one campaign
    # test of the compiled path), without a stress output
    assert all(m.compiled is not None and m.compiled.is_file() for m in models)
    gen0 = read_frames(root / "generations/000/labeled.extxyz")
    assert len(gen0) == 4 and all(f.info["status"] == "done" for f in gen0)
    assert {f.info["level"] for f in gen0} == {"gfn2"}
    gen1 = read_frames(root / "generations/001/labeled.extxyz")
    assert len(gen1) == 1
    dataset = read_frames(root / "dataset.extxyz")
    done = [f for f in dataset if f.info["status"] == "done"]
    assert len(done) >= 4
    for frame in done:  # GFN2 labels in eV: about -30 eV per atom of a small organic molecule
        got = labels(frame)
        assert got["forces"].shape == (22, 3) and "stress" not in got and frame.cell.rank == 0
        assert -100 < got["energy"] / len(frame) < -10
    records = list((root / ".hillwalker/tasks/single_point").glob("*.json"))
    assert len(records) == 5
