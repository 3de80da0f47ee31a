"""Why one sampling method beats another at a budget: what each method labeled and what its
model learned, beyond frame RMSEs. Used by ``bench_learning_curve.py`` (``diagnostics`` in its
JSON) and runnable on its ``--work`` directory alone:

    .venv/bin/python benchmarks/learning_curve_diagnostics.py runs/lc --budget 36 \
        --methods shared,none,random,oracle [--seeds 0,1,2] [--plot docs/figures/x.png]

For each method (and seed) at the budget:

- ``sampled``: the cell volumes of the frames it trained on, counted in the regions of the test
  set's bins (``np`` < 400 Å³ ≤ ``start`` < 550 ≤ ``path`` < 700 ≤ ``lp``; the start structure
  is 473 Å³, the relaxed narrow pore 365, the relaxed large pore 750);
- ``energy``: the model's energy error per atom (prediction − reference, meV/atom) as a mean per
  bin (a constant offset costs nothing in MD), the error of the large-pore − narrow-pore energy
  difference (``lp_minus_np``: what decides which phase the model prefers), and the RMSE of the
  energy along the np → lp path after its mean offset is removed (``path_shape``: the shape of
  E(V) the model learned), with the path profile itself (volume, reference and predicted energy
  relative to the path's first frame) for the plot;
- ``training_fit``: the model on the frames it had to fit, by origin (``generation0``: the
  perturbations of the start structure; ``walkers``: later generations' frames), energy mean
  error and RMSE (meV/atom), force RMSE (meV/Å), and the frames' reference energy above the
  xTB-relaxed narrow pore (meV/atom; equipartition at 400 K puts a thermalised frame ~52 above
  its basin). A model that predicts one energy for frames of both kinds has not learned them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

#: (name, lowest volume, highest volume) in Å³: the test bins' regions
REGIONS = (("np", 0.0, 400.0), ("start", 400.0, 550.0), ("path", 550.0, 700.0),
           ("lp", 700.0, float("inf")))  # fmt: skip
WALKER_METHODS = ("shared", "independent", "none")


def training_frames(where: Path, method: str, budget: int) -> list[Any] | None:
    """The labeled frames ``method`` had spent ``budget`` single points on (None: not run)."""
    from hillwalker.engines.dataset import read_frames

    if method in WALKER_METHODS:
        path = where / method / "dataset.extxyz"
        if not path.is_file():
            return None
        frames = read_frames(path)[:budget]  # loop order; failed single points count
        return [f for f in frames if f.info.get("status") == "done"]
    if method == "random":
        path = where / f"random-{budget}" / "dataset.extxyz"
    elif method == "oracle":
        path = where / "oracle" / f"train-{budget}.extxyz"
    else:
        path = where / method / f"train-{budget}.extxyz"
    if not path.is_file():
        return None
    return [f for f in read_frames(path) if f.info.get("status", "done") == "done"]


def final_model(where: Path, method: str, budget: int) -> Path | None:
    """The model ``method`` had trained when ``budget`` single points were spent (None for a
    walker campaign not meant to spend that many: its ``stop.max_single_points`` is below)."""
    if method in WALKER_METHODS:
        from hillwalker.config import load_campaign
        from hillwalker.status import campaign_status

        root, spent, last = where / method, 0, None
        if not (root / "campaign.yaml").is_file():
            return None
        if (load_campaign(root).stop.max_single_points or 0) < budget:
            return None
        for g in campaign_status(root)["generations"]:
            spent += g["single_points_done"] + g["single_points_failed"]
            model = root / "generations" / f"{g['generation']:03d}" / "model"
            if spent > budget:
                break
            if model.is_dir():
                last = model
        return last
    if method == "random":
        path = where / f"random-{budget}" / "generations" / "000" / "model"
    else:
        path = where / method / f"model-{budget}"
    return path if path.is_dir() else None


def work_dirs(item: str, seeds: list[int]) -> tuple[str, str, list[tuple[int, Path]]]:
    """``[LABEL:]METHOD=DIR`` of a ``--work`` option: the label, the method and each seed's
    directory (DIR for seed 0, DIR/seed-S for the others). ValueError when malformed."""
    name, sep, directory = item.partition("=")
    label, _, method = name.rpartition(":")
    if not sep or not method:
        raise ValueError(f"--work {item!r}: expected [LABEL:]METHOD=DIR")
    base = Path(directory).resolve()
    return label or method, method, [(s, base / ("" if s == 0 else f"seed-{s}")) for s in seeds]


def model_file(directory: Path) -> Path:
    """The deployed file of a model directory (the package, not a machine-bound compile)."""
    found = sorted(directory.glob("*.nequip.zip"))
    if not found:
        raise SystemExit(f"{directory}: no *.nequip.zip model in it")
    return found[0]


def sampled(frames: list[Any]) -> dict[str, Any]:
    volumes = np.array([f.get_volume() for f in frames])
    return {
        "n": len(frames),
        "volume_min": round(float(volumes.min()), 1),
        "volume_max": round(float(volumes.max()), 1),
        "by_region": {
            name: int(((volumes >= lo) & (volumes < hi)).sum()) for name, lo, hi in REGIONS
        },
    }


def energy_errors(model: Path, bins: dict[str, Path]) -> dict[str, Any]:
    """Per-atom energy errors of ``model`` on the near_eq, np_lp and lp bins (meV/atom)."""
    from hillwalker.engines.dataset import read_frames
    from hillwalker.engines.nequip.deploy import load_calculator

    calc = load_calculator(model)
    errors: dict[str, np.ndarray] = {}
    profile: list[dict[str, float]] = []
    for name in ("near_eq", "np_lp", "lp"):
        frames = read_frames(bins[name])
        ref, pred, vol = [], [], []
        for atoms in frames:
            ref.append(atoms.get_potential_energy() / len(atoms))
            copy = atoms.copy()
            copy.calc = calc
            pred.append(copy.get_potential_energy() / len(atoms))
            vol.append(atoms.get_volume())
        errors[name] = 1000.0 * (np.array(pred) - np.array(ref))
        if name == "np_lp":
            order = np.argsort(vol)
            r0, p0 = ref[order[0]], pred[order[0]]
            profile = [
                {"volume": round(vol[i], 1), "reference_mev_per_atom": round(1000 * (ref[i] - r0), 1),
                 "predicted_mev_per_atom": round(1000 * (pred[i] - p0), 1)}
                for i in order
            ]  # fmt: skip
    path = errors["np_lp"]
    return {
        "offset_mev_per_atom": {k: round(float(v.mean()), 1) for k, v in errors.items()},
        "lp_minus_np_mev_per_atom": round(float(errors["lp"].mean() - errors["near_eq"].mean()), 1),
        "path_shape_rmse_mev_per_atom": round(
            float(np.sqrt(np.mean((path - path.mean()) ** 2))), 1
        ),
        "path_profile": profile,
    }


#: the xTB-relaxed narrow pore (its ``relax_energy_eV``: the lowest energy this level knows for
#: MIL-53(Al))
NP_RELAXED = Path(__file__).resolve().parents[1] / "tests" / "data" / "mil53_np_relaxed_xtb.extxyz"


def trained_on(frames: list[Any], limit: float | None = None) -> list[Any]:
    """The frames a campaign trains on: at most ``limit`` eV/Å (default: campaign.yaml's
    ``training.max_label_force`` default), as the campaign itself splits them."""
    from hillwalker.config import Training
    from hillwalker.engines.dataset import split_by_force

    if limit is None:
        limit = Training.model_fields["max_label_force"].default
    return split_by_force(frames, limit)[0]


def frame_errors(calc: Any, frames: list[Any]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per frame: the energy error per atom (meV/atom) and the force errors (meV/Å) of ``calc``
    against the frames' labels."""
    energy, forces = [], []
    for atoms in frames:
        copy = atoms.copy()
        copy.calc = calc
        n = len(atoms)
        energy.append(1000.0 * (copy.get_potential_energy() - atoms.get_potential_energy()) / n)
        forces.append(1000.0 * (copy.get_forces() - atoms.get_forces()))
    return np.array(energy), forces


