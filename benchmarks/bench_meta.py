"""Meta-learning across levels of theory: refit error at a held-out level after no pretraining,
joint pretraining (k = 1) and Reptile (k = 10, 100, ...), side by side, against refit set size.

    .venv/bin/python benchmarks/bench_meta.py [--quick] [--work DIR] [--sizes 10,25,50]
        [--ks 10,100] [--draws 3] [--pretrain-steps 3000] [--epochs 200] [--test-frames 40]

System (molecules, so that it runs on 2 CPU cores): ethanol in vacuum.
- frames: Langevin MD driven by GFN1-xTB (tblite, in this process), one frame every ``STRIDE``
  steps of 0.5 fs after a burn-in, seeded; pretraining frames at 300, 600 and 900 K; the refit
  pool and the test set are two more independent 600 K trajectories;
- pretraining levels (every pretraining frame labeled at each): GFN1-xTB and GFN2-xTB (tblite),
  HF/STO-3G (PySCF);
- held-out target level: MP2/6-31G (PySCF; the paper's aspirin case refits to MP2). Only the
  refit sets and the test set are labeled at it: pretraining never sees it, and no test frame
  is pretrained or refitted on.

For each refit set size N (``--draws`` random draws of N frames from the refit pool, nested:
the first N of one permutation per draw), each model is fine-tuned for the same ``--epochs``
through ``train(init_from=...)`` (what ``hillwalker train DATA --init MODEL`` runs) or trained
from scratch (``scratch``), and scored on the test set (force RMSE meV/Å, energy RMSE meV/atom).
Pretraining is compared at equal optimiser steps: joint with ``--pretrain-steps`` outer steps,
Reptile with ``--pretrain-steps / k``.

Energy references: a warm start keeps the package's per-type energy shifts (those of the
pretraining's reference level). The benchmark measures that (the shifts read from the packages,
the energy error at init) and refits on E − Σₑ nₑ(μₑ(target) − shiftₑ), μₑ(target) fitted
(``per_element_energies``) on the refit set only; the refitted model is scored as the sum of the
network and those offsets (``SumCalculator`` + ``OffsetCalculator``). ``--raw-refit`` also
fine-tunes one pretrained model on the target's energies as they are, to show what that gives.

Resumable: labels (``label_file`` work directories), pretrainings and trainings are kept in
``--work``; a rerun computes only what is missing. torch runs on one thread everywhere (a shared
2-core machine). Prints one JSON object whatever it shows; ``findings`` is computed from it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# one torch/OpenMP thread in this process and its children (tblite, PySCF, nequip), before any
# of them is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "templates" / "alanine-dipeptide" / "nequip.yaml"
MOLECULE = "CH3CH2OH"
#: MD steps of 0.5 fs between two frames, and before the first
STRIDE, BURN_IN = 25, 200
PRETRAIN_TEMPERATURES = (300.0, 600.0, 900.0)
POOL_TEMPERATURE = 600.0
#: level files (their stem is the level's name in the frames)
PRETRAIN_LEVELS = {
    "gfn1": "code: tblite\nmethod: GFN1-xTB\nelectronic_temperature: 300.0\n",
    "gfn2": "code: tblite\nmethod: GFN2-xTB\nelectronic_temperature: 300.0\n",
    "hf-sto3g": "code: pyscf\nmethod: hf\nbasis: sto-3g\nconv_tol: 1.0e-9\n",
}
TARGET_NAME = "mp2-631g"
TARGET_LEVEL = "code: pyscf\nmethod: mp2\nbasis: 6-31g\nconv_tol: 1.0e-9\n"
MD_LEVEL = "gfn1"
SCRATCH, JOINT = "scratch", "joint"
#: --quick and full defaults (an option given on the command line wins)
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "sizes": "10,25",
        "ks": "10,100",
        "draws": 1,
        "pretrain_frames": 48,
        "refit_pool": 25,
        "test_frames": 16,
        "pretrain_steps": 1500,
        "epochs": 50,
    },
    "full": {
        "sizes": "10,25,50",
        "ks": "10,100",
        "draws": 3,
        "pretrain_frames": 150,
        "refit_pool": 80,
        "test_frames": 40,
        "pretrain_steps": 3000,
        "epochs": 200,
    },
}


# --------------------------------------------------------------------------------------------
# data


def trajectory(level_file: Path, n_frames: int, temperature: float, seed: int) -> list[Any]:
    """``n_frames`` frames of Langevin MD on the level (in this process), every ``STRIDE``
    steps after ``BURN_IN`` steps."""
    from ase import units
    from ase.build import molecule
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from hillwalker.engines.levels import level_calculator, load_level

    atoms = molecule(MOLECULE)
    atoms.calc = level_calculator(load_level(level_file), cores=1)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=temperature, friction=0.02, rng=rng)
    dyn.run(BURN_IN)
    frames = []
    for _ in range(n_frames):
        dyn.run(STRIDE)
        frame = atoms.copy()
        frame.calc = None
        frame.info["temperature_K"] = temperature
        frames.append(frame)
    return frames


def make_frames(work: Path, pretrain_frames: int, pool: int, test: int) -> dict[str, Path]:
    """The three sets of unlabeled frames (made once, kept)."""
    from hillwalker.engines.dataset import write_frames

    files = {name: work / "frames" / f"{name}.extxyz" for name in ("pretrain", "pool", "test")}
    md_level = work / "levels" / f"{MD_LEVEL}.yaml"
    per_temperature = -(-pretrain_frames // len(PRETRAIN_TEMPERATURES))
    if not files["pretrain"].exists():
        frames = []
        for i, temperature in enumerate(PRETRAIN_TEMPERATURES):
            frames += trajectory(md_level, per_temperature, temperature, seed=10 + i)
        write_frames(files["pretrain"], frames[:pretrain_frames])
    if not files["pool"].exists():
        write_frames(files["pool"], trajectory(md_level, pool, POOL_TEMPERATURE, seed=2))
    if not files["test"].exists():
        write_frames(files["test"], trajectory(md_level, test, POOL_TEMPERATURE, seed=3))
    return files


def label(level_file: Path, frames_file: Path, out: Path, cores: int | None) -> dict[str, Any]:
    """Label the file (resumable) and return how it went; only done frames are kept in
    ``out``."""
    from hillwalker.engines.dataset import STATUS_DONE, read_frames, write_frames
    from hillwalker.labeling import label_file

    raw = out.with_name(out.stem + "-all.extxyz")
    summary = label_file(level_file, frames_file, raw, cores=cores)
    done = [f for f in read_frames(raw) if f.info.get("status") == STATUS_DONE]
    write_frames(out, done)
    computed = summary.total - summary.reused
    return {
        "frames": summary.total,
        "done": len(done),
        "failed": summary.failed,
        "seconds_per_call": round(summary.code_seconds / computed, 3) if computed else None,
        "wall_s": round(summary.wall_seconds, 1),
    }


# --------------------------------------------------------------------------------------------
# models


def pretrained(
    work: Path, datasets: dict[str, list[Any]], k: int, steps: int, seed: int
) -> tuple[Any, float]:
    """A pretraining on the pretraining levels: joint (k = 1) with ``steps`` optimiser steps or
    Reptile with ``steps / k`` outer steps; (model, seconds)."""
    from hillwalker.engines.nequip import TrainSettings
    from hillwalker.engines.nequip.reptile import pretrain

    method = "joint" if k == 1 else "reptile"
    outer = max(1, steps // k)
    print(f"[pretrain {method} k={k}] {outer} outer steps", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    model = pretrain(
        datasets,
        work / "pretrain" / (JOINT if k == 1 else f"reptile-k{k}"),
        method=method,
        k=k,
        outer_steps=outer,
        template=TEMPLATE,
        settings=TrainSettings.from_template(TEMPLATE, seed=seed),
        checkpoint_every=max(1, outer // 4),
        device="cpu",
        threads=1,
    )
    return model, time.perf_counter() - t0


def target_offsets(refit: Sequence[Any], shifts: dict[str, float]) -> dict[str, float]:
    """Per-element offsets (eV) of the target level against a model's shifts, fitted on the refit
    frames only: what must be added to the model's energies."""
    from hillwalker.engines.multilevel import per_element_energies

    target = per_element_energies(list(refit))
    return {s: target[s] - shifts[s] for s in target}


