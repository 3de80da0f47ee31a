"""Every method's model on the thermal frames every other method's model visited in its own MD.

    .venv/bin/python benchmarks/bench_thermal_pool.py --work runs/lc --budgets 36,72 \
        --methods shared,none,random,oracle [--seeds 0,1,2] [--md 400K-1000]

The fixed test set of ``bench_learning_curve.py`` is made of random perturbations of relaxed
cells (σ 0.03–0.08 Å on every coordinate: reference forces 1.3–6.6 eV/Å RMS). MD at 400 K visits
other configurations: the walkers' frames carry ~1 eV/Å RMS. This benchmark scores the models on
a second independent set, thermal by construction: the frames ``bench_md_stability.py`` labeled
along each model's own 400 K NPT MD (from the relaxed narrow and large pore), pooled over
methods, budgets and seeds. None of them was trained on by any method.

Each model is scored on the pooled frames that *other* methods' models visited (its own method's
frames, at any budget or seed, left out: no home advantage), per start (``np``, ``lp``), and
only on frames whose reference energy lies at most ``--max-excess`` meV/atom above the relaxed
start's (default 3 × 3/2 k_B T: a frame far above that is where a bad model went, not a thermal
one; how many were left out is reported). Reads what ``bench_md_stability.py --labels N`` left
under ``<work>/md-stability/<md>``; computes nothing but the models' predictions. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from ase import units
from bench_md_stability import STARTS, labeled_frames, model_errors, start_energy
from learning_curve_diagnostics import final_model


def pool(md_dir: Path, labels: int) -> list[dict[str, Any]]:
    """Every labeled own-MD frame under ``md_dir``: frame, sampling method, budget, seed, start."""
    rows = []
    for workdir in sorted(md_dir.glob("seed-*/*-*/*")):
        if not (workdir / "md.json").is_file() or workdir.name not in STARTS:
            continue
        method, budget = workdir.parent.name.rsplit("-", 1)
        seed = int(workdir.parent.parent.name.removeprefix("seed-"))
        for frame in labeled_frames(workdir, labels):
            rows.append(
                {"frame": frame, "method": method, "budget": int(budget), "seed": seed,
                 "start": workdir.name}
            )  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/lc"))
    parser.add_argument("--budgets", default="36,72")
    parser.add_argument("--methods", default="shared,none,random,oracle")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--md", default="400K-1000", help="the md-stability runs: <T>K-<steps>")
    parser.add_argument("--labels", type=int, default=4, help="as bench_md_stability's --labels")
    parser.add_argument("--max-excess", type=float, default=None, help="meV/atom above the start")
    args = parser.parse_args()
    md_dir = args.work.resolve() / "md-stability" / args.md
    if not md_dir.is_dir():
        parser.error(f"--md {args.md}: no {md_dir} (run bench_md_stability.py first)")
    temperature = float(args.md.split("K-")[0])
    limit = args.max_excess if args.max_excess is not None else 4500.0 * units.kB * temperature
    floor = {start: start_energy(md_dir, start) for start in STARTS}
    rows = pool(md_dir, args.labels)
    for r in rows:
        atoms = r["frame"]
        r["excess"] = 1000.0 * (atoms.get_potential_energy() / len(atoms) - floor[r["start"]])
    thermal = [r for r in rows if r["excess"] <= limit]
    out: dict[str, Any] = {}
    for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
        where = args.work.resolve() if seed == 0 else args.work.resolve() / f"seed-{seed}"
        for method in (m.strip() for m in args.methods.split(",") if m.strip()):
            for budget in (int(b) for b in args.budgets.split(",") if b.strip()):
                model = final_model(where, method, budget)
                if model is None:
                    continue
                others = [r for r in thermal if r["method"] != method]
                result = {
                    start: model_errors(model, [r["frame"] for r in others if r["start"] == start])
                    for start in STARTS
                }
                out.setdefault(method, {}).setdefault(str(budget), {})[str(seed)] = result
                print(f"{method} {budget} seed {seed}: " + ", ".join(
                    f"{s} {v.get('force_rmse_mev_per_ang')}/{v.get('energy_rmse_mev_per_atom')}"
                    for s, v in result.items()), file=sys.stderr)  # fmt: skip
    by_source = {
        f"{m}-{b}": sum(1 for r in thermal if r["method"] == m and r["budget"] == b)
        for m, b in sorted({(r["method"], r["budget"]) for r in rows})
    }
    forces = np.concatenate([r["frame"].get_forces().ravel() for r in thermal])
    print(
        json.dumps(
            {
                "benchmark": "thermal_pool",
                "md": args.md,
                "max_excess_mev_per_atom": round(limit, 1),
                "frames": {
                    "labeled": len(rows),
                    "thermal": len(thermal),
                    "by_start": {s: sum(r["start"] == s for r in thermal) for s in STARTS},
                    "by_sampler": by_source,
                    "excess_mev_per_atom_left_out": sorted(
                        round(r["excess"]) for r in rows if r["excess"] > limit
                    ),
                    "force_rms_mev_per_ang": round(1000.0 * float(np.sqrt(np.mean(forces**2))), 1),
                },
                "scores": out,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
