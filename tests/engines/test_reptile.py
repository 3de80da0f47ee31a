"""Reptile / joint pretraining across levels of theory on real NequIP (engines/nequip/reptile.py).

Two tiny levels of MIL-53(Al): six CP2K GFN1-xTB frames as they are, and six others relabeled
as a second, consistent level (E' = 1.1 E − 3 eV × atoms, F' = 1.1 F, σ' = 1.1 σ): a different
absolute energy and a different force scale, the kind of disagreement between levels that
per-level references and Reptile are for. The model: 1 layer × 8 features.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ase import Atoms
from conftest import NEQUIP_TEST_THREADS

from hillwalker.engines.dataset import label, labels, read_frames, write_frames
from hillwalker.engines.nequip import TrainSettings

SCALE, OFFSET_PER_ATOM = 1.1, -3.0


def _scaled(frame: Atoms) -> Atoms:
    got = labels(frame)
    atoms = frame.copy()
    atoms.calc = None
    atoms.info = {"level": "xtb-scaled"}
    energy = SCALE * got["energy"] + OFFSET_PER_ATOM * len(atoms)
    return label(atoms, energy, SCALE * got["forces"], SCALE * got["stress"])


@pytest.fixture(scope="module")
def levels(mil53_frames_path: Path) -> dict[str, list[Atoms]]:
    frames = read_frames(mil53_frames_path)
    return {"xtb": frames[0:6], "xtb-scaled": [_scaled(f) for f in frames[6:12]]}


def _settings(**changes: Any) -> TrainSettings:
    base: dict[str, Any] = {
        "num_features": 8,
        "num_layers": 1,
        "batch_size": 2,
        "learning_rate": 0.01,
        "seed": 0,
    }
    return TrainSettings.from_template(None, **{**base, **changes})


def _run_kwargs() -> dict[str, Any]:
    return {
        "method": "reptile",
        "k": 2,
        "epsilon": 0.5,
        "epsilon_final": 0.1,
        "outer_steps": 6,
        "checkpoint_every": 2,
        "settings": _settings(),
        "device": "cpu",
        "threads": NEQUIP_TEST_THREADS,
    }


@pytest.fixture(scope="module")
def pretrained(levels: dict[str, list[Atoms]], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An uninterrupted Reptile pretraining (6 outer steps of k = 2)."""
    from hillwalker.engines.nequip.reptile import pretrain

    return pretrain(levels, tmp_path_factory.mktemp("pretrain") / "model", **_run_kwargs())


def _setup(levels: dict[str, list[Atoms]], out: Path, **changes: Any) -> Any:
    from hillwalker.engines.nequip.reptile import build, prepare

    with_threads(NEQUIP_TEST_THREADS)
    return build(prepare(levels, out, settings=_settings(**changes)), "cpu")


def with_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _twin(setup: Any) -> tuple[Any, Any, Any]:
    """An independent copy of (module, optimiser) with its parameters and loss."""
    from hillwalker.engines.nequip.reptile import loss_function

    module, optimizer = copy.deepcopy((setup.module, setup.optimizer))
    params = [p for p in module.model.parameters() if p.requires_grad]
    return params, optimizer, loss_function(module)


def _clone(params: list[Any]) -> list[Any]:
    return [p.detach().clone() for p in params]


def test_outer_update_moves_every_weight_by_epsilon_times_inner_displacement(levels, tmp_path):
    import torch

    from hillwalker.engines.nequip.reptile import batch_of, optimizer_step, reptile_step

    setup = _setup(levels, tmp_path / "run")
    items = setup.train[1]  # the second level's frames
    batches = [batch_of(items, [0, 1], "cpu"), batch_of(items, [2, 3], "cpu")]  # k = 2
    epsilon = 0.3
    theta = _clone(setup.parameters)
    # θ_k: the same k optimiser steps, from the same weights and optimiser state, on a twin
    twin_params, twin_optimizer, twin_loss = _twin(setup)
    for batch in batches:
        optimizer_step(twin_optimizer, twin_loss, batch)
    theta_k = _clone(twin_params)
    buffers = {k: v.clone() for k, v in setup.module.model.named_buffers()}

    reptile_step(setup.parameters, setup.optimizer, setup.loss, batches, epsilon)

    assert len(setup.parameters) == len(theta) > 5
    moved = 0
    for new, old, inner in zip(setup.parameters, theta, theta_k, strict=True):
        assert torch.equal(new, old + epsilon * (inner - old))  # exactly, on every tensor
        moved += int(not torch.equal(inner, old))
    assert moved == len(theta)  # every weight tensor took part in the inner loop
    for name, value in setup.module.model.named_buffers():
        assert torch.equal(value, buffers[name])  # buffers (shifts, cutoffs) are not weights