def shifted(frames: Sequence[Any], offsets: dict[str, float]) -> list[Any]:
    """The frames with E − Σₑ nₑ offsetₑ (forces unchanged)."""
    from hillwalker.engines.dataset import label as with_labels
    from hillwalker.engines.dataset import labels

    out = []
    for frame in frames:
        got = labels(frame)
        shift = sum(offsets[s] for s in frame.get_chemical_symbols())
        atoms = frame.copy()
        atoms.calc = None
        out.append(with_labels(atoms, got["energy"] - shift, got["forces"], **atoms.info))
    return out


def package_shifts(package: Path) -> dict[str, float]:
    """The per-type energy shifts stored in a NequIP package (eV per atom)."""
    from nequip.model.saved_models.load_utils import load_saved_model

    from hillwalker.engines.nequip import model_species
    from hillwalker.engines.nequip.surgery import ENERGY_SCALE_SHIFT

    model = load_saved_model(str(package))
    for name, module in model.named_modules():
        if name.split(".")[-1] == ENERGY_SCALE_SHIFT:
            values = module.shifts.detach().reshape(-1).tolist()
            types = model_species(package)
            return dict(
                zip(types, values * len(types) if len(values) == 1 else values, strict=True)
            )
    raise SystemExit(f"{package}: no {ENERGY_SCALE_SHIFT} module")


