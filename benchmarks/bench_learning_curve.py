"""Learning curves on an independent MIL-53(Al) test set: error against single points spent and
against wall time, for several ways of choosing the frames, side by side at equal budget.

    .venv/bin/python benchmarks/bench_learning_curve.py [--work DIR] [--budgets 36,72,150]
        [--methods shared,independent,none,random,oracle] [--seeds 0,1,2] [--quick]

Methods (all at the main job's level, GFN1-xTB in CP2K, and its NequIP template):
- ``shared`` / ``independent`` / ``none``: the main job (examples/mil53-xtb: 24 perturbed frames,
  then 4 NPT walkers × 1000 steps a generation) with the walkers' bias shared (the paper),
  one bias per walker, or no bias (plain NPT MD); run until the largest budget is spent;
- ``random``: N perturbations of the start structure only, labeled and trained once
  (``--random-epochs``) from scratch, for each budget N;
- ``oracle``: the same model trained on N frames drawn from the test set's own distribution
  (a second pool made like the test set with other seeds, grown by whole draws of 48 frames);
- ``shared+scratch`` (any walker method + ``+scratch``): that campaign's first N labeled frames
  trained once from scratch like ``random``: separates what the loop samples from how it trains;
- ``shared+jitter`` (any walker method + ``+jitter``): the same N single points, but every other
  walker frame is replaced by a perturbed copy (generation 0's σ and strain) of the walker frame
  before it, labeled at the level; trained from scratch like ``+scratch``, its counterpart at equal
  budget: do strained copies of the walkers' configurations buy what the walkers miss?
- ``shared+noblowups`` (any walker method + ``+noblowups``): ``+scratch`` without the frames of
  the walker segments that blew up (the configuration where the model failed, which the campaign
  labels): what those single points add to, or take from, the same training.

The test set (tests/data/mil53_xtb_frames.extxyz, 48 frames, made by
tests/data/make_mil53_frames.py) is never trained on. It is scored as a whole and in bins:
``near_eq`` (perturbed relaxed narrow pore, σ ≤ 0.05 Å: near equilibrium), ``np_lp`` (the
np → lp path) and ``lp`` (perturbed relaxed large pore); beside it the thermal set
(tests/data/mil53_xtb_thermal_frames.extxyz: 400 K MD on the reference itself, see
``bench_thermal_set.py``) by region, ``thermal_np``, ``thermal_path``, ``thermal_lp``. The walker
campaigns score every generation's model on each bin inside the loop (``evaluation.test_sets``).

Seeds (``--seeds``): each method runs once per seed — the campaign's ``seed`` (its perturbations,
walker velocities, training split) or, for the oracle and ``+scratch``, the training's seed —
seed 0 in ``--work`` itself, seed S in ``--work/seed-S``; the JSON's ``summary`` gives the mean,
min and max over the seeds of each method's errors at each budget.

Diagnostics (``diagnostics_at_largest_budget`` in the JSON, ``learning_curve_diagnostics.py``):
per seed and method, the cell volumes of the frames it trained on by region, and its model's
energy errors that frame RMSEs hide: the offset per bin, the error of the lp − np energy
difference and of the shape of E(V) along the np → lp path.

``--train-override KEY=VALUE`` (repeatable) sets a ``training.overrides`` entry for every method
(e.g. ``energy_weight=100``); ``--set SECTION.KEY=VALUE`` (repeatable) a campaign.yaml setting
(e.g. ``generation0.frames=12``: more of the budget for the walkers); the JSON names both. Give
such a run its own ``--work``.

Resumable: every campaign resumes where it stopped, the oracle's labels and models are kept in
``--work``; a rerun only computes what is missing. Prints one JSON object whatever it shows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from learning_curve_diagnostics import diagnose, trained_on

ROOT = Path(__file__).resolve().parents[1]
TEST_SET = ROOT / "tests" / "data" / "mil53_xtb_frames.extxyz"
WALKER_METHODS = ("shared", "independent", "none")
THERMAL_SET = ROOT / "tests" / "data" / "mil53_xtb_thermal_frames.extxyz"
BINS = ("all", "near_eq", "np_lp", "lp", "thermal_np", "thermal_path", "thermal_lp")
METRICS = ("force_rmse_mev_per_ang", "energy_rmse_mev_per_atom", "stress_rmse_gpa")
#: torch threads of the from-scratch trainings (oracle, +scratch); None: every core (--threads)
TRAIN_THREADS: int | None = None


def test_bins(work: Path) -> dict[str, Path]:
    """The test set and its bins as files in ``work`` (made once)."""
    from hillwalker.engines.dataset import read_frames, write_frames

    frames = read_frames(TEST_SET)
    groups = {
        "all": frames,
        "near_eq": [
            f
            for f in frames
            if f.info.get("source") == "np-relaxed" and float(f.info["perturb_sigma"]) <= 0.05
        ],
        "np_lp": [f for f in frames if str(f.info.get("source", "")).startswith("np-lp-path")],
        "lp": [f for f in frames if f.info.get("source") == "lp-relaxed"],
    }
    # the thermal set (400 K MD on the reference at fixed cells; bench_thermal_set.py) by region
    thermal = read_frames(THERMAL_SET)
    groups["thermal_np"] = [f for f in thermal if float(f.info["path_t"]) == 0.0]
    groups["thermal_path"] = [f for f in thermal if 0.0 < float(f.info["path_t"]) < 1.0]
    groups["thermal_lp"] = [f for f in thermal if float(f.info["path_t"]) == 1.0]
    paths = {}
    for name, group in groups.items():
        paths[name] = work / "test-set" / f"{name}.extxyz"
        if not paths[name].exists():
            write_frames(paths[name], group)
    return paths


def base_config(quick: bool) -> dict[str, Any]:
    config = yaml.safe_load((ROOT / "examples" / "mil53-xtb" / "campaign.yaml").read_text())
    config["material"] = {
        "structure": "structure.cif",
        "level": "levels/xtb.inp",
        "plumed": "plumed.dat",
        "nequip": "nequip.yaml",
    }
    if quick:  # the whole path in minutes: tiny numbers everywhere
        config["generation0"]["frames"] = 4
        config["walkers"].update(count=2, steps=100)
        config["training"].update(
            epochs=6, warm_epochs=3, overrides={"num_features": 8, "batch_size": 2}
        )
    return config


def make_campaign(root: Path, config: dict[str, Any], bins: dict[str, Path]) -> Path:
    from hillwalker.material_templates import new_from_template

    if not (root / "campaign.yaml").exists():
        new_from_template(root, "mil53-al")
    config = json.loads(json.dumps(config))
    config["evaluation"] = {"test_sets": {}}
    for name, path in bins.items():  # copied into the campaign directory: it is self-contained
        target = root / "test-set" / path.name
        target.parent.mkdir(exist_ok=True)
        if not target.exists():
            target.write_bytes(path.read_bytes())
        config["evaluation"]["test_sets"][name] = f"test-set/{path.name}"
    (root / "campaign.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def campaign_curve(root: Path) -> list[dict[str, Any]]:
    """(single points spent, wall time, test errors) after each generation of a campaign."""
    from hillwalker.status import campaign_status

    status = campaign_status(root)
    points, spent, wall = [], 0, 0.0
    for g in status["generations"]:
        spent += g["single_points_done"] + g["single_points_failed"]
        timings = root / "generations" / f"{g['generation']:03d}" / "timings.json"
        if timings.exists():
            wall += json.loads(timings.read_text())["wall_seconds"]
        points.append(
            {
                "generation": g["generation"],
                "single_points": spent,
                "wall_s": round(wall, 1),
                "errors": {b: _short(g["test_sets"].get(b)) for b in BINS},
            }
        )
    return points


def run_walker_method(
    work: Path, method: str, config: dict[str, Any], budget: int, bins: dict[str, Path]
) -> list[dict[str, Any]]:
    from hillwalker.runner import run_campaign

    config = json.loads(json.dumps(config))
    config["walkers"]["bias"] = method
    per_generation = config["walkers"]["count"] * (1 + config["walkers"].get("copies", 0))
    config["stop"] = {
        "generations": max(1, -(-(budget - config["generation0"]["frames"]) // per_generation)),
        "max_single_points": budget,
    }
    root = make_campaign(work / method, config, bins)
    run_campaign(root)
    return campaign_curve(root)


def run_random(
    work: Path, config: dict[str, Any], budgets: list[int], epochs: int, bins: dict[str, Path]
) -> list[dict[str, Any]]:
    from hillwalker.runner import run_campaign

    points = []
    for n in budgets:
        c = json.loads(json.dumps(config))
        c["generation0"]["frames"] = n
        c["training"]["epochs"] = epochs
        c["stop"] = {"generations": 0}
        root = make_campaign(work / f"random-{n}", c, bins)
        run_campaign(root)
        points.append(campaign_curve(root)[-1])
    return points


def run_oracle(
    work: Path, config: dict[str, Any], budgets: list[int], epochs: int, bins: dict[str, Path]
) -> list[dict[str, Any]]:
    """Train on N frames from a second pool drawn like the test set (other seed)."""
    pool = oracle_pool(work, max(budgets))
    return [train_and_score(work / "oracle", n, pool[:n], config, epochs, bins) for n in budgets]


def campaign_frames(work: Path, method: str) -> list[Any]:
    """The labeled frames of the walker campaign ``method`` (``shared+scratch``: ``shared``)
    builds on, in loop order (generation by generation), failed single points left out."""
    from hillwalker.engines.dataset import read_frames

    source = work / method.split("+")[0] / "dataset.extxyz"
    if not source.is_file():
        raise SystemExit(f"{method}: run {method.split('+')[0]} first ({source} is missing)")
    return [f for f in read_frames(source) if f.info.get("status") == "done"]


def run_scratch(
    work: Path,
    method: str,
    config: dict[str, Any],
    budgets: list[int],
    epochs: int,
    bins: dict[str, Path],
) -> list[dict[str, Any]]:
    """``<walker method>+scratch``: the frames that walker campaign labeled up to each budget
    (in the order it labeled them), trained once from scratch like ``random``: tells whether
    the loop's warm-started training, not its frames, is what holds its error up."""
    frames = campaign_frames(work, method)
    # frames above training.max_label_force were not trained on by the campaign: not here either
    limit = config["training"].get("max_label_force")
    blown = blown_up(work / method.split("+")[0]) if method.endswith("+noblowups") else set()
    return [
        train_and_score(
            work / method,
            n,
            trained_on([f for f in frames[:n] if _segment(f) not in blown], limit),
            config,
            epochs,
            bins,
        )
        for n in budgets
        if n <= len(frames)
    ]