def test_k1_reptile_is_joint_training_with_learning_rate_epsilon_eta(levels, tmp_path):
    """Reptile with k = 1, outer step ε and inner learning rate η makes the same updates
    (weights and optimiser state) as joint training with learning rate ε·η on the same
    sequence of batches: θ_1 − θ = Δ(g, state) is proportional to η for Adam (and SGD), and
    the optimiser's state depends on the gradient only."""
    import torch

    from hillwalker.engines.nequip.reptile import batch_of, joint_step, reptile_step

    eta, epsilon = 0.01, 0.4
    reptile = _setup(levels, tmp_path / "reptile", learning_rate=eta)
    joint = _setup(levels, tmp_path / "joint", learning_rate=epsilon * eta)
    for a, b in zip(reptile.parameters, joint.parameters, strict=True):
        assert torch.equal(a, b)  # the same seed builds the same model
    assert reptile.optimizer.param_groups[0]["lr"] == eta
    assert joint.optimizer.param_groups[0]["lr"] == pytest.approx(epsilon * eta)
    start = _clone(reptile.parameters)
    # three batches, one level each (what Reptile's inner loop sees)
    sequence = [(0, [0, 1]), (1, [2, 3]), (0, [4, 1])]
    for level, indices in sequence:
        batch = batch_of(reptile.train[level], indices, "cpu")
        reptile_step(reptile.parameters, reptile.optimizer, reptile.loss, [batch], epsilon)
        joint_step(joint.optimizer, joint.loss, batch_of(joint.train[level], indices, "cpu"))
    for a, b, s in zip(reptile.parameters, joint.parameters, start, strict=True):
        # the same to float32 rounding of θ + ε(θ_1 − θ); each step moved them ~1e-3
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-7)
        assert not torch.equal(a, s)
    state_a, state_b = reptile.optimizer.state_dict(), joint.optimizer.state_dict()
    for key in state_a["state"]:
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(
                state_a["state"][key][name], state_b["state"][key][name], rtol=1e-4, atol=1e-9
            )


class KilledError(Exception):
    """Stands for a kill between two outer steps."""


