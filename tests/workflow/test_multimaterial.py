"""One campaign, several materials, one model (campaign.yaml `materials:`).

The slow test runs a real two-material campaign (MIL-53(Al) narrow pore and large pore as two
materials, GFN1-xTB in CP2K, PLUMED, NequIP): killed with SIGKILL during generation-0 labeling
and resumed, one walker generation, then a third material added between runs (its generation 2
keeps generation 1's biases).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_resume import HILLWALKER, called_keys, make, records, run_to_end, start

from hillwalker.config import ConfigError, load_campaign
from hillwalker.engines.dataset import read_frames
from hillwalker.engines.plumed import read_hills
from hillwalker.material_templates import new_from_template
from hillwalker.runner import _smoke_dir
from hillwalker.state import reap_orphans
from hillwalker.status import campaign_status
from hillwalker.validate import validate_campaign

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"

CONFIG = {
    "name": "two-materials",
    "material": {"level": "levels/xtb.inp", "nequip": "nequip.yaml"},
    "materials": [
        {"name": "np", "structure": "np.extxyz", "plumed": "plumed.dat"},
        {
            "name": "lp",
            "structure": "lp.extxyz",
            "plumed": "plumed.dat",
            "walkers": {"temperature": 150.0},
            "generation0": {"frames": 2},
        },
    ],
    "generation0": {"frames": 3, "position_sigma": 0.03, "cell_strain": 0.02},
    "walkers": {"count": 1, "temperature": 100.0, "timestep": 0.5, "steps": 100},
    "training": {
        "epochs": 4,
        "warm_epochs": 3,
        "validation_fraction": 0.25,
        "overrides": {"num_features": 8, "batch_size": 2},
    },
    "stop": {"generations": 1},
    "seed": 5,
}


def write_config(root: Path, config: dict) -> None:
    (root / "campaign.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def two_materials(root: Path) -> None:
    new_from_template(root, "mil53-al")
    shutil.copy(DATA / "mil53_np_relaxed_xtb.extxyz", root / "np.extxyz")
    shutil.copy(DATA / "mil53_lp_relaxed_xtb.extxyz", root / "lp.extxyz")
    write_config(root, CONFIG)


def config_problems(root: Path, config: dict) -> str:
    write_config(root, config)
    with pytest.raises(ConfigError) as err:
        load_campaign(root)
    return str(err.value)


def test_bad_materials_are_named_by_file_and_key(tmp_path: Path) -> None:
    root = tmp_path / "c"
    two_materials(root)
    assert load_campaign(root).view("lp").walkers.temperature == 150.0
    assert load_campaign(root).view("np").walkers.temperature == 100.0
    assert load_campaign(root).view("lp").generation0.frames == 2
    same = {
        **CONFIG,
        "materials": [CONFIG["materials"][0], {**CONFIG["materials"][1], "name": "np"}],
    }
    assert "materials.1.name: 'np' is used twice" in config_problems(root, same)
    both = {**CONFIG, "material": {**CONFIG["material"], "structure": "np.extxyz"}}
    assert "material.structure: with materials: each material names its own" in config_problems(
        root, both
    )
    bias = {
        **CONFIG,
        "materials": [{**CONFIG["materials"][0], "walkers": {"bias": "none"}}],
    }
    assert "materials.0.walkers.bias: one setting for all materials" in config_problems(root, bias)
    typo = {**CONFIG, "materials": [{**CONFIG["materials"][0], "walkers": {"temprature": 3}}]}
    assert "materials.0.walkers.temprature: unknown key" in config_problems(root, typo)
    cold = {**CONFIG, "materials": [{**CONFIG["materials"][0], "walkers": {"temperature": -1}}]}
    assert "materials.0.walkers.temperature: Input should be greater than 0" in config_problems(
        root, cold
    )
    neither = {**CONFIG, "materials": None}
    assert "material.structure: missing" in config_problems(root, neither)
    # a level that does not cover a material's elements: validate names the material
    shutil.copy(ROOT / "templates/levels/sw-si.yaml", root / "sw.yaml")
    write_config(root, {**CONFIG, "material": {**CONFIG["material"], "level": "sw.yaml"}})
    problems = "\n".join(validate_campaign(root).problems)
    assert f"{root / 'campaign.yaml'}: materials.0 (np).structure:" in problems
    assert f"{root / 'campaign.yaml'}: materials.1 (lp).structure:" in problems
    write_config(root, CONFIG)
    report = validate_campaign(root)
    assert report.ok, report.problems
    assert "np: " in report.structure_summary and "lp: " in report.structure_summary
    # run --smoke: every material's files found from the smoke directory, its numbers made small
    big = {
        **CONFIG,
        "materials": [
            CONFIG["materials"][0],
            {**CONFIG["materials"][1], "walkers": {"count": 6, "steps": 900}},
        ],
    }
    write_config(root, big)
    smoke = load_campaign(_smoke_dir(root, load_campaign(root)))
    assert smoke.view("lp").walkers.count == 2 and smoke.view("lp").walkers.steps == 20
    assert smoke.view("lp").walkers.temperature == 100.0  # big changes only count and steps
    for name, view in smoke.views():
        assert Path(view.structure_file) == root / f"{name}.extxyz"
        assert Path(view.plumed_file) == root / "plumed.dat"
    assert validate_campaign(root / ".hillwalker/smoke").ok


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_two_materials_one_model_resume_and_a_third_added(tmp_path: Path) -> None:
    root = tmp_path / "killed"
    calls = tmp_path / "calls.txt"
    site, _ = make(root, calls)
    shutil.copy(DATA / "mil53_np_relaxed_xtb.extxyz", root / "np.extxyz")
    shutil.copy(DATA / "mil53_lp_relaxed_xtb.extxyz", root / "lp.extxyz")
    write_config(root, CONFIG)

    # killed the moment the third single point's result is written, before it is recorded
    proc = start(root, site, tmp_path / "run.log")
    (tmp_path / "killed-armed").write_text(str(proc.pid))
    assert proc.wait(timeout=900) == -signal.SIGKILL
    reap_orphans(root)
    done_at_kill = set(records(root, "single_point"))
    calls_at_kill = len(called_keys(calls))
    assert calls_at_kill >= 3

    done = run_to_end(root, site, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    keys = called_keys(calls)
    # nothing that was finished at the kill ran again (the killed result was adopted); a single
    # point still running at the kill runs again, one the SCF ladder retries calls CP2K twice
    assert not set(keys[calls_at_kill:]) & done_at_kill
    assert set(keys) == set(records(root, "single_point"))
    # generation 0: 3 + 2 frames; one generation of one walker per material
    assert len(set(keys)) == 5 + 2

    dataset = read_frames(root / "dataset.extxyz")
    by_material = [f.info["material"] for f in dataset]
    assert sorted(set(by_material)) == ["lp", "np"]
    assert by_material.count("np") == 3 + 1 and by_material.count("lp") == 2 + 1

    # each material's walkers deposit into their own bias, around their own volumes (nm³)
    volume = {}
    for name in ("np", "lp"):
        frames = [f for f in dataset if f.info["material"] == name]
        volume[name] = np.mean([f.get_volume() for f in frames]) / 1000.0
        centers = read_hills(root / "bias" / name).centers[:, 0]
        assert len(centers) == 2  # a hill at steps 50 and 100 of generation 1
        assert np.all(np.abs(centers - volume[name]) < 0.15), (name, centers, volume[name])
        assert len(read_hills(root / "generations/001/hills" / name).centers) == len(centers)
    assert volume["lp"] - volume["np"] > 0.3  # the two materials are far apart
    assert sorted(p.name for p in (root / "bias").iterdir()) == ["lp", "np"]
    walkers = records(root, "walker")
    assert sorted((w["generation"], w["material"]) for w in walkers.values()) == [
        (1, "lp"),
        (1, "np"),
    ]
    status = campaign_status(root)
    assert status["materials"]["np"]["single_points_done"] == 4
    assert status["materials"]["lp"]["single_points_done"] == 3
    assert status["materials"]["np"]["walker_segments"] == 1
    assert set(status["materials"]["lp"]["cv_range"]) == set(status["materials"]["np"]["cv_range"])
    np_range, lp_range = (status["materials"][n]["cv_range"]["v"] for n in ("np", "lp"))
    assert np_range[1] < lp_range[0]
    # evaluate breaks the errors down by material
    scored = subprocess.run(
        [HILLWALKER, "evaluate", str(root / "generations/001/model"), str(root / "dataset.extxyz"),
         "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    errors = json.loads(scored.stdout)
    assert {m: e["n_frames"] for m, e in errors["by_material"].items()} == {"lp": 3, "np": 4}
    overall = errors["force_rmse_mev_per_ang"] ** 2
    parts = [e["force_rmse_mev_per_ang"] ** 2 for e in errors["by_material"].values()]
    assert min(parts) <= overall <= max(parts)
    # the report: a table of the materials, CV coverage and free energy per material
    subprocess.run([HILLWALKER, "report", str(root)], capture_output=True, check=True)
    page = (root / "report.html").read_text()
    assert "<h2>Materials</h2>" in page
    for name in ("np", "lp"):
        assert f"<h2>Free energy — {name}</h2>" in page
        assert f'id="fig-fes-{name}-img"' in page and f'id="fig-cv-coverage-{name}-img"' in page

    # a third material added between runs: it joins at generation 2 (its frames labeled there,
    # the shared model warm-started on them); nothing of the first two is redone, and the first
    # two go on from their own biases
    third = {
        "name": "sabwau",
        "structure": "structure.cif",
        "plumed": "plumed.dat",
        "generation0": {"frames": 1},
    }
    write_config(
        root,
        {**CONFIG, "materials": [*CONFIG["materials"], third], "stop": {"generations": 2}},
    )
    before = set(called_keys(calls))
    done = run_to_end(root, site, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    log = (root / ".hillwalker/run.log").read_text()
    assert "applied change in materials" in log
    assert "material(s) sabwau join at generation 2" in log
    assert campaign_status(root)["materials"]["sabwau"]["joined_generation"] == 2
    for name in ("np", "lp"):
        kept = read_hills(root / "generations/001/hills" / name).centers
        grown = read_hills(root / "generations/002/hills" / name).centers
        assert len(grown) > len(kept) and np.allclose(grown[: len(kept)], kept)
    new = read_frames(root / "generations/002/labeled.extxyz")
    assert sorted(f.info["material"] for f in new) == ["lp", "np", "sabwau"]
    # single points, not CP2K calls: one may need a retry of the SCF ladder
    added = set(called_keys(calls)) - before
    assert len(added) == 3
    assert len(records(root, "train")) == 3

    # a material with an element the warm-started model has no type for: refused before any
    # work, with the way out (a new campaign from this model with training.species_map)
    shutil.copy(ROOT / "examples/mil53-ga-from-al/structure.cif", root / "ga.cif")
    ga = {"name": "ga", "structure": "ga.cif", "plumed": "plumed.dat"}
    write_config(
        root,
        {**CONFIG, "materials": [*CONFIG["materials"], third, ga], "stop": {"generations": 3}},
    )
    refused = run_to_end(root, site, timeout=600)
    assert refused.returncode != 0
    message = refused.stdout + refused.stderr
    assert "materials.3 (ga): Ga joins a campaign whose model has no type for it" in message
    assert f"training.init: {root / 'generations/002/model'}" in message
    assert "training.species_map" in message and "{Ga: Al}" in message
    assert "Traceback" not in message
    assert "ga" not in json.loads((root / ".hillwalker/materials.json").read_text())
    assert set(called_keys(calls)) == before | added
