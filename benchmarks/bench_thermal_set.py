"""Every method's models on the thermal test set: reference MD at 400 K along np → lp.

    .venv/bin/python benchmarks/bench_thermal_set.py --work shared=runs/lc-h10 \
        --work none=runs/lc-bonds --seeds 0,1,2 --budgets 36,72 [--curve]

The set (``tests/data/mil53_xtb_thermal_frames.extxyz``, made by
``tests/data/make_mil53_thermal_frames.py``) is thermal by construction and owes nothing to any
model: Langevin MD at 400 K on GFN1-xTB itself at five fixed cells on the np → lp path
(``path_t`` 0 = the relaxed np, 0.25, 0.5, 0.75, 1 = the relaxed lp), labeled in CP2K at the
campaigns' level. No method trains on it. (``bench_thermal_pool.py`` scores the models on the
frames of each other's MD instead: it needs those runs, and those frames go where the models go.)

``--work METHOD=DIR`` (repeatable): a ``bench_learning_curve.py`` work directory and the method
to read there (``shared``, ``none``, ``random``, ``oracle``, ``shared+scratch`` …; seed S under
``DIR/seed-S``); ``LABEL:METHOD=DIR`` names the row ``LABEL`` (e.g. ``h10:shared=runs/lc-h10``).
At each budget the model the method had when it had spent that many single points; with
``--curve`` every generation's model of a walker campaign too.

Per model, force RMSE (meV/Å) and energy RMSE (meV/atom) over all frames and per region
(``np``: t = 0, ``path``: 0.25–0.75, ``lp``: t = 1), and what frame RMSEs hide: the mean energy
error per region (a constant offset costs nothing in MD) and the 400 K energy profile along the
path (mean reference and predicted energy at each cell, relative to the np cell's) with its
error, ``profile_rmse`` over the four cells beyond np, and ``lp_minus_np`` (the error of the
energy difference that decides which phase the model prefers). Prints JSON.
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
THERMAL_SET = ROOT / "tests" / "data" / "mil53_xtb_thermal_frames.extxyz"
REGIONS = {"np": (0.0,), "path": (0.25, 0.5, 0.75), "lp": (1.0,)}


def score(model: Path, frames: list[Any]) -> dict[str, Any]:
    """Errors of ``model`` on the thermal frames, overall, per region and along the path."""
    from hillwalker.engines.nequip.deploy import load_calculator

    energy, forces = frame_errors(load_calculator(model), frames)
    t = np.array([round(float(f.info["path_t"]), 2) for f in frames])
    reference = np.array([f.get_potential_energy() / len(f) for f in frames]) * 1000.0
    volume = np.array([f.get_volume() for f in frames])

    def rmse(mask: np.ndarray) -> dict[str, float]:
        f = np.concatenate([forces[i].ravel() for i in np.flatnonzero(mask)])
        return {
            "force_rmse_mev_per_ang": round(float(np.sqrt(np.mean(f**2))), 1),
            "energy_rmse_mev_per_atom": round(float(np.sqrt(np.mean(energy[mask] ** 2))), 1),
            "energy_offset_mev_per_atom": round(float(energy[mask].mean()), 1),
            "n_frames": int(mask.sum()),
        }

    out: dict[str, Any] = {"all": rmse(np.ones(len(frames), bool))}
    for name, ts in REGIONS.items():
        out[name] = rmse(np.isin(t, ts))
    cells = sorted(set(t.tolist()))
    ref0 = reference[t == 0.0].mean()
    pred0 = (reference + energy)[t == 0.0].mean()
    profile = [
        {
            "path_t": c,
            "volume": round(float(volume[t == c].mean()), 1),
            "reference_mev_per_atom": round(float(reference[t == c].mean() - ref0), 1),
            "predicted_mev_per_atom": round(float((reference + energy)[t == c].mean() - pred0), 1),
        }
        for c in cells
    ]
    errors = np.array([p["predicted_mev_per_atom"] - p["reference_mev_per_atom"] for p in profile])
    out["profile"] = profile
    out["profile_rmse_mev_per_atom"] = round(float(np.sqrt(np.mean(errors[1:] ** 2))), 1)
    out["lp_minus_np_error_mev_per_atom"] = round(float(errors[-1]), 1)
    return out


def generation_models(root: Path) -> list[tuple[int, int, Path]]:
    """(generation, single points spent, model directory) of every trained generation."""
    from hillwalker.status import campaign_status

    spent, out = 0, []
    for g in campaign_status(root)["generations"]:
        spent += g["single_points_done"] + g["single_points_failed"]
        model = root / "generations" / f"{g['generation']:03d}" / "model"
        if model.is_dir():
            out.append((g["generation"], spent, model))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", action="append", required=True, metavar="[LABEL:]METHOD=DIR")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--budgets", default="36,72")
    parser.add_argument("--curve", action="store_true", help="every generation's model, too")
    parser.add_argument("--frames", type=Path, default=THERMAL_SET)
    args = parser.parse_args()
    from hillwalker.engines.dataset import read_frames

    if not args.frames.is_file():
        parser.error(f"{args.frames}: missing (run tests/data/make_mil53_thermal_frames.py)")
    frames = [f for f in read_frames(args.frames) if f.info.get("status", "done") == "done"]
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rows: dict[str, Any] = {}
    for item in args.work:
        try:
            label, method, dirs = work_dirs(item, seeds)
        except ValueError as exc:
            parser.error(str(exc))
        for seed, where in dirs:
            row = rows.setdefault(label, {}).setdefault(str(seed), {})
            for budget in budgets:
                model = final_model(where, method, budget)
                if model is not None:
                    row[str(budget)] = score(model_file(model), frames)
                    _say(f"{label} seed {seed} at {budget}", row[str(budget)])
            if args.curve and method in WALKER_METHODS and (where / method).is_dir():
                row["curve"] = []
                for g, spent, model in generation_models(where / method):
                    row["curve"].append(
                        {"generation": g, "single_points": spent} | score(model_file(model), frames)
                    )
                    _say(f"{label} seed {seed} generation {g} ({spent})", row["curve"][-1])
    forces = np.concatenate([f.get_forces().ravel() for f in frames])
    print(
        json.dumps(
            {
                "benchmark": "thermal_set",
                "frames": str(args.frames),
                "n_frames": len(frames),
                "by_region": {
                    name: sum(round(float(f.info["path_t"]), 2) in ts for f in frames)
                    for name, ts in REGIONS.items()
                },
                "force_rms_mev_per_ang": round(1000.0 * float(np.sqrt(np.mean(forces**2))), 1),
                "scores": rows,
            },
            indent=2,
        )
    )
    return 0


def _say(what: str, s: dict[str, Any]) -> None:
    print(
        f"{what}: " + ", ".join(
            f"{r} {s[r]['force_rmse_mev_per_ang']}/{s[r]['energy_rmse_mev_per_atom']}"
            for r in ("all", *REGIONS)
        ) + f"; profile {s['profile_rmse_mev_per_atom']}",
        file=sys.stderr,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
