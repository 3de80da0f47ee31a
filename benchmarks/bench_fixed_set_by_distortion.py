"""The fixed test set split by how far each frame was pushed from its relaxed structure.

The fixed MIL-53(Al) set (tests/data/mil53_xtb_frames.extxyz) perturbs relaxed np, lp and
np → lp path structures by σ = 0.03, 0.05 or 0.08 Å and strains their cells by up to 2–4 %;
the thermal set (bench_thermal_set.py) holds 400 K MD frames. This scores the final models of
``bench_learning_curve.py`` runs on each (source, σ) group and states how hard each group and
each method's training frames are (RMS reference force): where one method wins on one set and
loses on the other, it shows which frames make the difference.

    .venv/bin/python benchmarks/bench_fixed_set_by_distortion.py \\
        --work shared=runs/lc-h10-ls --work random=runs/lc-ro --work oracle=runs/lc-ro \\
        --budgets 72,152

Prints JSON (force RMSE meV/Å and energy RMSE meV/atom per group, per method and budget).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from learning_curve_diagnostics import (
    WALKER_METHODS,
    final_model,
    frame_errors,
    model_file,
    work_dirs,
)

ROOT = Path(__file__).resolve().parents[1]
TEST_SET = ROOT / "tests" / "data" / "mil53_xtb_frames.extxyz"
THERMAL_SET = ROOT / "tests" / "data" / "mil53_xtb_thermal_frames.extxyz"


def groups(frames: list[Any]) -> dict[str, list[Any]]:
    """The fixed set's frames by source and perturbation σ, in the file's order."""
    out: dict[str, list[Any]] = {}
    for f in frames:
        source = str(f.info.get("source", "?"))  # np-relaxed, lp-relaxed, np-lp-path …
        source = "path" if source.startswith("np-lp-path") else source.split("-")[0]
        out.setdefault(f"{source} σ{float(f.info['perturb_sigma']):.2f}", []).append(f)
    return out


def rms_force(frames: list[Any]) -> float:
    """RMS of the reference force components, meV/Å."""
    forces = np.concatenate([f.get_forces().ravel() for f in frames])
    return round(1000.0 * float(np.sqrt(np.mean(forces**2))), 1)


def training_frames(where: Path, method: str, budget: int) -> list[Any]:
    """The labeled frames a method had spent ``budget`` single points on."""
    from hillwalker.engines.dataset import read_frames

    if method in WALKER_METHODS:
        path = where / method / "dataset.extxyz"
    elif method == "random":
        path = where / f"random-{budget}" / "dataset.extxyz"
    else:
        path = where / method / f"train-{budget}.extxyz"
    if not path.is_file():
        return []
    frames = [f for f in read_frames(path) if f.info.get("status", "done") == "done"]
    return frames[:budget]


def score(model: Path, named: dict[str, list[Any]]) -> dict[str, dict[str, float]]:
    from hillwalker.engines.nequip.deploy import load_calculator

    calc = load_calculator(model_file(model))
    out = {}
    for name, frames in named.items():
        energy, forces = frame_errors(calc, frames)
        f = np.concatenate([x.ravel() for x in forces])
        out[name] = {
            "force_rmse_mev_per_ang": round(float(np.sqrt(np.mean(f**2))), 1),
            "energy_rmse_mev_per_atom": round(float(np.sqrt(np.mean(energy**2))), 1),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", action="append", required=True, metavar="[LABEL:]METHOD=DIR")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--budgets", default="72,152")
    args = parser.parse_args()
    from hillwalker.engines.dataset import read_frames

    named = groups(read_frames(TEST_SET))
    named["thermal (400 K MD)"] = read_frames(THERMAL_SET)
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rows: dict[str, Any] = {}
    for item in args.work:
        try:
            label, method, dirs = work_dirs(item, seeds)
        except ValueError as exc:
            parser.error(str(exc))
        for seed, where in dirs:
            for budget in budgets:
                model = final_model(where, method, budget)
                if model is None:
                    continue
                trained = training_frames(where, method, budget)
                row: dict[str, Any] = {
                    "training_frames": len(trained),
                    "training_rms_force_mev_per_ang": rms_force(trained) if trained else None,
                    "errors": score(model, named),
                }
                rows.setdefault(label, {}).setdefault(str(seed), {})[str(budget)] = row
                print(
                    f"{label} seed {seed} at {budget}: "
                    + ", ".join(
                        f"{g} {e['force_rmse_mev_per_ang']}" for g, e in row["errors"].items()
                    ),
                    file=sys.stderr,
                )
    print(
        json.dumps(
            {
                "benchmark": "fixed_set_by_distortion",
                "groups": {
                    g: {"n_frames": len(fs), "rms_force_mev_per_ang": rms_force(fs)}
                    for g, fs in named.items()
                },
                "scores": rows,
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
