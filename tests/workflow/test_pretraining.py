"""``hillwalker pretrain``: the command's input errors (the engine: tests/engines/test_reptile.py)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from hillwalker.cli import app
from hillwalker.engines.dataset import label, labels, read_frames, write_frames

runner = CliRunner()


def _two_levels(mil53_frames_path: Path, tmp_path: Path) -> Path:
    frames = read_frames(mil53_frames_path)[:6]
    other = []
    for f in frames[3:]:
        got = labels(f)
        atoms = f.copy()
        atoms.calc = None
        atoms.info = {}
        other.append(label(atoms, got["energy"] + 1.0, got["forces"], level="other"))
    good = tmp_path / "good.extxyz"
    write_frames(good, frames[:3] + other)
    return good


def test_a_frame_without_level_is_named_by_file_and_nothing_is_written(mil53_frames_path, tmp_path):
    good = _two_levels(mil53_frames_path, tmp_path)
    unnamed = read_frames(mil53_frames_path)[10]
    unnamed.info = {}
    bad = tmp_path / "bad.extxyz"
    write_frames(bad, [unnamed])
    out = tmp_path / "model"
    result = runner.invoke(app, ["pretrain", str(good), str(bad), "-o", str(out)])
    assert result.exit_code == 1
    assert f"{bad}: frame 0: no 'level' key" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_a_frame_without_forces_is_named_by_file_and_nothing_is_written(
    mil53_frames_path, tmp_path
):
    good = _two_levels(mil53_frames_path, tmp_path)
    frame = read_frames(mil53_frames_path)[10]
    energy_only = label(frame, labels(frame)["energy"], None, level="xtb")
    bad = tmp_path / "bad.extxyz"
    write_frames(bad, [energy_only])
    out = tmp_path / "model"
    result = runner.invoke(app, ["pretrain", str(good), str(bad), "-o", str(out)])
    assert result.exit_code == 1
    assert f"{bad}: frame 0: level xtb: no forces label" in result.stderr
    assert not out.exists()


def test_one_level_and_bad_knobs_are_refused_before_anything_is_written(
    mil53_frames_path, tmp_path
):
    one = tmp_path / "one.extxyz"
    write_frames(one, read_frames(mil53_frames_path)[:4])
    two = _two_levels(mil53_frames_path, tmp_path)
    out = tmp_path / "model"
    cases = [
        ([str(one)], "two or more levels of theory (found: xtb)"),
        ([str(two), "--k", "0"], "k (inner steps) must be an integer >= 1"),
        ([str(two), "--epsilon", "1.5"], "epsilon (outer step size) must be in (0, 1]"),
        ([str(two), "--method", "maml"], "method 'maml': one of reptile, joint"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["pretrain", *args, "-o", str(out)])
        assert result.exit_code == 1, result.output
        assert message in result.stderr
        assert not out.exists()


def test_joint_pretraining_from_the_command_line(mil53_frames_path, tmp_path):
    """End to end: two levels in one file, a tiny template, joint training; the record says
    what it was trained on and the directory is a model directory."""
    from hillwalker.engines.nequip import default_template, model_species
    from hillwalker.engines.nequip.reptile import PretrainedModel

    template = tmp_path / "tiny.yaml"
    text = default_template().read_text()
    text = text.replace("num_features: 32", "num_features: 8").replace(
        "num_layers: 2", "num_layers: 1"
    )
    template.write_text(text)
    data = _two_levels(mil53_frames_path, tmp_path)
    out = tmp_path / "model"
    args = ["pretrain", str(data), "-o", str(out), "--method", "joint", "--outer-steps", "4"]
    args += ["--checkpoint-every", "2", "--config", str(template), "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "outer step 2/4" in result.stdout and "outer step 4/4" in result.stdout
    assert "method    joint, 4 outer steps" in result.stdout
    model = PretrainedModel.from_directory(out)
    assert model.levels == ["xtb", "other"]
    assert model.record["method"] == "joint" and model.record["k"] == 1
    assert {h["level"] for h in model.record["history"]} == {"pooled"}
    assert model.record["stress_trained"] is False  # the second level has no stress labels
    assert model_species(out) == ["H", "C", "O", "Al"]
