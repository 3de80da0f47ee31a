"""README promises at campaign level, all on ONE tiny MIL-53 campaign driven through the CLI.

The module fixture runs the scenario once (real CP2K xTB, PLUMED, NequIP, Parsl) and keeps what
each step showed; every test then checks one promise on it:

1. ``run --generations 1`` (campaign.yaml says 3), 2 walkers with ``bias: independent``,
   ``training.mode: scratch``; while it runs, a second ``run`` and a ``status``; it is killed
   (SIGKILL to its group) during generation 1's MD, and ``status`` says what will be redone;
2. ``run --generations 1`` again finishes it;
3. an unsafe edit (plumed.dat) is refused, then accepted with ``--force``;
4. ``stop.max_single_points`` and then ``stop.target_force_rmse`` (validation) each stop the run
   before generation 2 without computing anything;
5. ``walkers.bias: none`` and ``run --generations 2``: generation 2's walkers deposit nothing.

Corrupted files (a truncated dataset or labeled file, a record whose result is gone) are
checked on copies of the campaign as it was after step 2.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from test_campaign import make_campaign

from hillwalker.engines.dataset import labels, read_frames
from hillwalker.engines.plumed import KJ_PER_MOL, bias_from_hills, read_hills

HILLWALKER = str(Path(sys.executable).parent / "hillwalker")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

#: 2 gen-0 frames, 2 walkers x 60 steps of 0.5 fs; PACE 25 instead of the template's 50 (hills
#: at steps 25 and 50: a walker of the 2-epoch model that blows up before step 50 still has one)
SCENARIO: dict[str, dict[str, Any]] = {
    "generation0": {"frames": 2},
    "walkers": {"count": 2, "steps": 60, "bias": "independent"},
    "training": {"mode": "scratch", "epochs": 2},
    "stop": {"generations": 3},
}


def hw(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HILLWALKER, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def status(root: Path) -> dict[str, Any]:
    out = hw("status", str(root), "--json", timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def edit(root: Path, section: str, **values: Any) -> None:
    config = yaml.safe_load((root / "campaign.yaml").read_text())
    for key, value in values.items():
        if value is None:
            config[section].pop(key, None)
        else:
            config[section][key] = value
    (root / "campaign.yaml").write_text(yaml.safe_dump(config))


def records(root: Path, kind: str) -> list[str]:
    return sorted(p.name for p in (root / ".hillwalker/tasks" / kind).glob("*.json"))


def _walkers_started(root: Path) -> int:
    return len(list(root.glob("generations/001/walkers/w*/walker.log")))


def _phase_interrupted(root: Path, seen: dict[str, Any], log: Path) -> None:
    """``run --generations 1``; a second run and a status while it runs; kill -9 during MD."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [HILLWALKER, "run", str(root), "--generations", "1"],
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        while not (root / ".hillwalker/tasks/single_point").is_dir():
            assert proc.poll() is None and time.monotonic() - started < 900, log.read_text()
            time.sleep(0.2)
        # the first run is held (SIGSTOP to its main process: alive, holding the campaign) while
        # the second starts and is refused: on a loaded machine the second's start-up alone
        # (imports) outlasted the whole first run once, and it was not refused
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            seen["second_run"] = hw("run", str(root), timeout=300)
            seen["status_running"] = status(root)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        while not _walkers_started(root):
            assert proc.poll() is None and time.monotonic() - started < 1500, log.read_text()
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # counted on disk, apart from status: walker directories of generation 1 without a record
    started = len(list(root.glob("generations/001/walkers/w*")))
    seen["walkers_unrecorded"] = started - len(records(root, "walker"))
    seen["status_killed"] = status(root)


def _phase_finish(root: Path, seen: dict[str, Any]) -> None:
    started = time.monotonic()
    seen["finish"] = hw("run", str(root), "--generations", "1")
    seen["finish_seconds"] = time.monotonic() - started
    seen["status_finished"] = status(root)
    seen["bias_after_1"] = {p.name: p.read_bytes() for p in (root / "bias").glob("HILLS.*")}


def _phase_unsafe_edit(root: Path, seen: dict[str, Any]) -> None:
    plumed = root / "plumed.dat"
    plumed.write_text(plumed.read_text() + "\n# a comment changes the file's digest\n")
    before = records(root, "single_point")
    seen["unsafe"] = hw("run", str(root), "--generations", "0")
    seen["forced"] = hw("run", str(root), "--generations", "0", "--force")
    seen["records_unchanged_by_force"] = records(root, "single_point") == before


def _phase_stops(root: Path, seen: dict[str, Any]) -> None:
    spent = len(records(root, "single_point"))
    seen["spent"] = spent
    edit(root, "stop", max_single_points=spent)
    seen["budget"] = hw("run", str(root))
    seen["budget_run"] = json.loads((root / ".hillwalker/run.json").read_text())
    edit(root, "stop", max_single_points=None, target_force_rmse=1e9)
    seen["target"] = hw("run", str(root))
    seen["target_run"] = json.loads((root / ".hillwalker/run.json").read_text())
    seen["generation_2_after_stops"] = (root / "generations/002").exists()
    seen["dataset_after_stops"] = len(read_frames(root / "dataset.extxyz"))
    seen["records_after_stops"] = len(records(root, "single_point"))


