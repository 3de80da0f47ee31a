"""The whole loop on real components: CP2K xTB, the PLUMED kernel, NequIP, Parsl HTEX."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml

from hillwalker.campaign import CampaignError, goes_on
from hillwalker.engines.dataset import labels, largest_force, read_frames, write_frames
from hillwalker.engines.geometry import bond_change, bond_graph
from hillwalker.engines.plumed import bias_from_hills, read_hills
from hillwalker.execution import machine_cores
from hillwalker.material_templates import new_from_template
from hillwalker.runner import run_campaign
from hillwalker.state import reap_orphans
from hillwalker.status import campaign_status

HILLWALKER = str(Path(sys.executable).parent / "hillwalker")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

TINY = {
    "name": "tiny",
    "material": {
        "structure": "structure.cif",
        "level": "levels/xtb.inp",
        "plumed": "plumed.dat",
        "nequip": "nequip.yaml",
    },
    "generation0": {"frames": 4, "position_sigma": 0.03, "cell_strain": 0.02},
    "walkers": {
        "count": 2,
        "ensemble": "npt",
        "temperature": 300.0,
        "timestep": 0.5,
        "steps": 60,
        "bias": "shared",
    },
    "training": {
        "mode": "warm",
        "epochs": 4,
        "warm_epochs": 2,
        "validation_fraction": 0.25,
        "overrides": {"num_features": 8, "batch_size": 2},
    },
    "stop": {"generations": 2},
    "labeling": {"timeout": 600.0},
    "seed": 7,
}


def make_campaign(root: Path, **changes) -> Path:
    new_from_template(root, "mil53-al")
    config = json.loads(json.dumps(TINY))
    for section, values in changes.items():
        config.setdefault(section, {}).update(values)
    (root / "campaign.yaml").write_text(yaml.safe_dump(config))
    return root


def with_test_set(root: Path, name: str = "test.extxyz") -> Path:
    """Eight independent MIL-53 frames across np → lp at the campaign's xTB level."""
    frames = read_frames(Path(__file__).parents[1] / "data/mil53_xtb_frames.extxyz")
    write_frames(root / name, frames[::6])
    return root / name


def _training_threads(root: Path, seen: dict[str, str], stop: threading.Event) -> None:
    """OMP_NUM_THREADS of every nequip-train process of this campaign, read while it runs."""
    while not stop.is_set():
        for proc in Path("/proc").iterdir():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if "nequip-train" not in cmdline or str(root) not in cmdline:
                    continue
                env = dict(
                    item.split("=", 1)
                    for item in (proc / "environ").read_bytes().decode().split("\0")
                    if "=" in item
                )
            except (OSError, ValueError):
                continue
            generation = cmdline.split("/generations/")[1][:3]
            seen[generation] = env.get("OMP_NUM_THREADS", "unset")
        stop.wait(0.5)


def _walker_step(root: Path, g: int, i: int) -> int:
    """The last MD step walker i of generation g logged (0 before its first line)."""
    try:
        lines = (root / f"generations/{g:03d}/walkers/w{i}/walker.log").read_text().splitlines()
        return int([line for line in lines if line and not line.startswith("#")][-1].split()[0])
    except (OSError, IndexError, ValueError):
        return 0


def _mid_segment(root: Path, g: int, walkers: int, past: int) -> int | None:
    """A walker of generation g whose segment has passed ``past`` steps and is not recorded."""
    done = {r["walker"] for r in _walker_records(root) if r["generation"] == g}
    for i in range(walkers):
        if i not in done and _walker_step(root, g, i) >= past:
            return i
    return None


def _positions(path: Path) -> set[str]:
    """The frames of an extxyz file, each by its geometry's identity."""
    from hillwalker.engines.multilevel import frame_id

    return {frame_id(f) for f in read_frames(path)}