def training_fit(model: Path, frames: list[Any]) -> dict[str, Any]:
    """``model``'s errors on ``frames`` (its training data), by origin."""
    import ase.io

    from hillwalker.engines.nequip.deploy import load_calculator

    relaxed = ase.io.read(NP_RELAXED)
    floor = float(relaxed.info["relax_energy_eV"]) / len(relaxed)
    calc = load_calculator(model)
    groups: dict[str, list[Any]] = {}
    for atoms in trained_on(frames):  # torn frames were left out of training
        origin = "generation0" if int(atoms.info.get("generation", 0)) == 0 else "walkers"
        groups.setdefault(origin, []).append(atoms)
    out = {}
    for origin, group in groups.items():
        e, forces = frame_errors(calc, group)
        above = np.array([1000.0 * (a.get_potential_energy() / len(a) - floor) for a in group])
        out[origin] = {
            "n": len(group),
            "energy_mean_error_mev_per_atom": round(float(e.mean()), 1),
            "energy_rmse_mev_per_atom": round(float(np.sqrt(np.mean(e**2))), 1),
            "force_rmse_mev_per_ang": round(
                float(np.sqrt(np.mean(np.concatenate(forces) ** 2))), 1
            ),
            "reference_above_np_min_mev_per_atom": {
                "min": round(float(above.min()), 1),
                "mean": round(float(above.mean()), 1),
                "max": round(float(above.max()), 1),
            },
        }
    return out