def _phase_no_bias(root: Path, seen: dict[str, Any]) -> None:
    edit(root, "stop", target_force_rmse=None)
    edit(root, "walkers", bias="none")
    seen["no_bias"] = hw("run", str(root), "--generations", "2")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = make_campaign(tmp_path_factory.mktemp("promises") / "c", **SCENARIO)
    plumed = (root / "plumed.dat").read_text()
    (root / "plumed.dat").write_text(plumed.replace("PACE=50", "PACE=25"))
    log = root.parent / "run.log"
    seen: dict[str, Any] = {}
    timings = {}
    started = time.monotonic()
    for phase in (_phase_interrupted, _phase_finish, _phase_unsafe_edit, _phase_stops):
        t0 = time.monotonic()
        phase(root, seen) if phase is not _phase_interrupted else phase(root, seen, log)
        timings[phase.__name__] = round(time.monotonic() - t0, 1)
        if phase is _phase_finish:
            seen["seconds_to_finish"] = time.monotonic() - started
            # the finished generation-1 campaign, for the tests that read it and for the
            # corrupted-file tests (later steps change generation 1's walkers)
            shutil.copytree(root, root.parent / "finished", symlinks=True)
    t0 = time.monotonic()
    _phase_no_bias(root, seen)
    timings["_phase_no_bias"] = round(time.monotonic() - t0, 1)
    print("scenario phases (s):", timings)
    return root, seen


# --- 1. while it runs, and after a kill -9 ---------------------------------------------------


def test_a_second_run_is_refused_through_the_cli_while_one_runs(scenario) -> None:
    root, seen = scenario
    out = seen["second_run"]
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{root} is in use by process" in out.stderr and "Traceback" not in out.stderr
    assert seen["status_running"]["state"] == "running"
    assert seen["status_running"]["will_redo"] == {}  # nothing to redo while it runs


def test_status_after_a_kill_says_what_the_next_run_redoes(scenario) -> None:
    _, seen = scenario
    s = seen["status_killed"]
    assert s["state"] == "interrupted"
    # killed during generation 1's MD: the walkers started and unrecorded, model 1 not started
    assert s["will_redo"]["walker"] == seen["walkers_unrecorded"] >= 1, s["will_redo"]
    assert s["will_redo"]["train"] == 0
    assert s["last_progress"]["generation"] == 1 and s["last_progress"]["stage"] == "exploring"


# --- 2. finished with --generations 1 ----------------------------------------------------------


def test_generations_option_overrides_campaign_yaml(scenario) -> None:
    _, seen = scenario
    assert seen["finish"].returncode == 0, seen["finish"].stdout + seen["finish"].stderr
    s = seen["status_finished"]
    assert s["state"] == "finished" and s["generations_done"] == 2  # not campaign.yaml's 3 + 1
    assert s["last_progress"]["stop_reason"] == "all 1 generation(s) done"
    assert s["will_redo"] == {"single_point": 0, "walker": 0, "train": 0}


def test_status_wall_time_is_the_tasks_time(scenario) -> None:
    _, seen = scenario
    wall = seen["status_finished"]["wall_time_seconds"]
    # every stage ran and took time; none took longer than the two runs that made the campaign,
    # times the 2 walkers (or 2 single points) that ran at once
    assert set(wall) == {"md", "dft", "train"}
    assert all(v > 0 for v in wall.values()), wall
    assert all(v < 2 * seen["seconds_to_finish"] for v in wall.values()), wall


def test_scratch_training_starts_every_model_afresh(scenario) -> None:
    root = scenario[0].parent / "finished"
    for g in ("000", "001"):
        model = root / f"generations/{g}/model"
        metrics = json.loads((model / "model.json").read_text())["metrics"]
        assert metrics["config"]["init_from"] is None, g
        assert "ModelFromPackage" not in (model / "config.yaml").read_text(), g


def test_independent_walkers_feel_only_their_own_hills(scenario) -> None:
    root = scenario[0].parent / "finished"
    hills = {
        name: len(read_hills(root / "generations/001/hills" / name))
        for name in ("HILLS.0", "HILLS.1")
    }
    assert all(n >= 1 for n in hills.values()), hills
    both = read_hills(root / "generations/001/hills")
    for w in (0, 1):
        walker = root / f"generations/001/walkers/w{w}"
        plumed_in = next(walker.glob("plumed*.dat")).read_text()
        assert "WALKERS_N" not in plumed_in and f"HILLS.{w}" in plumed_in
        colvar = np.loadtxt(walker / "COLVAR", comments="#", ndmin=2)
        v, bias = colvar[-1, 1], colvar[-1, 2] * KJ_PER_MOL  # time, v, metad.bias (kJ/mol), …
        own = both.select(both.walkers == w)
        assert bias == pytest.approx(bias_from_hills(own, v)[0], rel=1e-4)
        # the other walker's hill would have changed it: the two differ measurably
        assert abs(bias_from_hills(both, v)[0] - bias) > 0.1 * bias