def test_killed_pretraining_resumes_to_the_same_weights(levels, pretrained, tmp_path):
    import torch

    from hillwalker.engines.nequip.reptile import STATE_NAME, pretrain

    out = tmp_path / "model"

    def kill_at_step_3(progress: dict[str, Any]) -> None:
        if progress["outer_step"] == 3:
            raise KilledError

    with pytest.raises(KilledError):
        pretrain(levels, out, callback=kill_at_step_3, **_run_kwargs())
    state = torch.load(out / STATE_NAME, weights_only=False)
    assert state["step"] == 2  # the checkpoint before the kill; step 3 is done again
    assert not (out / "model.json").exists() and not (out / "model.nequip.zip").exists()

    steps: list[int] = []
    resumed = pretrain(
        levels, out, callback=lambda p: steps.append(p["outer_step"]), **_run_kwargs()
    )
    assert steps == [3, 4, 5, 6]
    final = torch.load(out / STATE_NAME, weights_only=False)
    reference = torch.load(pretrained.directory / STATE_NAME, weights_only=False)
    assert final["step"] == reference["step"] == 6
    assert final["model"].keys() == reference["model"].keys()
    for key, value in reference["model"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(final["model"][key], value), key
    assert [h["level"] for h in resumed.record["history"]] == [
        h["level"] for h in pretrained.record["history"]
    ]
    # a finished directory is returned as it is (no new outer step)
    again = pretrain(levels, out, callback=lambda p: steps.append(-1), **_run_kwargs())
    assert -1 not in steps and again.record == resumed.record


def test_package_loads_and_warm_starts_training(levels, pretrained, tmp_path):
    from hillwalker.engines.nequip import load_calculator, model_species, train

    record = pretrained.record
    assert pretrained.levels == ["xtb", "xtb-scaled"]
    assert record["method"] == "reptile" and record["k"] == 2 and record["outer_steps"] == 6
    assert record["stress_trained"] is True
    scaled = record["levels"][1]
    # one composition: each level's references sum to its mean energy (least squares), so the
    # second level's offset is the difference of the two levels' mean energies
    frame = levels["xtb"][0]
    offset = sum(scaled["offsets"][s] for s in frame.get_chemical_symbols())
    means = [np.mean([labels(f)["energy"] for f in frames]) for frames in levels.values()]
    assert offset == pytest.approx(means[1] - means[0], rel=1e-9)
    assert [h["outer_step"] for h in record["history"]] == [2, 4, 6]
    assert set(record["history"][-1]["val"]) == {"xtb", "xtb-scaled"}
    progress = (pretrained.directory / "progress.json").read_text()
    assert '"outer_step": 6' in progress

    calc = load_calculator(pretrained.directory, device="cpu", threads=NEQUIP_TEST_THREADS)
    assert model_species(pretrained.package) == ["H", "C", "O", "Al"]
    atoms = levels["xtb"][0].copy()
    atoms.calc = calc
    predicted = atoms.get_potential_energy()
    # the package predicts the reference level's (xtb's) energies, not the residuals
    assert abs(predicted - labels(levels["xtb"][0])["energy"]) / len(atoms) < 1.0
    assert np.isfinite(atoms.get_forces()).all() and np.isfinite(atoms.get_stress()).all()

    # warm start: at a negligible learning rate the fine-tuned model is the pretrained one
    data = tmp_path / "new-level.extxyz"
    write_frames(data, levels["xtb"])
    tuned = train(
        data,
        tmp_path / "tuned",
        settings=_settings(epochs=1, learning_rate=1e-9, checkpoint="last"),
        init_from=pretrained.directory,
        device="cpu",
        compile=False,
        threads=NEQUIP_TEST_THREADS,
    )
    assert tuned.metrics["config"]["init_from"] == str(pretrained.package)
    tuned_atoms = levels["xtb"][0].copy()
    tuned_atoms.calc = load_calculator(tuned.directory, device="cpu", threads=NEQUIP_TEST_THREADS)
    assert tuned_atoms.get_potential_energy() == pytest.approx(predicted, abs=1e-4)


def _molecules(level: str, symbol: str) -> list[Atoms]:
    frames = []
    for d in (1.0, 1.1, 1.2):
        atoms = Atoms(f"{symbol}2", positions=[[0, 0, 0], [0, 0, d]])
        frames.append(label(atoms, -d, np.zeros((2, 3)), level=level))
    return frames


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"only_one_level": True}, "two or more levels"),
        (
            {"disjoint": True},
            "level xtb: no element in common with the other levels (Al C H O vs Ar)",
        ),
        ({"k": 0}, "k (inner steps) must be an integer >= 1"),
        ({"epsilon": 0.0}, "epsilon (outer step size) must be in (0, 1]"),
        ({"epsilon": 1.5}, "epsilon (outer step size) must be in (0, 1]"),
        ({"epsilon_final": -0.1}, "epsilon_final must be in [0, 1]"),
        ({"method": "maml"}, "method 'maml': one of reptile, joint"),
        ({"reference_level": "pbe"}, "reference level 'pbe': no such level"),
        ({"device": "tpu"}, "device 'tpu': expected auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_inputs_are_refused_and_nothing_is_written(levels, tmp_path, change, message):
    from hillwalker.engines.nequip import ModelError
    from hillwalker.engines.nequip.reptile import pretrain

    data = {name: frames[:3] for name, frames in levels.items()}
    kwargs = {**_run_kwargs(), **change}
    if kwargs.pop("only_one_level", False):
        data = {"xtb": data["xtb"]}
    if kwargs.pop("disjoint", False):
        data = {"xtb": data["xtb"], "argon": _molecules("argon", "Ar")}
    out = tmp_path / "model"
    with pytest.raises(ModelError) as error:  # PretrainError is one
        pretrain(data, out, **kwargs)
    assert message in str(error.value)
    assert not out.exists()
