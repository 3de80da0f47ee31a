"""``hillwalker train --method`` on frames labeled at two real levels (tblite GFN1-xTB as the
baseline, GFN2-xTB as the target): every method trains, loads as one calculator and is scored;
bad inputs are one line naming the file or key, and write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from typer.testing import CliRunner

from hillwalker.cli import app
from hillwalker.engines.dataset import label, labels, read_frames, write_frames
from hillwalker.engines.levels import load_level
from hillwalker.engines.potentials import load_potential
from hillwalker.engines.tblite_level import compute

runner = CliRunner()
TEMPLATES = Path(__file__).parents[2] / "templates"
CONFIG = TEMPLATES / "alanine-dipeptide" / "nequip.yaml"


def write_level(path: Path, method: str) -> Path:
    path.write_text(f"code: tblite\nmethod: {method}\nelectronic_temperature: 300.0\n")
    return path


def labeled_at(level_file: Path, frames: list) -> list:
    """The frames labeled at the level (tblite in this process), with name and digest, as
    ``hillwalker label`` writes them."""
    level = load_level(level_file)
    out = []
    for atoms in frames:
        got = compute(atoms, level.run_settings())
        out.append(label(atoms, got.energy, got.forces, level=level.name,
                         level_digest=level.digest()))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def two_levels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """16 rattled ethanol frames at GFN2 (target, the first 12 for training, 4 held out) and
    at GFN1 (baseline, all 16 and 8 more)."""
    root = tmp_path_factory.mktemp("levels")
    rng = np.random.default_rng(3)
    frames = []
    for _ in range(24):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(scale=0.06, size=atoms.positions.shape)
        frames.append(atoms)
    gfn1 = write_level(root / "gfn1.yaml", "GFN1-xTB")
    gfn2 = write_level(root / "gfn2.yaml", "GFN2-xTB")
    paths = {"gfn1": gfn1, "gfn2": gfn2, "root": root}
    for name, level, chosen in (("train-gfn2", gfn2, frames[:12]), ("test-gfn2", gfn2, frames[12:16]),
                                ("train-gfn1", gfn1, frames[:12] + frames[16:]),
                                ("test-gfn1", gfn1, frames[12:16])):  # fmt: skip
        paths[name] = root / f"{name}.extxyz"
        write_frames(paths[name], labeled_at(level, chosen))
    return paths


def train(paths: dict[str, Path], out: Path, *options: str) -> str:
    result = runner.invoke(
        app,
        ["train", str(paths["train-gfn2"]), str(paths["train-gfn1"]), "-o", str(out),
         "--config", str(CONFIG), "--epochs", "8", "--no-compile", "--device", "cpu", *options],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.output


def evaluate(paths: dict[str, Path], model: Path) -> dict:
    test = paths["root"] / "test-both.extxyz"
    if not test.exists():
        write_frames(test, read_frames(paths["test-gfn2"]) + read_frames(paths["test-gfn1"]))
    result = runner.invoke(app, ["evaluate", str(model), str(test), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def metrics(model: Path) -> dict:
    return json.loads((model / "model.json").read_text())["metrics"]


def baseline_error(paths: dict[str, Path]) -> float:
    """Energy RMSE (meV/atom) of GFN1 itself against GFN2 on the held-out frames."""
    high, low = read_frames(paths["test-gfn2"]), read_frames(paths["test-gfn1"])
    diff = [
        (labels(h)["energy"] - labels(b)["energy"]) / len(h) for h, b in zip(high, low, strict=True)
    ]
    return 1000 * float(np.sqrt(np.mean(np.square(diff))))


@pytest.mark.slow
def test_delta_is_the_baseline_level_plus_a_model_of_the_difference(
    two_levels: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "delta"
    text = train(two_levels, out, "--method", "delta", "--target", "gfn2",
                 "--baseline", str(two_levels["gfn1"]))  # fmt: skip
    assert "part baseline: level file baseline.yaml (in-process)" in text
    record = json.loads((out / "potential.json").read_text())
    assert [p["kind"] for p in record["parts"]] == ["level", "nequip"]
    assert record["baseline_digest"] == load_level(two_levels["gfn1"]).digest()
    # the sum: GFN1 computed at call time + the delta model
    (frame,) = read_frames(two_levels["test-gfn1"], index="0:1")
    gfn1_energy = labels(frame)["energy"]
    probe = frame.copy()
    probe.calc = load_potential(out, device="cpu")
    total = probe.get_potential_energy()
    parts = probe.calc.part_results
    assert parts["baseline"]["energy"] == pytest.approx(gfn1_energy, abs=1e-5)
    assert total == pytest.approx(parts["baseline"]["energy"] + parts["delta"]["energy"])
    errors = evaluate(two_levels, out)
    assert errors["total"]["n_frames"] == 4 and errors["parts"]["delta"]["n_frames"] == 4
    # GFN1 and GFN2 differ by a large, nearly constant energy: the delta model has learned it
    assert errors["total"]["energy_rmse_mev_per_atom"] < 0.2 * baseline_error(two_levels)
    # the level file copied into the potential is checked against its digest when loaded
    copy = out / "baseline.yaml"
    copy.write_text(copy.read_text().replace("300.0", "500.0"))
    with pytest.raises(ValueError, match=r"baseline\.yaml: the level file changed"):
        load_potential(out, device="cpu")


@pytest.mark.slow
def test_hierarchical_and_transfer_need_no_quantum_chemistry_at_md_time(
    two_levels: dict[str, Path], tmp_path: Path
) -> None:
    hierarchical = tmp_path / "hierarchical"
    train(two_levels, hierarchical, "--method", "hierarchical", "--target", "gfn2",
          "--baseline", "gfn1")  # fmt: skip
    record = json.loads((hierarchical / "potential.json").read_text())
    assert [(p["name"], p["kind"]) for p in record["parts"]] == [
        ("baseline", "nequip"), ("delta", "nequip")
    ]  # fmt: skip
    assert record["frames"] == {"gfn2": 12, "gfn1": 20}
    n_baseline = metrics(hierarchical / "baseline")["n_train"]
    n_delta = metrics(hierarchical / "delta")["n_train"]
    assert n_baseline > n_delta  # the ML baseline learns from all 20 baseline frames
    errors = evaluate(two_levels, hierarchical)
    assert set(errors["parts"]) == {"baseline", "delta"}
    assert errors["total"]["energy_rmse_mev_per_atom"] < 0.2 * baseline_error(two_levels)

    transfer = tmp_path / "transfer"
    train(two_levels, transfer, "--method", "transfer", "--target", "gfn2", "--baseline", "gfn1")
    record = json.loads((transfer / "potential.json").read_text())
    assert [p["kind"] for p in record["parts"]] == ["nequip", "offsets"]
    pretrain, tuned = metrics(transfer / "pretrain"), metrics(transfer / "model")
    assert tuned["config"]["init_from"].endswith("pretrain/model.nequip.zip")
    lr = {m["config"]["settings"]["learning_rate"] for m in (pretrain, tuned)}
    assert sorted(lr) == pytest.approx([0.2 * max(lr), max(lr)])
    # the references: GFN2 − GFN1 per element, the constant the fine-tuning need not learn
    references = record["parts"][1]["energies"]
    assert set(references) == {"C", "H", "O"}
    errors = evaluate(two_levels, transfer)
    assert errors["parts"] == {}
    assert errors["total"]["energy_rmse_mev_per_atom"] < 0.2 * baseline_error(two_levels)


def labeled_in_process(level_file: Path, frames: list) -> list:
    """The frames labeled at any in-process level (here PySCF), as ``hillwalker label`` would."""
    from hillwalker.engines.levels import level_calculator

    level = load_level(level_file)
    calc = level_calculator(level, cores=1)
    out = []
    for atoms in frames:
        probe = atoms.copy()
        probe.calc = calc
        energy, forces = probe.get_potential_energy(), probe.get_forces()
        out.append(label(atoms.copy(), energy, forces, level=level.name,
                         level_digest=level.digest()))  # fmt: skip
    return out


def energies(path: Path) -> np.ndarray:
    return np.array([labels(f)["energy"] for f in read_frames(path)])


@pytest.mark.slow
def test_hierarchical_over_three_levels_learns_one_step_per_part(
    two_levels: dict[str, Path], tmp_path: Path
) -> None:
    """GFN1 (20 frames) < GFN2 (12) < HF/STO-3G (PySCF, 6): a model of GFN1, one of GFN2 −
    GFN1, one of HF − GFN2; the potential is their sum."""
    hf = tmp_path / "hf.yaml"
    hf.write_text("code: pyscf\nmethod: hf\nbasis: sto-3g\n")
    train_hf, test_hf = tmp_path / "train-hf.extxyz", tmp_path / "test-hf.extxyz"
    write_frames(train_hf, labeled_in_process(hf, read_frames(two_levels["train-gfn2"])[:6]))
    write_frames(test_hf, labeled_in_process(hf, read_frames(two_levels["test-gfn2"])))
    out = tmp_path / "three"
    result = runner.invoke(
        app,
        ["train", str(train_hf), str(two_levels["train-gfn2"]), str(two_levels["train-gfn1"]),
         "-o", str(out), "--config", str(CONFIG), "--epochs", "8", "--no-compile", "--device",
         "cpu", "--method", "hierarchical", "--target", "hf", "--baseline", "gfn1",
         "--intermediate", "gfn2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "target hf, baseline gfn1 < gfn2)" in result.output
    record = json.loads((out / "potential.json").read_text())
    assert [p["name"] for p in record["parts"]] == ["baseline", "delta-gfn2", "delta"]
    assert record["intermediates"] == ["gfn2"]
    assert record["frames"] == {"hf": 6, "gfn2": 12, "gfn1": 20}
    # each step learned the difference of its two levels on the frames labeled at both
    gfn1, gfn2, target = (energies(two_levels["train-gfn1"])[:12],
                          energies(two_levels["train-gfn2"]), energies(train_hf))  # fmt: skip
    assert np.allclose(energies(out / "data" / "baseline.extxyz")[:12], gfn1)
    assert np.allclose(energies(out / "data" / "delta-gfn2.extxyz"), gfn2 - gfn1)
    assert np.allclose(energies(out / "data" / "delta.extxyz"), target - gfn2[:6])
    # one calculator, the sum of the three models
    (frame,) = read_frames(test_hf, index="0:1")
    frame.calc = load_potential(out, device="cpu")
    total = frame.get_potential_energy()
    parts = frame.calc.part_results
    assert set(parts) == {"baseline", "delta-gfn2", "delta"}
    assert total == pytest.approx(sum(p["energy"] for p in parts.values()), abs=1e-6)
    # evaluated against HF: the total, and each part on what it learned
    test = tmp_path / "test-all.extxyz"
    write_frames(test, read_frames(test_hf) + read_frames(two_levels["test-gfn2"])
                 + read_frames(two_levels["test-gfn1"]))  # fmt: skip
    got = runner.invoke(app, ["evaluate", str(out), str(test), "--json", "--device", "cpu"])
    assert got.exit_code == 0, got.output
    errors = json.loads(got.output)
    assert {name: e["n_frames"] for name, e in errors["parts"].items()} == {
        "baseline": 4, "delta-gfn2": 4, "delta": 4
    }  # fmt: skip
    high = read_frames(test_hf)
    low = read_frames(two_levels["test-gfn1"])
    gap = [
        (labels(h)["energy"] - labels(b)["energy"]) / len(h) for h, b in zip(high, low, strict=True)
    ]
    assert errors["total"]["energy_rmse_mev_per_atom"] < 0.2 * 1000 * float(
        np.sqrt(np.mean(np.square(gap)))
    )


def test_intermediate_levels_are_refused_where_they_do_not_fit(
    two_levels: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "never"
    base = ["train", str(two_levels["train-gfn2"]), str(two_levels["train-gfn1"]), "-o", str(out),
            "--config", str(CONFIG), "--target", "gfn2", "--baseline", "gfn1"]  # fmt: skip
    for options, message in (
        (["--method", "transfer", "--intermediate", "gfn2"],
         "intermediate levels (gfn2): only method hierarchical has a part per level"),
        (["--method", "hierarchical", "--intermediate", "gfn2"],
         "level 'gfn2' appears twice in baseline, intermediates, target (gfn1 < gfn2 < gfn2)"),
        (["--method", "hierarchical", "--intermediate", "pbe"],
         "intermediate level 'pbe': no frames at it (levels here: gfn1, gfn2)"),
    ):  # fmt: skip
        result = runner.invoke(app, base + options)
        assert result.exit_code != 0
        assert message in result.output, result.output
        assert not out.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--method", "delta", "--target", "gfn2"], "method delta needs a baseline level"),
        (["--method", "delta", "--target", "gfn2", "--baseline", "gfn1"],
         "method delta computes the baseline at every MD step: give its level file"),
        (["--method", "hierarchical", "--target", "gfn2", "--baseline", "gfn2"],
         "baseline level 'gfn2' is the target level itself"),
        (["--method", "transfer", "--target", "pbe", "--baseline", "gfn1"],
         "target level 'pbe': no frames at it (levels here: gfn1, gfn2)"),
        (["--method", "magic", "--target", "gfn2"], "method 'magic': one of direct, delta"),
        (["--target", "gfn2"], "--method and --target go together"),
    ],
)  # fmt: skip
def test_bad_method_inputs_are_one_line_and_write_nothing(
    two_levels: dict[str, Path], tmp_path: Path, options: list[str], message: str
) -> None:
    out = tmp_path / "never"
    result = runner.invoke(
        app, ["train", str(two_levels["train-gfn2"]), str(two_levels["train-gfn1"]), "-o",
              str(out), "--config", str(CONFIG), *options],
    )  # fmt: skip
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert not out.exists()


def test_a_baseline_file_whose_settings_changed_since_labeling_is_refused(
    two_levels: dict[str, Path], tmp_path: Path
) -> None:
    changed = write_level(tmp_path / "gfn1.yaml", "GFN1-xTB")
    changed.write_text(changed.read_text().replace("300.0", "1000.0"))
    out = tmp_path / "never"
    result = runner.invoke(
        app, ["train", str(two_levels["train-gfn2"]), str(two_levels["train-gfn1"]), "-o",
              str(out), "--method", "delta", "--target", "gfn2", "--baseline", str(changed)],
    )  # fmt: skip
    assert result.exit_code != 0
    assert f"{changed}: the baseline's frames were labeled with settings" in result.output
    assert not out.exists()
    cp2k = TEMPLATES / "mil53-al" / "levels" / "xtb.inp"
    result = runner.invoke(
        app, ["train", str(two_levels["train-gfn2"]), str(two_levels["train-gfn1"]), "-o",
              str(out), "--method", "delta", "--target", "gfn2", "--baseline", str(cp2k)],
    )  # fmt: skip
    assert result.exit_code != 0 and not out.exists()
    # named 'xtb' (the file's stem), which labeled none of these frames
    assert "baseline level 'xtb': no frames at it" in result.output