def scored(package: Path, test: Sequence[Any], offsets: dict[str, float] | None) -> dict[str, Any]:
    """Test errors of a package, plus per-element energy offsets when given."""
    from hillwalker.engines.composite import OffsetCalculator, SumCalculator
    from hillwalker.engines.nequip import evaluate, load_calculator
    from hillwalker.engines.nequip.deploy import score

    if offsets is None:
        errors = evaluate(package, list(test), device="cpu", threads=1)
    else:
        calc = SumCalculator(
            [
                ("model", load_calculator(package, device="cpu", threads=1)),
                ("references", OffsetCalculator(offsets)),
            ]
        )
        errors = score(calc, list(test), model=str(package))
    return {
        "force_rmse_mev_per_ang": round(errors["force_rmse_mev_per_ang"], 2),
        "energy_rmse_mev_per_atom": round(errors["energy_rmse_mev_per_atom"], 3),
    }


def refit(
    where: Path,
    frames: Sequence[Any],
    test: Sequence[Any],
    epochs: int,
    init: Any | None,
    *,
    raw_energies: bool = False,
) -> dict[str, Any]:
    """Train on ``frames`` from scratch (``init`` None) or fine-tune a pretrained model (its
    energy references replaced by the target's, fitted on ``frames``, unless ``raw_energies``);
    scored on ``test``."""
    from hillwalker.engines.dataset import write_frames
    from hillwalker.engines.nequip import TrainSettings, train

    offsets = None
    if init is not None and not raw_energies:
        offsets = target_offsets(frames, init.record["per_type_energy_shifts"])
        frames = shifted(frames, offsets)
    data = where / "refit.extxyz"
    write_frames(data, frames)
    t0 = time.perf_counter()
    model = train(
        data,
        where,
        template=TEMPLATE,
        settings=TrainSettings.from_template(TEMPLATE, epochs=epochs),
        init_from=None if init is None else init.package,
        device="cpu",
        compile=False,
        threads=1,
    )
    result = scored(model.package, test, offsets)
    result["deployed_epoch"] = model.metrics.get("deployed_epoch")
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["package"] = str(model.package)
    return result


# --------------------------------------------------------------------------------------------
# what the numbers say


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def equivalent_frames(
    curve: Sequence[tuple[int, float]], error: float
) -> tuple[float | None, str, float | None]:
    """The scratch frames that give ``error`` on the scratch learning curve (log-log linear
    interpolation): (frames, how, extrapolated) where how is ``interpolated``, ``above`` (better
    than scratch at its largest size: at least that many) or ``below`` (worse than scratch at
    its smallest: at most); ``extrapolated`` continues the nearest segment's power law there."""
    points = sorted(curve)
    logs = [(math.log(n), math.log(e)) for n, e in points]
    target = math.log(error)
    for (n0, e0), (n1, e1) in itertools.pairwise(logs):
        if min(e0, e1) <= target <= max(e0, e1) and e0 != e1:
            return math.exp(n0 + (target - e0) * (n1 - n0) / (e1 - e0)), "interpolated", None
    best = min(points, key=lambda p: p[1])
    if len(points) < 2:
        return None, "no curve", None
    above = error < best[1]
    (n0, e0), (n1, e1) = logs[-2:] if above else logs[:2]
    slope = (e1 - e0) / (n1 - n0)
    extrapolated = math.exp(n0 + (target - e0) / slope) if slope < 0 else None
    if above:
        return float(points[-1][0]), "above", extrapolated
    return float(points[0][0]), "below", extrapolated