def blown_up(root: Path) -> set[tuple[int, int]]:
    """(generation, walker) of every walker segment of the campaign ``root`` that blew up."""
    return {
        (int(r["generation"]), int(r["walker"]))
        for r in (json.loads(p.read_text()) for p in root.glob(".hillwalker/tasks/walker/*.json"))
        if r.get("status") == "blown_up"
    }


def _segment(frame: Any) -> tuple[int, int] | None:
    """The (generation, walker) whose final frame this is (None: not a walker frame)."""
    if frame.info.get("walker") is None:
        return None
    return int(frame.info["generation"]), int(frame.info["walker"])


def run_jitter(
    work: Path,
    method: str,
    config: dict[str, Any],
    budgets: list[int],
    epochs: int,
    bins: dict[str, Path],
) -> list[dict[str, Any]]:
    """``<walker method>+jitter``: that campaign's first N labeled frames with generation 0 as it
    is and, of its walker frames, every other one replaced by a perturbed copy of the one before
    (in the order labeled: 2 of each generation's 4 walkers keep their frame, each gives a
    copy); each copy labeled once and kept in ``<work>/<method>/copies.extxyz`` (a rerun or a
    larger budget reuses it, failed labels included); trained from scratch."""
    from hillwalker.engines.cp2k import Level, single_point
    from hillwalker.engines.dataset import append_frames, read_frames
    from hillwalker.engines.perturb import perturb

    walker_method = method.split("+")[0]
    frames = campaign_frames(work, method)
    level = Level.from_file(work / walker_method / config["material"]["level"])
    g0 = config["generation0"]
    limit = config["training"].get("max_label_force")
    store = work / method / "copies.extxyz"
    copies = {f.info["task_id"]: f for f in (read_frames(store) if store.is_file() else [])}

    def copy_of(k: int) -> Any:
        """The labeled perturbed copy of walker frame k − 1 (labeled now if not yet)."""
        if f"jitter-{k}" not in copies:
            kept = frames[k - 1]
            (copy,) = perturb(
                kept, 1, position_sigma=g0["position_sigma"], strain=g0["cell_strain"],
                seed=1000 * int(config.get("seed", 0)) + k,
            )  # fmt: skip
            result = single_point(copy, level, work / method / "labels" / f"{k:03d}", timeout=600)
            atoms = result.to_atoms(copy, level="xtb", generation=kept.info.get("generation", 0),
                                    task_id=f"jitter-{k}")  # fmt: skip
            append_frames(store, [atoms])
            copies[f"jitter-{k}"] = atoms
            if result.status != "done":
                print(f"{method}: copy of frame {k} failed to label, left out", file=sys.stderr)
        return copies[f"jitter-{k}"]

    points = []
    for n in (b for b in budgets if b <= len(frames)):
        mixed = [
            frame if k < g0["frames"] or (k - g0["frames"]) % 2 == 0 else copy_of(k)
            for k, frame in enumerate(frames[:n])
        ]
        labeled = [f for f in mixed if f.info.get("status") == "done"]
        points.append(
            train_and_score(work / method, n, trained_on(labeled, limit), config, epochs, bins)
        )
    return points