# --- 3. unsafe edit --------------------------------------------------------------------------


def test_an_unsafe_edit_is_refused_and_force_goes_on(scenario) -> None:
    root, seen = scenario
    out = seen["unsafe"]
    assert out.returncode == 1
    assert f"{root / 'campaign.yaml'}: unsafe change since the last run: plumed changed" in (
        out.stderr
    )
    assert "--force" in out.stderr and "Traceback" not in out.stderr
    forced = seen["forced"]
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "forced: plumed changed" in (root / ".hillwalker/run.log").read_text()
    assert seen["records_unchanged_by_force"]  # generation 0 found done, nothing relabeled


# --- 4. stopping rules -----------------------------------------------------------------------


def test_max_single_points_stops_before_the_next_generation(scenario) -> None:
    _, seen = scenario
    assert seen["budget"].returncode == 0, seen["budget"].stderr
    spent = seen["spent"]
    assert spent == 2 + 2  # generation 0's frames + one per walker
    assert seen["budget_run"]["stop_reason"] == f"single-point budget spent ({spent} ≥ {spent})"


def test_target_force_rmse_on_validation_stops_before_the_next_generation(scenario) -> None:
    _, seen = scenario
    assert seen["target"].returncode == 0, seen["target"].stderr
    reason = seen["target_run"]["stop_reason"]
    assert reason.startswith("validation force RMSE ") and reason.endswith("≤ target 1000000000.0")
    assert not seen["generation_2_after_stops"]
    assert seen["records_after_stops"] == seen["spent"]


def test_a_stop_rule_added_later_keeps_the_finished_generations_in_the_dataset(scenario) -> None:
    _, seen = scenario
    assert seen["dataset_after_stops"] == seen["spent"]  # all 4 single points were done


# --- 5. no bias ------------------------------------------------------------------------------


def test_bias_none_deposits_no_hills(scenario) -> None:
    root, seen = scenario
    out = seen["no_bias"]
    assert out.returncode == 0, out.stdout + out.stderr
    # generation 2's two walkers ran (generation 1's too, again: their inputs changed)
    assert {
        json.loads((root / ".hillwalker/tasks/walker" / r).read_text())["generation"]
        for r in records(root, "walker")
    } >= {1, 2}
    after = {p.name: p.read_bytes() for p in (root / "bias").glob("HILLS.*")}
    assert after == seen["bias_after_1"]
    assert not (root / "generations/002/hills").exists()
    for w in (0, 1):
        walker = root / f"generations/002/walkers/w{w}"
        assert "METAD" not in next(walker.glob("plumed*.dat")).read_text()


# --- corrupted files, on copies of the campaign after step 2 ---------------------------------


def _copy(scenario, tmp_path: Path) -> Path:
    root, _ = scenario
    copy = tmp_path / "c"
    shutil.copytree(root.parent / "finished", copy, symlinks=True)
    return copy


def _frames_equal(got: list, want: list) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a.positions, b.positions)
        assert labels(a)["energy"] == labels(b)["energy"]
        assert np.array_equal(labels(a)["forces"], labels(b)["forces"])


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damaged",
    ["dataset.extxyz", "generations/000/labeled.extxyz", "generations/001/labeled.extxyz"],
)
def test_a_truncated_dataset_or_labeled_file_is_rebuilt_from_the_records(
    scenario, tmp_path: Path, damaged: str
) -> None:
    """Both files are derived: each single point's record points at its own result file, so a run
    rebuilds them from those (never from the damaged file), and relabels nothing."""
    root = _copy(scenario, tmp_path)
    want = read_frames(root / "dataset.extxyz")
    want_labeled = read_frames(root / "generations/001/labeled.extxyz")
    sp_records = records(root, "single_point")
    _truncate(root / damaged)
    assert hw("status", str(root), "--json", timeout=120).returncode == 0
    out = hw("run", str(root), "--generations", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    _frames_equal(read_frames(root / "dataset.extxyz"), want)
    _frames_equal(read_frames(root / "generations/001/labeled.extxyz"), want_labeled)
    assert records(root, "single_point") == sp_records


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_record_whose_result_is_missing_or_truncated_is_named_with_the_way_out(
    scenario, tmp_path: Path, damage: str
) -> None:
    root = _copy(scenario, tmp_path)
    record = sorted((root / ".hillwalker/tasks/single_point").glob("*.json"))[0]
    result = root / json.loads(record.read_text())["result"]
    result.unlink() if damage == "missing" else _truncate(result)
    out = hw("run", str(root), "--generations", "1")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr
    assert str(record) in errors[0] and str(result) in errors[0]
    assert "delete the record" in errors[0].lower() and "run again" in errors[0]
