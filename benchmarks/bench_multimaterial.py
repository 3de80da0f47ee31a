"""One potential for several materials: single points needed per material, one campaign per
material vs one joint campaign (Vandenhaute et al. 2023: ~1000 → ~300 QM evaluations per
framework as the training set got more varied), measured here at GFN1-xTB.

    .venv/bin/python benchmarks/bench_multimaterial.py [--work DIR] [--generations 4]
        [--targets 500,400,300] [--quick]

Materials: MIL-53(Al) (templates/mil53-al, CoRE MOF 2019 SABWAU_SL) and MIL-53(Ga)
(examples/mil53-ga-from-al: Al → Ga, cell × 1.02). Three campaigns with the same settings per
material (the main job's, with ``--frames`` generation-0 frames and ``--walkers`` walkers per
material): ``al`` alone, ``ga`` alone, and ``joint`` (``materials: [al, ga]``, one model).

Test sets, never trained on: MIL-53(Al) — the 48 frames of tests/data/mil53_xtb_frames.extxyz
(np, the np → lp path, lp; CP2K GFN1-xTB); MIL-53(Ga) — the same 48 geometries with Al → Ga,
scaled by 1.02 and labeled here at the same level (benchmarks/bench_element_transfer_mil53.py's
``ga_frames``, cached in ``--work``). Every generation's model is scored on both inside the loop
(``evaluation.test_sets``).

Reported per campaign and generation: single points spent on each material, force and energy
RMSE on each material's test set; and per material, the fewest single points spent on it at
which its test force RMSE reached each of ``--targets`` meV/Å (null: never), alone vs joint. Resumable:
each campaign resumes where it stopped. Prints one JSON object whatever it shows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_element_transfer_mil53 import AL_FRAMES, ga_frames  # noqa: E402

STRUCTURES = {
    "al": ROOT / "templates" / "mil53-al" / "structure.cif",
    "ga": ROOT / "examples" / "mil53-ga-from-al" / "structure.cif",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def config(materials: list[str], args: argparse.Namespace) -> dict[str, Any]:
    base = yaml.safe_load((ROOT / "examples" / "mil53-xtb" / "campaign.yaml").read_text())
    base["name"] = "-".join(materials)
    base["generation0"]["frames"] = args.frames
    base["walkers"].update(count=args.walkers, steps=args.steps)
    base["stop"] = {"generations": args.generations}
    base["training"].update(epochs=args.epochs, warm_epochs=args.warm_epochs)
    if args.quick:
        base["training"]["overrides"] = {"num_features": 8, "batch_size": 2}
    # each campaign's own materials only: a model of Al alone has no type for Ga
    base["evaluation"] = {"test_sets": {m: f"test-{m}.extxyz" for m in materials}}
    shared = {"level": "levels/xtb.inp", "nequip": "nequip.yaml"}
    if len(materials) == 1:
        base["material"] = {**shared, "structure": f"{materials[0]}.cif", "plumed": "plumed.dat"}
    else:
        base["material"] = shared
        base["materials"] = [
            {"name": m, "structure": f"{m}.cif", "plumed": "plumed.dat"} for m in materials
        ]
    return base


def make_campaign(root: Path, materials: list[str], tests: dict[str, Path], args: Any) -> Path:
    from hillwalker.material_templates import new_from_template

    if not (root / "campaign.yaml").exists():
        new_from_template(root, "mil53-al")
        for m in materials:
            shutil.copy(STRUCTURES[m], root / f"{m}.cif")
        for m, path in tests.items():
            shutil.copy(path, root / f"test-{m}.extxyz")
    (root / "campaign.yaml").write_text(yaml.safe_dump(config(materials, args), sort_keys=False))
    return root


def curve(root: Path, materials: list[str]) -> list[dict[str, Any]]:
    """After each generation: single points spent per material, each test set's errors."""
    from hillwalker.engines.dataset import read_frames
    from hillwalker.status import campaign_status

    status = campaign_status(root)
    spent = dict.fromkeys(materials, 0)
    points = []
    for g in status["generations"]:
        path = root / "generations" / f"{g['generation']:03d}" / "labeled.extxyz"
        for frame in read_frames(path) if path.exists() else []:
            spent[frame.info.get("material", materials[0])] += 1
        points.append(
            {
                "generation": g["generation"],
                "single_points": dict(spent),
                "errors": {
                    m: {
                        k: round(v, 1)
                        for k, v in (g["test_sets"].get(m) or {}).items()
                        if k in ("force_rmse_mev_per_ang", "energy_rmse_mev_per_atom")
                    }
                    for m in materials
                },
            }
        )
    return points


def needed(points: list[dict[str, Any]], material: str, target: float) -> int | None:
    """Single points spent on ``material`` when its test force RMSE first reached ``target``."""
    for p in points:
        force = p["errors"][material].get("force_rmse_mev_per_ang")
        if force is not None and force <= target:
            return int(p["single_points"][material])
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "multimaterial")
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--frames", type=int, default=12, help="generation-0 frames per material")
    parser.add_argument("--walkers", type=int, default=2, help="walkers per material")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--warm-epochs", type=int, default=60)
    parser.add_argument(
        "--targets", default="500,400,300", help="force RMSEs to reach, meV/Å (comma-separated)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the path")
    args = parser.parse_args()
    if args.quick:
        args.generations, args.frames, args.walkers, args.steps = 1, 3, 1, 100
        args.epochs, args.warm_epochs = 6, 3
    from hillwalker.engines.dataset import read_frames, write_frames
    from hillwalker.runner import run_campaign

    args.work.mkdir(parents=True, exist_ok=True)
    tests = {"al": args.work / "test-al.extxyz", "ga": args.work / "test-ga.extxyz"}
    if not tests["al"].exists():
        write_frames(tests["al"], read_frames(AL_FRAMES))
    if not tests["ga"].exists():
        log("labeling the MIL-53(Ga) test set (48 frames, GFN1-xTB)")
        write_frames(tests["ga"], ga_frames(args.work))
    campaigns = {"al": ["al"], "ga": ["ga"], "joint": ["al", "ga"]}
    results: dict[str, Any] = {}
    started = time.time()
    for name, materials in campaigns.items():
        root = make_campaign(args.work / name, materials, tests, args)
        t0 = time.time()
        log(f"campaign {name} ({', '.join(materials)})")
        run_campaign(root)
        results[name] = {"materials": materials, "curve": curve(root, materials)}
        results[name]["run_seconds_this_call"] = round(time.time() - t0, 1)
    targets = [float(t) for t in args.targets.split(",")]
    summary = {
        m: {
            "alone": {str(t): needed(results[m]["curve"], m, t) for t in targets},
            "joint": {str(t): needed(results["joint"]["curve"], m, t) for t in targets},
            "final_force_rmse_alone": results[m]["curve"][-1]["errors"][m].get(
                "force_rmse_mev_per_ang"
            ),
            "final_force_rmse_joint": results["joint"]["curve"][-1]["errors"][m].get(
                "force_rmse_mev_per_ang"
            ),
            "single_points_alone": results[m]["curve"][-1]["single_points"][m],
            "single_points_joint": results["joint"]["curve"][-1]["single_points"][m],
        }
        for m in STRUCTURES
    }
    print(
        json.dumps(
            {
                "benchmark": "multimaterial_mil53_al_ga",
                "quick": args.quick,
                "settings": {k: v for k, v in vars(args).items() if k not in ("work", "quick")},
                "target_force_rmse_mev_per_ang": targets,
                "single_points_to_target": summary,
                "campaigns": results,
                "wall_seconds": round(time.time() - started, 1),
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