def diagnose(where: Path, method: str, budget: int, bins: dict[str, Path]) -> dict[str, Any] | None:
    frames = training_frames(where, method, budget)
    model = final_model(where, method, budget)
    if not frames or model is None:
        return None
    return {
        "model": str(model),
        "sampled": sampled(frames),
        "energy": energy_errors(model, bins),
        "training_fit": training_fit(model, frames),
    }


def plot(diagnostics: dict[str, dict[str, Any]], out: Path, title: str) -> None:
    """E(V) along the np → lp path: the reference and each method's model (one seed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    reference_drawn = False
    for method, d in diagnostics.items():
        if d is None:
            continue
        profile = d["energy"]["path_profile"]
        v = [p["volume"] for p in profile]
        if not reference_drawn:
            ax.plot(v, [p["reference_mev_per_atom"] for p in profile], "k-o", lw=2.5,
                    label="reference (GFN1-xTB)")  # fmt: skip
            reference_drawn = True
        ax.plot(v, [p["predicted_mev_per_atom"] for p in profile], "--s", ms=4,
                label=f"{method} ({d['sampled']['by_region']['path'] + d['sampled']['by_region']['lp']}"
                      " frames ≥ 550 Å³)")  # fmt: skip
    ax.set_xlabel("cell volume (Å³)")
    ax.set_ylabel("energy per atom − first frame's (meV)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--budget", type=int, default=36)
    parser.add_argument("--methods", default="shared,none,random,oracle")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--plot", type=Path, help="PNG of E(V) along the path (the first seed)")
    args = parser.parse_args()
    work = args.work.resolve()
    bins = {n: work / "test-set" / f"{n}.extxyz" for n in ("near_eq", "np_lp", "lp")}
    for path in bins.values():
        if not path.is_file():
            raise SystemExit(f"{path}: missing; run bench_learning_curve.py --work {work} first")
    methods = [m for m in args.methods.split(",") if m]
    out: dict[str, dict[str, Any]] = {}
    for seed in (int(s) for s in args.seeds.split(",") if s):
        where = work if seed == 0 else work / f"seed-{seed}"
        out[str(seed)] = {m: diagnose(where, m, args.budget, bins) for m in methods}
    if args.plot:
        first = next(iter(out))
        plot(out[first], args.plot, f"MIL-53(Al), {args.budget} single points, seed {first}")
    print(json.dumps({"budget": args.budget, "diagnostics_by_seed": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