def findings(
    table: dict[str, dict[str, Any]], methods: list[str], ks: dict[str, int], draws: int
) -> dict[str, Any]:
    """Computed statements: does the refit error fall with k, does pretraining beat scratch,
    and how many target frames it saves for equal force error."""
    sizes = sorted(int(n) for n in table)
    pretrained_methods = [m for m in methods if m != SCRATCH]
    by_k = sorted(pretrained_methods, key=lambda m: ks[m])
    out: dict[str, Any] = {"metric": "test force RMSE (meV/Å), mean over draws"}
    falls: dict[str, Any] = {}
    for n in sizes:
        row = table[str(n)]
        forces = [row[m]["force_rmse_mev_per_ang"] for m in by_k]
        energies = [row[m]["energy_rmse_mev_per_atom"] for m in by_k]
        noise = max(row[m]["force_rmse_std"] for m in by_k)
        falls[str(n)] = {
            "k": [ks[m] for m in by_k],
            "force_rmse": forces,
            "force_falls_with_k": all(b < a for a, b in itertools.pairwise(forces)),
            "energy_falls_with_k": all(b < a for a, b in itertools.pairwise(energies)),
            "largest_k_vs_joint_force_change_pct": round(100 * (forces[-1] / forces[0] - 1), 1),
            "spread_between_draws": noise if noise else None,
        }
    out["error_vs_k"] = falls
    every = [falls[str(n)]["force_falls_with_k"] for n in sizes]
    out["force_error_falls_with_k"] = (
        "at every refit size" if all(every) else "at no refit size" if not any(every)
        else "at refit sizes " + ", ".join(str(n) for n, f in zip(sizes, every, strict=True) if f)
    )  # fmt: skip

    curve = [(n, table[str(n)][SCRATCH]["force_rmse_mev_per_ang"]) for n in sizes]
    saved: dict[str, Any] = {}
    beats: dict[str, list[int]] = {}
    for m in pretrained_methods:
        saved[m] = {}
        beats[m] = []
        for n in sizes:
            error = table[str(n)][m]["force_rmse_mev_per_ang"]
            if error < table[str(n)][SCRATCH]["force_rmse_mev_per_ang"]:
                beats[m].append(n)
            frames, how, extrapolated = equivalent_frames(curve, error)
            entry: dict[str, Any] = {"scratch_frames_for_equal_error": None, "how": how}
            if frames is not None:
                entry["scratch_frames_for_equal_error"] = round(frames, 1)
                entry["frames_saved"] = round(frames - n, 1)
                if how == "above":
                    entry["note"] = (
                        f"better than scratch at {sizes[-1]} frames: saves at least "
                        f"{round(frames - n, 1)}"
                    )
                elif how == "below":
                    entry["note"] = (
                        f"worse than scratch at {sizes[0]} frames: pretraining costs frames here"
                    )
            if extrapolated is not None:
                entry["power_law_extrapolation"] = round(extrapolated, 1)
            saved[m][str(n)] = entry
    out["frames_saved_for_equal_force_error"] = saved
    out["pretraining_beats_scratch_at_sizes"] = beats
    best = {str(n): min(methods, key=lambda m: table[str(n)][m]["force_rmse_mev_per_ang"])
            for n in sizes}  # fmt: skip
    out["lowest_force_error"] = best
    lines = [
        "force RMSE vs k (" + ", ".join(str(ks[m]) for m in by_k) + "): "
        + "; ".join(f"N={n}: {', '.join(f'{e:.0f}' for e in falls[str(n)]['force_rmse'])}"
                    for n in sizes)
        + f" meV/Å; falls with k {out['force_error_falls_with_k']}"
    ]  # fmt: skip
    for m in pretrained_methods:
        parts = []
        for n in sizes:
            entry = saved[m][str(n)]
            frames = entry["scratch_frames_for_equal_error"]
            bound = {"above": ">= ", "below": "<= "}.get(entry["how"], "")
            extra = entry.get("power_law_extrapolation")
            parts.append(
                f"N={n} ~ {bound}{frames} scratch frames"
                + (f" (power law: {extra})" if bound and extra is not None else "")
            )
        lines.append(f"{m}: beats scratch at N = {beats[m] or 'none'}; " + "; ".join(parts))
    if draws < 2:
        lines.append("one refit set per size: the spread between draws is not measured")
    out["summary"] = lines
    out["summary"] = lines
    return out


