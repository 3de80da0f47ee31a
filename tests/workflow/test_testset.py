"""``hillwalker testset``: a test set for a campaign from real MD (NequIP + PLUMED) and real CP2K
xTB labels, kept apart from the campaign's dataset and bias."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import NEQUIP_TEST_THREADS, mil53_test_settings
from typer.testing import CliRunner

from hillwalker.cli import app
from hillwalker.engines.dataset import has_labels, read_frames, write_frames
from hillwalker.engines.multilevel import frame_id
from hillwalker.engines.plumed import count_hills, hills_files
from hillwalker.material_templates import new_from_template
from hillwalker.state import CampaignDir
from hillwalker.testsets import pick_spread

DATA = Path(__file__).resolve().parents[1] / "data"
runner = CliRunner()

CONFIG = {
    "name": "testset",
    "material": {
        "structure": "structure.cif",
        "level": "levels/xtb.inp",
        "plumed": "plumed.dat",
        "nequip": "nequip.yaml",
    },
    "walkers": {"count": 2, "ensemble": "npt", "temperature": 300.0, "timestep": 0.5, "steps": 60},
    "stop": {"generations": 2},
    "seed": 3,
}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _new_campaign(root: Path) -> Path:
    new_from_template(root, "mil53-al")
    (root / "campaign.yaml").write_text(yaml.safe_dump(CONFIG))
    return root


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a MIL-53 campaign has after generation 1, made of real parts: 12 xTB frames (np, lp
    and the path between) as its dataset, a small NequIP model trained on them (generation 0),
    walker records whose final frames are dataset frames across the volume range (as a
    campaign's labeled finals are), and hills that two real biased segments deposited."""
    from hillwalker.config import load_campaign
    from hillwalker.engines.nequip import train
    from hillwalker.engines.potentials import load_potential
    from hillwalker.engines.walkers import Walker, run_segment
    from hillwalker.settings import walker_settings

    base = tmp_path_factory.mktemp("testset")
    root = _new_campaign(base / "campaign")
    cdir = CampaignDir(root)
    frames = read_frames(DATA / "mil53_xtb_frames.extxyz")[::4]
    write_frames(cdir.dataset, frames)
    write_frames(cdir.generation(0) / "labeled.extxyz", frames)
    model = train(
        cdir.dataset,
        cdir.model_dir(0),
        settings=mil53_test_settings(epochs=10, num_features=8),
        device="cpu",
        threads=NEQUIP_TEST_THREADS,
        compile=False,
    )
    cdir.save_record(
        "train",
        "gen0",
        {
            "status": "done",
            "generation": 0,
            "package": str(model.package.relative_to(root)),
            "compiled": None,
            "directory": str(model.directory.relative_to(root)),
            "metrics": {},
        },
    )
    # four walker finals across the volume range (np 363, path 427 and 609, lp 797 Å³)
    for n, frame in enumerate(frames[i] for i in (0, 10, 11, 5)):
        final = cdir.task_dir("walker", f"w{n}") / "final.extxyz"
        write_frames(final, [frame])
        cdir.save_record(
            "walker",
            f"w{n}",
            {
                "status": "done",
                "generation": 1 + n // 2,
                "walker": n % 2,
                "final": str(final.relative_to(root)),
                "cv": {"v": frame.get_volume() / 1000},
            },
        )
    # the shared bias: two walkers, 100 steps each (PACE 50: two hills each)
    settings = dataclasses.replace(walker_settings(load_campaign(root)), steps=100)
    calculator = load_potential(model.package, threads=NEQUIP_TEST_THREADS)
    for w in (0, 1):
        start = frames[0].copy()
        start.calc = None
        run_segment(
            start,
            calculator,
            root / "plumed.dat",
            base / f"hills-w{w}",
            Walker(index=w, generation=1, n_walkers=2, bias_dir=cdir.bias),
            settings,
            seed=w,
        )
    assert [count_hills(p) for p in hills_files(cdir.bias)] == [2, 2]
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_testset_samples_under_the_bias_labels_and_keeps_the_campaign_intact(
    campaign: Path,
) -> None:
    bias_before = _tree(campaign / "bias")
    dataset_before = (campaign / "dataset.extxyz").read_bytes()
    out = campaign / "testsets" / "np-lp.extxyz"

    result = runner.invoke(app, ["testset", str(campaign), "-o", str(out), "--frames", "4",
                                 "--steps", "40", "--segments", "2", "--cores", "2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "MD [2/2] 40 steps" in result.stderr and "label [4/4]" in result.stderr
    assert "evaluation:\n  test_sets:\n    np-lp: testsets/np-lp.extxyz" in result.stdout

    frames = read_frames(out)
    assert len(frames) == 4
    model = campaign / "generations/000/model/model.nequip.zip"
    for f in frames:
        assert has_labels(f, stress=True) and f.info["status"] == "done"
        assert f.info["level"] == "xtb" and np.isfinite(f.get_potential_energy())
        assert f.get_forces().shape == (38, 3)
        assert f.info["testset"] is True
        assert f.info["testset_model"] == str(model)
        assert f.info["testset_campaign"] == str(campaign)
        # the CV PLUMED printed is this frame's own volume (COLVAR rows matched to frames)
        assert f.info["cv"]["v"] == pytest.approx(f.get_volume() / 1000, abs=2e-6)
    # spread: the segments started at both ends of the visited range (np 363, lp 797 Å³), and
    # the picks cover both
    volumes = sorted(f.info["cv"]["v"] for f in frames)
    assert volumes[0] < 0.40 and volumes[-1] > 0.75

    # apart from the training data: no geometry of any dataset frame
    dataset_ids = {frame_id(f) for f in read_frames(campaign / "dataset.extxyz")}
    assert not dataset_ids & {frame_id(f) for f in frames}
    assert "no frame has the geometry of a frame in the campaign's dataset" in result.stdout
    assert "shared bias as it stands (4 hills, copied; 0 added to the copies" in result.stdout

    # the campaign's bias and dataset are byte-identical; the segments felt the copied hills
    # and added none to them
    assert _tree(campaign / "bias") == bias_before
    assert (campaign / "dataset.extxyz").read_bytes() == dataset_before
    work = Path(f"{out}.work")
    for segment in sorted((work / "md").iterdir()):
        copies = hills_files(segment / "bias")
        assert [p.read_bytes() for p in copies] == [
            (campaign / "bias" / p.name).read_bytes() for p in copies
        ]
        assert "Gaussians read" in (segment / "md" / "plumed.log").read_text()

    # a second call refuses to replace the file without --force
    again = runner.invoke(app, ["testset", str(campaign), "-o", str(out)])
    assert again.exit_code == 1 and "exists; use --force" in again.stderr
    assert read_frames(out)[0].get_potential_energy() == frames[0].get_potential_energy()


@pytest.mark.slow
def test_testset_refuses_bad_input_and_writes_nothing(campaign: Path, tmp_path: Path) -> None:
    before = _tree(campaign)
    existing = tmp_path / "existing.extxyz"
    existing.write_text("keep me")
    not_a_model = tmp_path / "junk.nequip.zip"
    not_a_model.write_text("not a model")
    empty = _new_campaign(tmp_path / "new")  # a campaign that has not trained a model yet
    cases = [
        ([str(tmp_path), "-o", str(tmp_path / "a.extxyz")], "not a campaign directory"),
        ([str(empty), "-o", str(tmp_path / "b.extxyz")], "no trained model yet"),
        ([str(campaign), "-o", str(existing)], "exists; use --force"),
        ([str(campaign), "-o", str(tmp_path / "c.extxyz"), "--frames", "0"], "--frames 0"),
        ([str(campaign), "-o", str(campaign / "dataset.extxyz"), "--force"], "campaign's own"),
        ([str(campaign), "-o", str(campaign / "generations/000/t.extxyz")], "campaign's own"),
        ([str(campaign), "-o", str(tmp_path / "d.extxyz"), "--model", str(tmp_path / "no")],
         "no such model"),
        ([str(campaign), "-o", str(tmp_path / "f.extxyz"), "--model", str(not_a_model)],
         "cannot load the model"),
        ([str(campaign), "-o", str(tmp_path / "e.extxyz"), "--level", str(tmp_path / "no.inp")],
         "no.inp"),
    ]  # fmt: skip
    for args, message in cases:
        result = runner.invoke(app, ["testset", *args])
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert existing.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "existing.extxyz",
        "junk.nequip.zip",
        "new",
    ]
    assert _tree(campaign) == before


def test_pick_spread_covers_one_cv_evenly_and_several_by_distance() -> None:
    one = [{"v": v} for v in (0.0, 0.1, 0.12, 0.5, 0.52, 0.9, 1.0)]
    assert pick_spread(one, 3) == [0, 3, 6]  # nearest to 0, 0.5, 1
    assert pick_spread(one, 10) == list(range(7))
    two = [{"phi": p, "psi": s} for p, s in ((0, 0), (0, 1), (1, 0), (1, 1), (0.5, 0.5))]
    assert pick_spread(two, 4) == [0, 1, 2, 3]
    same = [{"v": 1.0}] * 3
    assert pick_spread(same, 2) == [0, 1]