def train_and_score(
    where: Path,
    n: int,
    frames: list[Any],
    config: dict[str, Any],
    epochs: int,
    bins: dict[str, Path],
) -> dict[str, Any]:
    """One model from scratch on ``frames`` (the main job's model settings), scored on the bins;
    kept in ``where/model-<n>`` (a rerun resumes or reuses it)."""
    from hillwalker.engines.dataset import read_frames, write_frames
    from hillwalker.engines.nequip import TrainSettings, evaluate, train

    template = ROOT / "templates" / "mil53-al" / "nequip.yaml"
    overrides = config["training"].get("overrides", {})
    data = where / f"train-{n}.extxyz"
    write_frames(data, frames)
    started = time.perf_counter()
    settings = TrainSettings.from_template(
        template,
        epochs=epochs,
        validation_fraction=0.15,
        seed=n + 1000 * int(config.get("seed", 0)),
        **overrides,
    )
    model = train(
        data, where / f"model-{n}", template=template, settings=settings, threads=TRAIN_THREADS
    )
    errors = {
        b: _short(evaluate(model.compiled or model.package, read_frames(path)))
        for b, path in bins.items()
    }
    return {"single_points": n, "wall_s": round(time.perf_counter() - started, 1), "errors": errors}


def oracle_pool(work: Path, n: int) -> list[Any]:
    """``n`` labeled frames drawn like the test set with other seeds (labeled once, kept).

    The test set's recipe gives 48 frames per draw; the pool grows by whole draws (seeds
    ``SEED + 7919 k``, k = 1, 2, ...), each shuffled, so that its first N frames cover np, the
    path and lp for any N, and a larger budget keeps the frames a smaller one trained on."""
    from hillwalker.engines.cp2k import Level, single_point
    from hillwalker.engines.dataset import append_frames, read_frames

    path = work / "oracle" / "pool.extxyz"
    pool = read_frames(path) if path.exists() else []
    sys.path.insert(0, str(ROOT / "tests" / "data"))
    import make_mil53_frames as maker  # the test set's own recipe

    level = Level.from_file(maker.LEVEL)
    draws = max((int(f.info.get("pool_draw", 1)) for f in pool), default=0)
    while len(pool) < n:
        draws += 1
        frames = maker.draw_frames(seed=maker.SEED + 7919 * draws)
        labels = work / "oracle" / "labels" / ("" if draws == 1 else f"draw-{draws}")
        labeled = []
        for i, frame in enumerate(frames):
            result = single_point(frame, level, labels / f"{i:03d}", timeout=300)
            if result.status == "done":
                atoms = result.to_atoms(frame, level="xtb", generation=0, task_id=i)
                atoms.info["pool_draw"] = draws
                labeled.append(atoms)
        order = np.random.default_rng(draws - 1).permutation(len(labeled))
        append_frames(path, [labeled[i] for i in order])
        pool = read_frames(path)
        print(f"oracle pool: draw {draws} labeled, {len(pool)} frames", file=sys.stderr)
    return pool[:n]