def reference_findings(references: dict[str, Any]) -> str:
    """What the energy-reference measurements say, in one line."""
    kept = references["warm_start_keeps_pretrained_shifts"]
    at_init = references["pretrained_at_init"]
    as_is = [v["as_is"]["energy_rmse_mev_per_atom"] for v in at_init.values()]
    fixed = [v["with_target_references"]["energy_rmse_mev_per_atom"] for v in at_init.values()]
    text = (
        f"train(init_from=...) {'keeps' if kept else 'does not keep'} the pretrained package's "
        f"per-type energy shifts (level {references['reference_level']}'s) and "
        f"{'does not re-fit' if kept else 're-fits'} them to the new level: energy RMSE at init "
        f"on the target test set {min(as_is):.0f}-{max(as_is):.0f} meV/atom as is, "
        f"{min(fixed):.1f}-{max(fixed):.1f} with target references fitted on the refit set"
    )
    raw = references.get("raw_energy_refit")
    if raw:
        got, ref = raw["result"], raw["same_run_with_target_references"]
        text += (
            f"; fine-tuned on the raw target energies ({raw['method']}, N={raw['refit_frames']}): "
            f"force {got['force_rmse_mev_per_ang']:.0f} meV/Å, energy "
            f"{got['energy_rmse_mev_per_atom']:.0f} meV/atom (with references: "
            f"{ref['force_rmse_mev_per_ang']:.0f}, {ref['energy_rmse_mev_per_atom']:.1f})"
        )
    return text