def _walker_records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (root / ".hillwalker/tasks/walker").glob("*.json")]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a whole 2-generation campaign; ~6 min on a quiet 2-core machine
def test_two_generations_end_to_end(tmp_path):
    # three generations allowed, but the coverage rule (any growth below 1e9 x the range counts
    # as none) stops the walk after generation 2: generation 2's walkers add to generation 1's.
    # Three walkers share one bias; a hill every 20 steps (PACE, here instead of the template's 50)
    root = make_campaign(
        tmp_path / "c",
        walkers={"count": 3},
        stop={"generations": 3, "coverage_generations": 1, "coverage_tolerance": 1e9},
        evaluation={"test_sets": {"np-lp": "test.extxyz"}},
        safety={"keep_bonds": True},
    )
    test_set = with_test_set(root)
    plumed = (root / "plumed.dat").read_text()
    (root / "plumed.dat").write_text(plumed.replace("PACE=50", "PACE=20"))
    threads: dict[str, str] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_training_threads, args=(root, threads, stop), daemon=True)
    watcher.start()
    try:
        # kill -9 while a walker of generation 1 is past its first hill (step 20) and its
        # segment not done: that hill must be rolled back and deposited once by the resumed run
        proc = subprocess.Popen(
            [HILLWALKER, "run", str(root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 900
        while (cut := _mid_segment(root, 1, 3, past=25)) is None:
            assert proc.poll() is None and time.monotonic() < deadline, "no generation-1 MD"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert len(read_hills(root / f"bias/HILLS.{cut}")) >= 1
        reap_orphans(root)  # the killed run's workers, as the next run would
        models = run_campaign(root)
    finally:
        stop.set()
        watcher.join()
    assert [m.directory.parent.name for m in models] == ["000", "001", "002"]
    # every training, also after the walkers of a generation ran on the same workers with one
    # thread each, gets all the local pool's cores (measured bug: it inherited 1)
    cores = str(machine_cores())
    assert threads == {"000": cores, "001": cores, "002": cores}

    # the dataset grows by the successful walker frames of each generation
    sizes = []
    for g in range(3):
        new = read_frames(root / f"generations/{g:03d}/labeled.extxyz")
        assert len(new) == (4 if g == 0 else 3)
        assert all(f.info["generation"] == g for f in new)
        sizes.append(sum(f.info["status"] == "done" for f in new))
    # every single point succeeds: walkers of 60 steps of 0.5 fs stay near the start, where xTB
    # converges (a failed walker frame here means a walker or labeling bug, not chemistry)
    assert sizes == [4, 3, 3], [f.info.get("failure") for f in read_frames(root / "failed.extxyz")]
    dataset = read_frames(root / "dataset.extxyz")
    assert len(dataset) == sum(sizes)
    assert [f.info["generation"] for f in dataset] == sorted(f.info["generation"] for f in dataset)
    # the validation set is fixed across generations (the training seed is not): each model
    # validates on the last one's validation frames and on none the last one trained on
    data = [root / f"generations/{g:03d}/model/data" for g in range(3)]
    for before, after in itertools.pairwise(data):
        val = _positions(after / "val.extxyz")
        assert _positions(before / "val.extxyz") <= val
        assert not (_positions(before / "train.extxyz") & val)

    # the bias is kept: generation 2 goes on from generation 1's hills
    h1 = read_hills(root / "generations/001/hills")
    h2 = read_hills(root / "generations/002/hills")
    assert 0 < len(h1.heights) < len(h2.heights)
    assert set(map(tuple, h1.centers.reshape(len(h1.heights), -1).round(8))) <= set(
        map(tuple, h2.centers.reshape(len(h2.heights), -1).round(8))
    )

    # safety.keep_bonds: each walker's MD was checked against the start structure's covalent
    # bonds, and every state a walker goes on from keeps them
    graph = bond_graph(ase.io.read(root / ".hillwalker/start.extxyz"))
    assert len(graph.bonds) == 34
    for g in (1, 2):
        for state in json.loads((root / f"generations/00{g}/walkers.json").read_text()).values():
            assert bond_change(ase.io.read(state, index=-1), graph) is None, (g, state)

    # every walker deposits into the one bias: no hill lost or duplicated by the kill. A
    # segment that ran to its end deposited at every step divisible by PACE (20) after its first
    # (steps count on across generations); the hills file of each walker holds exactly what its
    # recorded segments deposited, each hill once (a hill of the killed segment left in place
    # would be one too many, at a time seen twice)
    records = _walker_records(root)
    assert len(records) == 6
    for i in range(3):
        mine = [r for r in records if r["walker"] == i]
        for r in mine:
            if r["status"] == "done":
                steps = range(r["start_step"] + 1, r["end_step"] + 1)
                assert r["hills_added"] == sum(s % 20 == 0 for s in steps) > 0, r
        times = read_hills(root / f"bias/HILLS.{i}").times
        assert len(times) == sum(r["hills_added"] for r in mine) > 0
        assert len(np.unique(np.round(times, 9))) == len(times)
    # and feels the others': at its restart in generation 2, each walker's bias is at least the
    # sum of every walker's generation-1 hills at its start volume (more if a walker of its own
    # generation deposited before it started: two MD workers, three walkers), far more than its
    # own hills alone give, and at most the sum of every hill there is
    hills = read_hills(root / "generations/001/hills")
    final = read_hills(root / "bias")
    states = json.loads((root / "generations/001/walkers.json").read_text())
    for r in (r for r in records if r["generation"] == 2):
        start = ase.io.read(states[str(r["walker"])], index=-1)  # where generation 2 restarts
        volume = start.get_volume() / 1000  # nm³, PLUMED's VOLUME
        every = float(bias_from_hills(hills, volume)[0])
        alone = float(bias_from_hills(hills.select(hills.walkers == r["walker"]), volume)[0])
        most = float(bias_from_hills(final, volume)[0])
        assert every * (1 - 1e-4) <= r["bias_start"] <= most * (1 + 1e-4), (r, every, most)
        assert every > 1.5 * alone

    # every generation's model exists and evaluates
    for m in models:
        # training.compile auto: 3 walkers x 120 steps do not pay for compiling (the compiled
        # model is checked in tests/engines/test_nequip.py: MD, package vs compiled)
        assert m.compiled is None and m.package.is_file()
    out = subprocess.run(
        [HILLWALKER, "evaluate", str(models[-1].package), str(root / "dataset.extxyz"), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["n_frames"] == len(dataset)

    status = json.loads(
        subprocess.run(
            [HILLWALKER, "status", str(root), "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert status["generations_done"] == 3
    assert status["state"] == "finished"
    assert "CV coverage has not grown in 1 generation" in status["last_progress"]["stop_reason"]
    # every model was scored on the test set; the record equals `hillwalker evaluate` on it
    assert all(g["test_sets"]["np-lp"]["n_frames"] == 8 for g in status["generations"])
    scored = subprocess.run(
        [HILLWALKER, "evaluate", str(models[-1].package), str(test_set), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert scored.returncode == 0, scored.stderr
    want = json.loads(scored.stdout)
    got = status["generations"][-1]["test_sets"]["np-lp"]
    assert set(got) == set(want)
    for key in ("energy_rmse_mev_per_atom", "force_rmse_mev_per_ang", "stress_rmse_gpa"):
        assert got[key] == pytest.approx(want[key], rel=1e-6)
    # every walker generation's timings: the CPU time of each kind of task, measured in the
    # tasks (threads and the programs they waited for), and the cores' use over its wall time
    for g in (1, 2):
        timing = json.loads((root / f"generations/00{g}/timings.json").read_text())
        assert set(timing["cpu_seconds"]) == {"md", "dft", "train"}
        assert all(v > 0 for v in timing["cpu_seconds"].values()), timing
        assert timing["cpu_seconds"]["train"] >= 0.5 * timing["busy_seconds"]["train"], timing
        assert 0 < timing["core_busy_fraction"] <= 1.05, timing
    # and `status` shows them beside the validation errors, force | energy per generation
    human = subprocess.run(
        [HILLWALKER, "status", str(root)], capture_output=True, text=True, check=True,
        env={**os.environ, "COLUMNS": "240"},
    ).stdout  # fmt: skip
    assert "test np-lp" in human
    for g in status["generations"]:
        scores = g["test_sets"]["np-lp"]
        cell = f"{scores['force_rmse_mev_per_ang']:.1f} | {scores['energy_rmse_mev_per_atom']:.1f}"
        assert cell in human, human
    assert status["single_points"]["done"] == len(dataset)
    assert status["cv_range"]

    # run again: everything is found done, nothing is recomputed
    before = sorted(p.name for p in (root / ".hillwalker/tasks/single_point").glob("*.json"))
    seen = []
    run_campaign(root, on_progress=lambda p: seen.append(p.skipped))
    after = sorted(p.name for p in (root / ".hillwalker/tasks/single_point").glob("*.json"))
    assert before == after
    assert seen[-1] == 4 + 3 * 2 + 3 * 2 + 3  # single points + walkers + trainings

    # a safe change of the walkers (another temperature) runs generations 1 and 2 again: on the
    # bias each began with, not on top of the hills of the segments they replace (measured bug:
    # the live bias kept every old hill and each re-run walker added its own)
    old = {r["key"] for r in _walker_records(root)}
    config = yaml.safe_load((root / "campaign.yaml").read_text())
    config["walkers"]["temperature"] = 320.0
    (root / "campaign.yaml").write_text(yaml.safe_dump(config))
    run_campaign(root)
    new = [r for r in _walker_records(root) if r["key"] not in old]
    assert sorted((r["generation"], r["walker"]) for r in new) == [
        (g, i) for g in (1, 2) for i in range(3)
    ]
    for i in range(3):
        mine = [r["hills_added"] for r in new if r["walker"] == i]
        assert len(read_hills(root / f"bias/HILLS.{i}").times) == sum(mine) > 0, (i, mine)
    first = sum(r["hills_added"] for r in new if r["generation"] == 1)
    assert len(read_hills(root / "generations/001/hills").times) == first


def test_a_single_point_longer_than_the_block_is_refused_before_submitting(tmp_path):
    root = make_campaign(tmp_path / "c", labeling={"timeout": 1800.0})
    site = tmp_path / "short.yaml"
    site.write_text(
        yaml.safe_dump(
            {
                "name": "short",
                "tasks": {
                    "dft": {
                        "provider": "slurm",
                        "partition": "debug",
                        "walltime": "00:10:00",
                        "cores_per_node": 2,
                        "cores_per_task": 1,
                    },
                    "md": {"provider": "local"},
                    "train": {"provider": "local"},
                },
            }
        )
    )
    out = subprocess.run(
        [HILLWALKER, "run", str(root), "--site", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1
    assert "tasks.dft.walltime=00:10:00 (600 s)" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (root / ".hillwalker" / "tasks").exists()  # nothing was submitted


@pytest.mark.parametrize(
    "target, signum",
    [
        ("process", signal.SIGTERM),  # kill PID
        ("group", signal.SIGINT),  # Ctrl-C in a terminal: the whole foreground group
        ("group", signal.SIGTERM),  # kill -- -PGID, timeout(1), scancel of the job
    ],
)
def test_a_signal_stops_the_run_and_leaves_no_parsl_process(tmp_path, target, signum):
    """A group signal also kills Parsl's interchange: the clean-up must not wait for it."""
    from hillwalker.state import _mentions, _process_parents

    root = make_campaign(tmp_path / "c")
    proc = subprocess.Popen(
        [HILLWALKER, "run", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # as in a terminal: a shell's background job (pytest under CI may be one) inherits an
        # ignored SIGINT, which Python then keeps ignoring
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while not (root / ".hillwalker/tasks/single_point").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1.0)  # CP2K runs
    if target == "group":
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    try:
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 128 + signum, proc.stderr.read() if proc.stderr else ""
    parsl_dir = str(root / ".hillwalker" / "parsl")
    time.sleep(1)
    assert [p for p in _process_parents() if _mentions(p, parsl_dir)] == []
    assert not _cp2k_running_in(root)
    assert not (root / ".hillwalker/lock").exists()


def _cp2k_running_in(root: Path) -> bool:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if cwd.startswith(str(root)) and b"cp2k" in (proc / "cmdline").read_bytes():
            return True
    return False


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_campaign_stops_once_its_test_error_reaches_the_target(tmp_path):
    """Generation 0's model already meets a (generous) target on the test set: no walkers."""
    root = make_campaign(
        tmp_path / "c",
        training={"epochs": 2},
        stop={"generations": 2, "target_force_rmse": 1e6, "target_set": "indep"},
        evaluation={"test_sets": {"indep": "test.extxyz"}},
    )
    with_test_set(root)
    models = run_campaign(root)
    assert len(models) == 1 and not (root / "generations/001").exists()
    run = json.loads((root / ".hillwalker/run.json").read_text())
    force = run["stop_reason"].split("force RMSE ")[1].split(" meV")[0]
    assert run["stop_reason"] == f"test set indep force RMSE {force} meV/Å ≤ target 1000000.0"
    record = next((root / ".hillwalker/tasks/train").glob("*.json"))
    errors = json.loads(record.read_text())["test_sets"]["indep"]
    assert f"{errors['force_rmse_mev_per_ang']:.1f}" == force


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_frames_above_max_label_force_stay_in_the_dataset_but_out_of_training(tmp_path):
    """A walker where its model was badly wrong can bring back a torn geometry (MIL-53 at the
    volume walls: 230-250 eV/Å); such frames are labeled and kept, but not trained on."""
    root = make_campaign(
        tmp_path / "c", generation0={"frames": 6}, training={"epochs": 2}, stop={"generations": 0}
    )
    run_campaign(root)
    forces = sorted(largest_force(f) for f in read_frames(root / "dataset.extxyz"))
    assert len(forces) == 6 and forces[2] < forces[3]
    trained = read_frames(root / "generations/000/train.extxyz")
    assert sorted(largest_force(f) for f in trained) == forces  # the default keeps them all
    # the limit between the third and fourth largest force: a safe change, generation 0
    # trains again on the three frames below it
    config = yaml.safe_load((root / "campaign.yaml").read_text())
    config["training"]["max_label_force"] = (forces[2] + forces[3]) / 2
    (root / "campaign.yaml").write_text(yaml.safe_dump(config))
    run_campaign(root)
    assert len(read_frames(root / "dataset.extxyz")) == 6
    trained = read_frames(root / "generations/000/train.extxyz")
    assert sorted(largest_force(f) for f in trained) == forces[:3]
    records = [json.loads(p.read_text()) for p in (root / ".hillwalker/tasks/train").glob("*.json")]
    assert len(records) == 2 and all(r["status"] == "done" for r in records)
    (shown,) = campaign_status(root)["generations"]  # generation 0 once, its new model
    assert shown["single_points_done"] == 6
    assert shown["validation"]["n_train"] + shown["validation"]["n_val"] == 3
    log = (root / ".hillwalker/run.log").read_text()
    assert "generation 0: 3 frame(s) with a reference force above training.max_label_force" in log
    # a limit below every frame's force leaves nothing: refused, the key named
    config["training"]["max_label_force"] = forces[0] / 2
    (root / "campaign.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(CampaignError, match=r"training\.max_label_force: every one of the 6"):
        run_campaign(root)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_run_resumed_on_fewer_cores_keeps_the_models_trained_before(tmp_path):
    """Whether models are compiled depends on the cores the walkers share; a run resumed on a
    machine with other cores must not train a finished generation again (measured: a benchmark
    campaign resumed under taskset retrained generation 0, and its walkers went on from states
    and a bias six generations further on, with the new model)."""
    from hillwalker.config import load_campaign
    from hillwalker.settings import compile_models
    from hillwalker.sites import local_site

    # 3 walkers x 900 steps save ~69 s of MD on 1 core (compiled) but ~34 s on 2 (eager)
    root = make_campaign(
        tmp_path / "c",
        walkers={"count": 3, "steps": 900},
        training={"epochs": 2},
        stop={"generations": 0},
    )
    cfg = load_campaign(root)
    assert not compile_models(cfg, 2) and compile_models(cfg, 1)
    run_campaign(root, site=local_site(cores=2))
    model = root / "generations/000/model/model.nequip.zip"
    trained = model.stat().st_mtime_ns
    records = sorted((root / ".hillwalker/tasks/train").glob("*.json"))
    assert len(records) == 1
    (model_again,) = run_campaign(root, site=local_site(cores=1))
    assert sorted((root / ".hillwalker/tasks/train").glob("*.json")) == records
    assert model.stat().st_mtime_ns == trained
    assert model_again.package.resolve() == model.resolve() and not model_again.compiled


def test_a_walker_goes_on_only_from_a_frame_that_is_trained_on():
    """A walker's next segment starts where it ended only if it ended normally and its frame
    was labeled below training.max_label_force; a torn frame's state would blow the next
    model up at once (seen: three of four walkers, each reset to a frame labeled before)."""
    frames = read_frames(Path(__file__).parents[1] / "data/mil53_xtb_frames.extxyz")
    by_force = sorted(frames, key=largest_force)
    calm, strong = by_force[0], by_force[-1]
    limit = (largest_force(calm) + largest_force(strong)) / 2
    assert goes_on("done", [calm], limit) and goes_on("done", [strong], None)
    assert not goes_on("done", [strong], limit)
    assert not goes_on("done", [calm, strong], limit)  # every level's label counts
    assert not goes_on("blown_up", [calm], limit)
    failed = calm.copy()
    failed.info = {**calm.info, "status": "failed"}
    assert not goes_on("done", [failed], None)


def test_a_walker_that_cannot_take_a_step_from_its_start_goes_back_to_the_structure():
    """Seen (HEIGHT 10, seed 2): a walker's labeled end state had reference forces of 29 eV/Å;
    the next models learned them, so every later segment blew up at its first step
    (safety.max_force 25) and went back to that same start: ten generations, ten frames
    labeled before. Such a walker now goes back to the material's structure, and a frame whose
    reference forces exceed the walkers' check is not gone on from."""
    from hillwalker.campaign import next_start
    from hillwalker.engines.walkers import WalkerSegment

    frames = read_frames(Path(__file__).parents[1] / "data/mil53_xtb_frames.extxyz")
    calm = min(frames, key=largest_force)
    start, structure, state = Path("start.traj"), Path("start.extxyz"), Path("state.traj")

    def segment(status: str, steps_done: int) -> WalkerSegment:
        return WalkerSegment(
            walker=0, generation=4, status=status, steps_done=steps_done, start_step=2000,
            end_step=2000 + steps_done, final=calm, state_path=state, colvar=Path("COLVAR"),
            hills=[], log=Path("walker.log"),
        )  # fmt: skip

    force = largest_force(calm)
    assert next_start(segment("done", 1000), [calm], 25.0, start, structure) == state
    # the walkers' check is lower than the frame's force: not a state to go on from
    assert next_start(segment("done", 1000), [calm], force / 2, start, structure) == start
    assert next_start(segment("blown_up", 40), [calm], 25.0, start, structure) == start
    assert next_start(segment("blown_up", 0), [calm], 25.0, start, structure) == structure


def test_safety_blow_up_label_last_safe_labels_the_last_intact_state_and_goes_on_from_it():
    """safety.blow_up_label: a segment that blew up sends the configuration where it failed
    (``failed``, the default) or the last state in it that passed every check (``last_safe``),
    and with the latter the walker goes on from that labeled state; a blow-up before the first
    check has no state of its own (its last safe state is its start, labeled before)."""
    from hillwalker.campaign import _to_label, next_start
    from hillwalker.engines.walkers import WalkerSegment

    frames = read_frames(Path(__file__).parents[1] / "data/mil53_xtb_frames.extxyz")
    safe, torn = frames[0], frames[1]
    start, structure, state = Path("start.traj"), Path("start.extxyz"), Path("state.traj")

    def blown_up(reset_to_step: int) -> WalkerSegment:
        return WalkerSegment(
            walker=0, generation=3, status="blown_up", steps_done=240, start_step=2490,
            end_step=2730, final=safe, failed=torn, state_path=state, colvar=Path("COLVAR"),
            hills=[], log=Path("walker.log"),
            events=[{"kind": "blow_up", "step": 2730, "reset_to_step": reset_to_step}],
        )  # fmt: skip

    within, at_start = blown_up(2720), blown_up(2490)
    assert _to_label(within) is torn and _to_label(within, "failed") is torn
    assert _to_label(within, "last_safe") is safe
    assert _to_label(at_start, "last_safe") is torn
    assert next_start(within, [safe], 25.0, start, structure) == start
    assert next_start(within, [safe], 25.0, start, structure, labeled_final=True) == state
    # a labeled last safe state with forces above the walkers' check is not gone on from
    limit = largest_force(safe) / 2
    assert next_start(within, [safe], limit, start, structure, labeled_final=True) == start


@pytest.mark.slow
def test_a_frame_labeled_before_is_in_the_dataset_once(tmp_path):
    """A walker that blows up at its very start sends the frame it started from; from the
    second such generation on that frame was labeled before: found done, not added again."""
    root = make_campaign(
        tmp_path / "c",
        walkers={"count": 1},
        safety={"max_force": 0.001},  # every state fails the check: a blow-up at the start
        stop={"generations": 2},
    )
    run_campaign(root)
    records = list((root / ".hillwalker/tasks/single_point").glob("*.json"))
    dataset = read_frames(root / "dataset.extxyz")
    assert len(records) == 5 and len(dataset) == 5  # 4 perturbed + the start structure
    assert len({f.info["task_id"] for f in dataset}) == 5
    (again,) = read_frames(root / "generations/002/labeled.extxyz")
    (first,) = read_frames(root / "generations/001/labeled.extxyz")
    assert again.info["task_id"] == first.info["task_id"]
    assert len(read_frames(root / "generations/002/train.extxyz")) == 5
    log = (root / ".hillwalker/run.log").read_text()
    assert "generation 2: 0 new frames (1 more labeled before, not added again)" in log


@pytest.mark.slow
def test_a_mil53_ga_campaign_starts_from_the_mil53_al_model(tmp_path, mil53_model):
    # generation 0 fine-tunes the session's MIL-53(Al) model (36 xTB frames), its Al weights
    # copied to Ga (training.species_map), on 4 perturbed MIL-53(Ga) frames; then one
    # generation of walkers runs on it end to end
    root = make_campaign(
        tmp_path / "c",
        training={"init": str(mil53_model.directory), "species_map": {"Ga": "Al"}},
        stop={"generations": 1},
    )
    shutil.copy(EXAMPLES / "mil53-ga-from-al/structure.cif", root / "structure.cif")
    models = run_campaign(root)
    transferred = root / "generations/000/model/transferred.nequip.zip"
    record = json.loads(transferred.with_name("transferred.transfer.json").read_text())
    assert record["species_map"] == {"Ga": "Al"} and "Al" not in record["type_names"]
    assert models[0].metrics["config"]["init_from"] == str(transferred)
    assert models[0].metrics["epochs_run"] == TINY["training"]["warm_epochs"]
    assert models[0].metrics["species"] == record["type_names"]

    # scored on generation 1's walker frames, which generation 0 never saw, against what a
    # model that learned nothing scores (zero forces)
    new = [f for f in read_frames(root / "dataset.extxyz") if f.info.get("generation") == 1]
    assert new and all("Ga" in f.get_chemical_symbols() for f in new)
    forces = np.concatenate([labels(f)["forces"] for f in new])
    zero = float(np.sqrt(np.mean(forces**2))) * 1000
    fine_tuned = evaluate_forces(models[0].package, new)
    print(f"generation-0 force RMSE on generation-1 frames: {fine_tuned:.0f} meV/Å, "
          f"zero forces: {zero:.0f} meV/Å")  # fmt: skip
    assert fine_tuned < 0.5 * zero

    # naming the same model by its package is no change; another start model after generation
    # 0 trained from the first is an unsafe edit, refused before anything runs
    cfg = yaml.safe_load((root / "campaign.yaml").read_text())
    cfg["training"]["init"] = str(mil53_model.package)
    (root / "campaign.yaml").write_text(yaml.safe_dump(cfg))
    run_campaign(root)
    cfg["training"]["species_map"] = {"Ga": "O"}
    (root / "campaign.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CampaignError, match="init changed: the model generation 0 started from"):
        run_campaign(root)


def evaluate_forces(package: Path, frames) -> float:
    from hillwalker.engines.nequip.deploy import evaluate

    return float(evaluate(package, frames, device="cpu", threads=1)["force_rmse_mev_per_ang"])


def test_training_init_is_checked_before_anything_runs(tmp_path, mil53_model):
    from hillwalker.validate import validate_campaign

    root = make_campaign(tmp_path / "c", training={"init": "models/none.nequip.zip"})
    problems = validate_campaign(root).problems
    assert any("training.init" in p and "none.nequip.zip" in p for p in problems), problems

    # the alanine dipeptide has nitrogen; the MIL-53 model has no type for it
    ala = tmp_path / "ala"
    new_from_template(ala, "alanine-dipeptide")
    cfg = yaml.safe_load((ala / "campaign.yaml").read_text())
    cfg.setdefault("training", {})["init"] = str(mil53_model.directory)
    (ala / "campaign.yaml").write_text(yaml.safe_dump(cfg))
    problems = validate_campaign(ala).problems
    assert any("training.init" in p and "no type for N" in p for p in problems), problems

    # a species map onto an element the model lacks; without training.init
    cfg["training"]["species_map"] = {"N": "Si"}
    (ala / "campaign.yaml").write_text(yaml.safe_dump(cfg))
    problems = validate_campaign(ala).problems
    assert any("training.species_map: N: Si is not a type of" in p for p in problems), problems
    del cfg["training"]["init"]
    (ala / "campaign.yaml").write_text(yaml.safe_dump(cfg))
    problems = validate_campaign(ala).problems
    assert any("training.species_map" in p and "training.init" in p for p in problems), problems


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_walkers_copies_label_perturbed_copies_of_each_walker_frame_the_same_on_a_rerun(tmp_path):
    """walkers.copies: beside each walker's frame, that many perturbed copies of it (generation
    0's σ and strain) are labeled and trained on; a generation run again makes the same copies,
    so it finds their single points done instead of labeling new ones."""
    root = make_campaign(
        tmp_path / "c", walkers={"copies": 2}, training={"epochs": 2}, stop={"generations": 1}
    )
    run_campaign(root)
    new = read_frames(root / "generations/001/labeled.extxyz")
    walkers = {f.info["walker"]: f for f in new if f.info.get("walker") is not None}
    copies = [f for f in new if "copy_of_walker" in f.info]
    assert sorted(walkers) == [0, 1] and len(copies) == 4 and len(new) == 6
    assert all(f.info["status"] == "done" for f in new)
    for copy in copies:
        frame = walkers[copy.info["copy_of_walker"]]
        assert copy.info.get("walker") is None and copy.info["generation"] == 1
        # undo the strain: what is left is the rattle, σ 0.03 Å per component
        strain = np.linalg.solve(frame.cell.array, copy.cell.array) - np.eye(3)
        assert 0 < np.abs(strain).max() <= 0.02 + 1e-9
        strained = frame.get_scaled_positions(wrap=False) @ copy.cell.array
        rattle = copy.positions - strained
        assert 0.02 < np.sqrt(np.mean(rattle**2)) < 0.04
    assert len(read_frames(root / "dataset.extxyz")) == 10
    assert len(read_frames(root / "generations/001/train.extxyz")) == 10

    # generation 1 run again (its model record gone): the same walker segments, the same
    # copies, every single point found done
    points = len(list((root / ".hillwalker/tasks/single_point").glob("*.json")))
    for path in (root / ".hillwalker/tasks/train").glob("*.json"):
        if json.loads(path.read_text()).get("generation") == 1:
            path.unlink()
    run_campaign(root)
    assert len(list((root / ".hillwalker/tasks/single_point").glob("*.json"))) == points == 10
    log = (root / ".hillwalker/run.log").read_text()
    assert log.count("generation 1: 6 new frames, dataset 10 frames") == 2  # it did run again
    again = read_frames(root / "generations/001/labeled.extxyz")
    assert [f.info["task_id"] for f in again] == [f.info["task_id"] for f in new]