def _short(errors: dict[str, Any] | None) -> dict[str, Any] | None:
    if errors is None:
        return None
    return {k: (round(errors[k], 2) if errors.get(k) is not None else None) for k in METRICS} | {
        "n_frames": errors.get("n_frames")
    }


def at_budget(points: list[dict[str, Any]], budget: int) -> dict[str, Any] | None:
    """The last point whose single points do not exceed ``budget``."""
    within = [p for p in points if p["single_points"] <= budget]
    return within[-1] if within else None


def summary(
    by_seed: dict[int, dict[str, list[dict[str, Any]]]], methods: list[str], budgets: list[int]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per budget, method and bin: mean, min and max over the seeds of the force (meV/Å) and
    energy (meV/atom) RMSE at that budget."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for budget in budgets:
        out[str(budget)] = {}
        for method in methods:
            points = [at_budget(c.get(method, []), budget) for c in by_seed.values()]
            got = [p for p in points if p is not None]
            row: dict[str, Any] = {"seeds": len(got)}
            for b in BINS:
                for metric, short in (("force_rmse_mev_per_ang", "force"),
                                      ("energy_rmse_mev_per_atom", "energy")):  # fmt: skip
                    values = [
                        p["errors"][b][metric]
                        for p in got
                        if p["errors"].get(b) and p["errors"][b].get(metric) is not None
                    ]
                    if values:
                        row[f"{b}_{short}"] = {
                            "mean": round(float(np.mean(values)), 1),
                            "min": round(min(values), 1),
                            "max": round(max(values), 1),
                        }
            out[str(budget)][method] = row
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "learning-curve")
    parser.add_argument("--budgets", default="36,72,150")
    parser.add_argument("--methods", default="shared,independent,none,random,oracle")
    parser.add_argument("--random-epochs", type=int, default=330)
    parser.add_argument("--seeds", default="0", help="comma-separated: each method once per seed")
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the path")
    parser.add_argument(
        "--train-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a training.overrides entry for every method (e.g. energy_weight=100); use its own --work",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a campaign.yaml setting for the campaigns it runs (e.g. generation0.frames=12, "
        "walkers.steps=2000); use its own --work",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads of the oracle's and +scratch trainings (default: every core; on "
        "cores other work keeps busy, 1: two spinning threads ran epochs many times slower)",
    )
    args = parser.parse_args()
    global TRAIN_THREADS
    TRAIN_THREADS = args.threads
    budgets = sorted(int(b) for b in args.budgets.split(","))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    for method in methods:
        known = method in (*WALKER_METHODS, "random", "oracle") or (
            method.endswith(("+scratch", "+jitter", "+noblowups"))
            and method.split("+")[0] in WALKER_METHODS
        )
        if not known:
            parser.error(f"unknown method {method!r}")

    def key_value(flag: str, item: str, form: str) -> tuple[str, Any]:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"{flag} {item!r}: expected {form}")
        return key.strip(), yaml.safe_load(value)

    from hillwalker.config import Campaign

    overrides = dict(key_value("--train-override", i, "KEY=VALUE") for i in args.train_override)
    settings: dict[str, dict[str, Any]] = {}
    sections = base_config(args.quick)
    for item in args.set:
        key, value = key_value("--set", item, "SECTION.KEY=VALUE")
        section, _, name = key.partition(".")
        if not name:
            parser.error(f"--set {item!r}: expected SECTION.KEY=VALUE")
        if section not in Campaign.model_fields or not isinstance(sections.get(section, {}), dict):
            parser.error(f"--set {item!r}: no section {section!r} in campaign.yaml")
        settings.setdefault(section, {})[name] = value
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    from hillwalker.engines.dataset import read_frames

    bins = test_bins(work)
    epochs = 6 if args.quick else args.random_epochs
    by_seed: dict[int, dict[str, list[dict[str, Any]]]] = {}
    seconds: dict[str, float] = {}
    for seed in seeds:
        config = base_config(args.quick) | {"seed": seed}
        config["training"].setdefault("overrides", {}).update(overrides)
        for section, values in settings.items():
            config.setdefault(section, {}).update(values)
        where = work if seed == 0 else work / f"seed-{seed}"
        where.mkdir(exist_ok=True)
        curves = by_seed[seed] = {}
        for method in methods:
            started = time.perf_counter()
            if method in WALKER_METHODS:
                curves[method] = run_walker_method(where, method, config, max(budgets), bins)
            elif method == "random":
                curves[method] = run_random(where, config, budgets, epochs, bins)
            elif method == "oracle":
                curves[method] = run_oracle(where, config, budgets, epochs, bins)
            elif method.endswith("+jitter"):
                curves[method] = run_jitter(where, method, config, budgets, epochs, bins)
            else:
                curves[method] = run_scratch(where, method, config, budgets, epochs, bins)
            seconds[f"{method} seed {seed}"] = round(time.perf_counter() - started, 1)
    curves = by_seed[seeds[0]]
    diagnostics = {
        str(seed): {
            m: diagnose(work if seed == 0 else work / f"seed-{seed}", m, max(budgets), bins)
            for m in methods
        }
        for seed in seeds
    }
    table = {str(b): {m: at_budget(points, b) for m, points in curves.items()} for b in budgets}
    print(
        json.dumps(
            {
                "benchmark": "learning_curve",
                "test_set": str(TEST_SET),
                "bins": {name: len(read_frames(p)) for name, p in bins.items()},
                "quick": args.quick,
                "budgets": budgets,
                "seeds": seeds,
                "train_overrides": overrides,
                "campaign_settings": settings,
                "table": table,
                "summary": summary(by_seed, methods, budgets),
                "curves": curves,
                "curves_by_seed": {str(seed): c for seed, c in by_seed.items()},
                "diagnostics_at_largest_budget": diagnostics,
                "seconds_this_run": seconds,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
