"""The H2 delta-learning exercise: direct learning vs delta-learning on a dissociation curve.

Baseline HF/STO-3G, target FCI/cc-pVTZ (PySCF). Both models see target labels at r >= 0.8 Å
only; both are scored on the whole curve, 0.5-5 Å, against target energies they never trained
on. Direct learning has no data on the short-range wall; the delta model (HF + NequIP(FCI - HF))
inherits the wall from HF.

    python examples/h2-delta/run.py --out runs/h2-delta       # 18 min on 2 busy cores

Writes OUT/results.json (errors per region, the minimum's position and depth, the wall at
0.5 Å, for the target, the baseline and both models) and OUT/h2-delta.png. Rerunning resumes:
labels and trainings already done are reused.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
import yaml
from ase import Atoms

from hillwalker.engines.dataset import labels, read_frames, write_frames
from hillwalker.engines.files import atomic_write_json, atomic_write_text
from hillwalker.engines.multilevel import read_levels
from hillwalker.engines.nequip import TrainSettings
from hillwalker.engines.potentials import load_potential, train_potential
from hillwalker.labeling import label_file

HERE = Path(__file__).parent
BASELINE = HERE / "levels" / "hf-sto3g.yaml"
TARGET = HERE / "levels" / "fci-ccpvtz.yaml"
SHORT = 0.8  # Å: no training data below this distance


def h2(r: float) -> Atoms:
    return Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, r]])


def curve(out: Path, distances: np.ndarray, name: str) -> list[Atoms]:
    path = out / f"{name}.extxyz"
    write_frames(path, [h2(float(r)) for r in distances])
    return read_frames(path)


def label(level: Path, frames: Path, output: Path, cores: int | None) -> list[Atoms]:
    def progress(done: int, total: int, index: int, frame: object) -> None:
        print(f"  {output.name}: {done}/{total}", file=sys.stderr, flush=True)

    # the curve starts at 0.5 Å, closer than the default too-close threshold (0.6 Å)
    label_file(level, frames, output, cores=cores, on_frame=progress, min_distance=0.3)
    got = read_frames(output)
    failed = [i for i, f in enumerate(got) if "energy" not in labels(f)]
    if failed:
        raise SystemExit(f"{output}: frames {failed} failed to label")
    return got


def minimum(r: np.ndarray, e: np.ndarray) -> tuple[float, float]:
    """(position Å, energy eV) of the lowest point, refined by a parabola through its
    neighbours."""
    i = int(np.clip(np.argmin(e), 1, len(e) - 2))
    a, b, c = np.polyfit(r[i - 1 : i + 2], e[i - 1 : i + 2], 2)
    if a <= 0:
        return float(r[i]), float(e[i])
    x = -b / (2 * a)
    return float(x), float(np.polyval([a, b, c], x))


def summary(r: np.ndarray, e: np.ndarray, reference: np.ndarray | None) -> dict[str, float]:
    """The minimum, the depth (E(r_max) - E_min), the wall (E(r_min of curve) - E_min) and, with a
    reference, the RMSE (meV) below 0.8 Å and from 0.8 Å."""
    r_min, e_min = minimum(r, e)
    result = {
        "r_min_ang": r_min,
        "depth_ev": float(e[-1] - e_min),
        f"wall_at_{r[0]:.2f}_ev": float(e[0] - e_min),
    }
    if reference is not None:
        error = e - reference
        for name, mask in (("short", r < SHORT), ("trained_range", r >= SHORT)):
            result[f"rmse_{name}_mev"] = 1000 * float(np.sqrt(np.mean(error[mask] ** 2)))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--train-points", type=int, default=22, help="target labels, 0.8-5 Å")
    parser.add_argument("--curve-points", type=int, default=91, help="scored points, 0.5-5 Å")
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--cores", type=int, default=None, help="labeling cores (all)")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    # the target level for scoring: energies only (no finite differences needed)
    scoring = out / "target-energy.yaml"
    settings = yaml.safe_load(TARGET.read_text())
    settings.pop("finite_difference_step", None)
    atomic_write_text(scoring, yaml.safe_dump(settings))

    train_r = np.linspace(SHORT, 5.0, args.train_points)
    curve_r = np.linspace(0.5, 5.0, args.curve_points)
    curve(out, train_r, "train-frames")
    curve(out, curve_r, "curve-frames")
    print("labeling the training frames at both levels, the curve at both", file=sys.stderr)
    label(TARGET, out / "train-frames.extxyz", out / "train-target.extxyz", args.cores)
    label(BASELINE, out / "train-frames.extxyz", out / "train-baseline.extxyz", args.cores)
    target_curve = label(scoring, out / "curve-frames.extxyz", out / "curve-target.extxyz",
                         args.cores)  # fmt: skip
    base_curve = label(BASELINE, out / "curve-frames.extxyz", out / "curve-baseline.extxyz",
                       args.cores)  # fmt: skip

    data = read_levels([out / "train-target.extxyz", out / "train-baseline.extxyz"])
    template = Path(str(files("hillwalker.templates") / "alanine-dipeptide" / "nequip.yaml"))
    knobs = TrainSettings.from_template(
        template, epochs=args.epochs, r_max=8.0, num_features=16, batch_size=4,
        learning_rate=0.01, validation_fraction=0.15, energy_weight=10.0,
    )  # fmt: skip
    energies: dict[str, np.ndarray] = {
        "target": np.array([labels(f)["energy"] for f in target_curve]),
        "baseline": np.array([labels(f)["energy"] for f in base_curve]),
    }
    for method in ("direct", "delta"):
        print(f"training: {method}", file=sys.stderr)
        train_potential(
            data, out / method, method=method, target=TARGET.stem, baseline=BASELINE.stem,
            baseline_level=BASELINE, template=template, settings=knobs, compile=False,
        )  # fmt: skip
        calc = load_potential(out / method, device="cpu", threads=1)
        predicted = []
        for r in curve_r:
            atoms = h2(float(r))
            atoms.calc = calc
            predicted.append(atoms.get_potential_energy())
        energies[method] = np.array(predicted)

    results = {
        "target_level": str(TARGET.relative_to(HERE)),
        "baseline_level": str(BASELINE.relative_to(HERE)),
        "train_points": args.train_points,
        "train_range_ang": [SHORT, 5.0],
        "curve_points": args.curve_points,
        "epochs": args.epochs,
        "curves": {
            k: summary(curve_r, v, None if k == "target" else energies["target"])
            for k, v in energies.items()
        },
        "curve": {"r_ang": curve_r.tolist(), **{k: v.tolist() for k, v in energies.items()}},
    }
    atomic_write_json(out / "results.json", results)
    plot(out / "h2-delta.png", curve_r, train_r, energies)
    print(json.dumps(results["curves"], indent=2))
    return 0


def plot(path: Path, r: np.ndarray, train_r: np.ndarray, energies: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 6.4), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})  # fmt: skip
    ref = energies["target"][-1]
    styles = {
        "target": ("FCI/cc-pVTZ (target)", "k-"),
        "baseline": ("HF/STO-3G (baseline)", "C7--"),
        "direct": ("direct NequIP on FCI", "C0-"),
        "delta": ("HF + NequIP(FCI − HF)", "C3-"),
    }
    for key, (name, style) in styles.items():
        top.plot(r, energies[key] - ref, style, label=name)
    top.axvspan(r[0], SHORT, color="0.9", label="no training data")
    top.plot(train_r, np.interp(train_r, r, energies["target"]) - ref, "ko", ms=3,
             label="FCI training labels")  # fmt: skip
    top.set_ylim(-6, 8)
    top.set_ylabel("E − E(5 Å) of FCI (eV)")
    top.legend(fontsize=8)
    for key in ("direct", "delta"):
        bottom.plot(r, 1000 * (energies[key] - energies["target"]), styles[key][1],
                    label=styles[key][0])  # fmt: skip
    bottom.axvspan(r[0], SHORT, color="0.9")
    bottom.axhline(0, color="k", lw=0.5)
    bottom.set_yscale("symlog", linthresh=10)
    bottom.set_ylabel("error vs FCI (meV)")
    bottom.set_xlabel("H–H distance (Å)")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    partial = path.with_name(path.name + ".partial.png")
    fig.savefig(partial, dpi=120)
    plt.close(fig)
    partial.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