# --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smallest sizes (<= 20 min, 2 cores)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--sizes", default=None, help="refit set sizes, comma-separated")
    parser.add_argument("--ks", default=None, help="Reptile inner steps k, comma-separated")
    parser.add_argument("--draws", type=int, default=None, help="random refit sets per size")
    parser.add_argument("--pretrain-frames", type=int, default=None)
    parser.add_argument("--refit-pool", type=int, default=None, help="target frames to draw from")
    parser.add_argument("--test-frames", type=int, default=None)
    parser.add_argument("--pretrain-steps", type=int, default=None, help="optimiser steps")
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs, all methods")
    parser.add_argument("--seed", type=int, default=0, help="pretraining seed")
    parser.add_argument("--cores", type=int, default=None, help="labeling cores (default: all)")
    parser.add_argument(
        "--raw-refit",
        default="auto",
        help="pretrained method fine-tuned on the raw target energies at the smallest size "
        "(auto: the first Reptile k; none: skip)",
    )
    args = parser.parse_args()
    preset = PRESETS["quick" if args.quick else "full"]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        sizes = sorted({int(s) for s in str(args.sizes).split(",") if s.strip()})
        ks = sorted({int(k) for k in str(args.ks).split(",") if k.strip()})
    except ValueError:
        parser.error("--sizes and --ks: comma-separated integers")
    if not sizes or sizes[0] < 2:
        parser.error("--sizes: at least one size, each >= 2 (one frame is held out)")
    if not ks or ks[0] < 2:
        parser.error("--ks: Reptile k >= 2 (k = 1 is the joint method, always run)")
    for name in ("draws", "pretrain_frames", "test_frames", "pretrain_steps", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: must be >= 1")
    if args.refit_pool < sizes[-1]:
        parser.error(f"--refit-pool ({args.refit_pool}) is smaller than the largest size")
    if ks[-1] > args.pretrain_steps:
        parser.error(f"--pretrain-steps ({args.pretrain_steps}) < k = {ks[-1]}: no outer step")
    work = args.work or ROOT / "runs" / ("bench-meta-quick" if args.quick else "bench-meta")
    work = work.resolve()
    started = time.perf_counter()
    load_start = os.getloadavg()
    stage: dict[str, float] = {}

    from hillwalker.engines.dataset import read_frames
    from hillwalker.engines.files import atomic_write_text
    from hillwalker.engines.nequip.data import energy_shifts

    work.mkdir(parents=True, exist_ok=True)
    level_files = {}
    for name, text in {**PRETRAIN_LEVELS, TARGET_NAME: TARGET_LEVEL}.items():
        level_files[name] = work / "levels" / f"{name}.yaml"
        atomic_write_text(level_files[name], text)

    t0 = time.perf_counter()
    frames = make_frames(work, args.pretrain_frames, args.refit_pool, args.test_frames)
    stage["md"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    labeling: dict[str, Any] = {}
    labeled: dict[str, Path] = {}
    for name in PRETRAIN_LEVELS:
        print(f"[label {name}]", file=sys.stderr, flush=True)
        labeled[name] = work / "labels" / f"pretrain-{name}.extxyz"
        labeling[name] = label(level_files[name], frames["pretrain"], labeled[name], args.cores)
    for part in ("pool", "test"):
        print(f"[label {TARGET_NAME} {part}]", file=sys.stderr, flush=True)
        labeled[part] = work / "labels" / f"{part}-{TARGET_NAME}.extxyz"
        labeling[f"{TARGET_NAME} ({part})"] = label(
            level_files[TARGET_NAME], frames[part], labeled[part], args.cores
        )
    stage["label"] = time.perf_counter() - t0
    pool, test = read_frames(labeled["pool"]), read_frames(labeled["test"])
    if len(pool) < sizes[-1]:
        raise SystemExit(f"{labeled['pool']}: {len(pool)} labeled frames < size {sizes[-1]}")

    t0 = time.perf_counter()
    datasets = {name: read_frames(labeled[name]) for name in PRETRAIN_LEVELS}
    models: dict[str, Any] = {}
    pretraining: dict[str, Any] = {}
    method_k: dict[str, int] = {SCRATCH: 0, JOINT: 1}
    for k in [1, *ks]:
        name = JOINT if k == 1 else f"reptile-k{k}"
        method_k[name] = k
        models[name], seconds = pretrained(work, datasets, k, args.pretrain_steps, args.seed)
        record = models[name].record
        last = (record.get("history") or [{}])[-1].get("val") or {}
        pretraining[name] = {
            "method": record["method"],
            "k": record["k"],
            "outer_steps": record["outer_steps"],
            "optimizer_steps": record["outer_steps"] * record["k"],
            "validation_force_rmse_mev_per_ang": {
                level: round(1000 * v["forces_rmse"], 1) for level, v in last.items()
            },
            "wall_s": round(seconds, 1),
        }
    stage["pretrain"] = time.perf_counter() - t0

    # energy references: what the warm start keeps, and the error before any target training
    references: dict[str, Any] = {"reference_level": next(iter(models.values())).record[
        "reference_level"]}  # fmt: skip
    smallest = sizes[0]
    first_draw = [pool[i] for i in np.random.default_rng(1000).permutation(len(pool))[:smallest]]
    references["target_per_element_fit_on_refit_set"] = target_offsets(
        first_draw, dict.fromkeys(datasets[MD_LEVEL][0].get_chemical_symbols(), 0.0)
    )
    references["train_own_shift_fit_on_refit_set"] = energy_shifts(
        first_draw, sorted(set(first_draw[0].get_chemical_symbols())), None, [labeled["pool"]]
    )
    at_init: dict[str, Any] = {}
    for name, model in models.items():
        offsets = target_offsets(first_draw, model.record["per_type_energy_shifts"])
        at_init[name] = {
            "package_shifts": package_shifts(model.package),
            "as_is": scored(model.package, test, None),
            "with_target_references": scored(model.package, test, offsets),
        }
    references["pretrained_at_init"] = at_init

    t0 = time.perf_counter()
    methods = [SCRATCH, *models]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {str(n): {m: [] for m in methods}
                                                        for n in sizes}  # fmt: skip
    for draw in range(args.draws):
        order = np.random.default_rng(1000 + draw).permutation(len(pool))
        for n in sizes:
            subset = [pool[i] for i in order[:n]]
            for method in methods:
                print(f"[refit {method} N={n} draw {draw}]", file=sys.stderr, flush=True)
                where = work / "refit" / f"draw{draw}-n{n}" / method
                runs[str(n)][method].append(
                    refit(where, subset, test, args.epochs, models.get(method))
                )
    stage["refit"] = time.perf_counter() - t0

    raw_method = (
        next((m for m in models if m != JOINT), JOINT) if args.raw_refit == "auto"
        else None if args.raw_refit == "none" else args.raw_refit
    )  # fmt: skip
    if raw_method is not None:
        if raw_method not in models:
            parser.error(f"--raw-refit: {raw_method!r} is not one of {', '.join(models)}")
        t0 = time.perf_counter()
        order = np.random.default_rng(1000).permutation(len(pool))
        subset = [pool[i] for i in order[:smallest]]
        where = work / "refit" / f"draw0-n{smallest}" / f"{raw_method}-raw-energies"
        print(f"[refit {raw_method} N={smallest} raw energies]", file=sys.stderr, flush=True)
        raw = refit(where, subset, test, args.epochs, models[raw_method], raw_energies=True)
        shifted_run = runs[str(smallest)][raw_method][0]
        references["raw_energy_refit"] = {
            "method": raw_method,
            "refit_frames": smallest,
            "what": "train(init_from=pretrained) on the target's energies as they are; scored "
            "as it is (no offsets)",
            "result": raw,
            "package_shifts_after_refit": package_shifts(Path(raw["package"])),
            "same_run_with_target_references": {
                k: shifted_run[k] for k in ("force_rmse_mev_per_ang", "energy_rmse_mev_per_atom")
            },
        }
        stage["raw_refit"] = time.perf_counter() - t0
    first_refit = Path(runs[str(smallest)][next(iter(models))][0]["package"])
    kept = package_shifts(first_refit)
    start_shifts = at_init[next(iter(models))]["package_shifts"]
    references["refitted_package_shifts"] = kept
    references["warm_start_keeps_pretrained_shifts"] = all(
        abs(kept[s] - start_shifts[s]) < 1e-6 for s in start_shifts
    )

    table: dict[str, dict[str, Any]] = {}
    for n in sizes:
        table[str(n)] = {}
        for method in methods:
            got = runs[str(n)][method]
            force = mean_std([g["force_rmse_mev_per_ang"] for g in got])
            energy = mean_std([g["energy_rmse_mev_per_atom"] for g in got])
            table[str(n)][method] = {
                "force_rmse_mev_per_ang": round(force[0], 2),
                "force_rmse_std": round(force[1], 2),
                "energy_rmse_mev_per_atom": round(energy[0], 3),
                "energy_rmse_std": round(energy[1], 3),
                "draws": [
                    {k: g[k] for k in ("force_rmse_mev_per_ang", "energy_rmse_mev_per_atom",
                                       "deployed_epoch", "wall_s")}
                    for g in got
                ],
            }  # fmt: skip
    stage["total"] = time.perf_counter() - started
    print(
        json.dumps(
            {
                "benchmark": "meta_learning",
                "quick": args.quick,
                "system": f"ethanol in vacuum; GFN1-xTB Langevin MD, a frame every {STRIDE} "
                f"steps of 0.5 fs; pretraining at {', '.join(f'{t:g}' for t in PRETRAIN_TEMPERATURES)}"
                f" K, refit pool and test set at {POOL_TEMPERATURE:g} K (independent runs)",
                "pretraining_levels": {
                    n: PRETRAIN_LEVELS[n].strip().replace("\n", "; ") for n in PRETRAIN_LEVELS
                },
                "target_level": {TARGET_NAME: TARGET_LEVEL.strip().replace("\n", "; ")},
                "template": str(TEMPLATE.relative_to(ROOT)),
                "frames": {
                    "pretraining_per_level": {n: len(d) for n, d in datasets.items()},
                    "refit_pool": len(pool),
                    "test": len(test),
                },
                "settings": {
                    "sizes": sizes,
                    "ks": ks,
                    "draws": args.draws,
                    "pretrain_optimizer_steps": args.pretrain_steps,
                    "fine_tune_epochs": args.epochs,
                    "torch_threads": 1,
                    "seed": args.seed,
                },
                "labeling": labeling,
                "pretraining": pretraining,
                "table": table,
                "energy_references": references,
                "findings": findings(table, methods, method_k, args.draws)
                | {"energy_references": reference_findings(references)},
                "wall_s": {k: round(v, 1) for k, v in stage.items()},
                "machine": {
                    "cpus": os.cpu_count(),
                    "load_average_start": [round(x, 2) for x in load_start],
                    "load_average_end": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(),
                },
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
