"""Element transfer on a real pair at a quantum level: MIL-53(Ga) from a MIL-53(Al) model, GFN1-xTB.

    .venv/bin/python benchmarks/bench_element_transfer_mil53.py [--work DIR] [--sizes 2,5,10,20]
        [--draws 2] [--epochs 60] [--source-epochs 60] [--threads 1]

- Al data: the 48 MIL-53(Al) frames across np → lp of ``tests/data/mil53_xtb_frames.extxyz``
  (CP2K GFN1-xTB, the benchmark level); the source model trains on the 36 that are not every 4th.
- Ga data: the same 48 geometries with Al → Ga and the cell (and atoms) scaled by 1.02 (Ga–O is
  ~3 % longer than Al–O), labeled here by CP2K at the same level (cached in ``--work``). Every 4th
  frame (12, across np, the path and lp) is the Ga test set, never trained on; the other 36 are the
  pool the training sets are drawn from.
- For each size N and draw: a Ga model from scratch, and one started from the Al model by model
  surgery (``--species-map Ga=Al``: every Al weight copied to Ga, the Ga energy shift fitted to the
  N frames), both trained the same epochs with the same settings; plus the transferred model
  before any training. Scored on the Ga test set: force RMSE (meV/Å), energy RMSE (meV/atom).

Prints one JSON object whatever it shows; ``findings`` is computed from the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
AL_FRAMES = ROOT / "tests" / "data" / "mil53_xtb_frames.extxyz"
LEVEL = ROOT / "templates" / "mil53-al" / "levels" / "xtb.inp"
SCALE = 1.02


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ga_frames(work: Path) -> list[Any]:
    """The Al frames with Al → Ga, scaled, labeled at the xTB level (cached, one by one)."""
    from hillwalker.engines.dataset import read_frames, write_frames
    from hillwalker.engines.levels import RunOptions, load_level

    out = work / "ga_frames.extxyz"
    if out.is_file():
        return read_frames(out)
    level = load_level(LEVEL)
    labeled = []
    for i, al in enumerate(read_frames(AL_FRAMES)):
        ga = al.copy()
        ga.calc = None
        ga.set_chemical_symbols(["Ga" if s == "Al" else s for s in al.get_chemical_symbols()])
        ga.set_cell(al.cell.array * SCALE, scale_atoms=True)
        ga.info = {"source": al.info.get("source"), "index": i}
        result = level.single_point(ga, work / "sp" / f"{i:03d}", RunOptions(cores=1))
        if result.status != "done":
            log(f"Ga frame {i}: {result.failure}: {result.message}")
            continue
        labeled.append(result.to_atoms(ga, level=level.name))
        log(f"Ga frame {i}: {result.code_seconds:.1f} s")
    write_frames(out, labeled)
    return labeled


def settings(epochs: int, n_frames: int, args: argparse.Namespace) -> Any:
    from hillwalker.engines.nequip import TrainSettings

    return TrainSettings.from_template(
        None,
        epochs=epochs,
        num_features=16,
        learning_rate=args.learning_rate,
        batch_size=min(2, max(1, n_frames - 1)),
        validation_fraction=0.1,
        checkpoint="last",
        seed=0,
    )


def score(model: Path, frames: list[Any], threads: int) -> dict[str, float]:
    from hillwalker.engines.nequip import evaluate

    got = evaluate(model, frames, device="cpu", threads=threads)
    return {
        "force_rmse_mev_per_ang": round(got["force_rmse_mev_per_ang"], 1),
        "energy_rmse_mev_per_atom": round(got["energy_rmse_mev_per_atom"], 2),
    }


def train(frames: list[Any], out: Path, epochs: int, args: argparse.Namespace, init=None) -> Path:
    from hillwalker.engines.dataset import write_frames
    from hillwalker.engines.nequip import train as nequip_train

    out.mkdir(parents=True, exist_ok=True)
    data = out / "data.extxyz"
    write_frames(data, frames)
    model = nequip_train(
        data,
        out / "model",
        settings=settings(epochs, len(frames), args),
        init_from=init,
        device="cpu",
        compile=False,
        threads=args.threads,
    )
    return model.package


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "element-transfer-mil53")
    parser.add_argument("--sizes", default="2,5,10,20")
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=60, help="Ga trainings")
    parser.add_argument("--source-epochs", type=int, default=60, help="the Al model")
    parser.add_argument("--learning-rate", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    from hillwalker.engines.dataset import read_frames
    from hillwalker.modeling import transferred_start

    started = time.perf_counter()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    al = read_frames(AL_FRAMES)
    log("labeling the Ga frames (cached)")
    ga = ga_frames(work)
    test = [f for f in ga if f.info["index"] % 4 == 3]
    pool = [f for f in ga if f.info["index"] % 4 != 3]
    label_seconds = time.perf_counter() - started

    log("training the Al source model")
    source = train(
        [f for i, f in enumerate(al) if i % 4 != 3], work / "al", args.source_epochs, args
    )
    results: list[dict[str, Any]] = []
    forces = np.concatenate([f.get_forces() for f in test])
    zero_forces = float(np.sqrt(np.mean(forces**2))) * 1000
    for n in [int(s) for s in args.sizes.split(",")]:
        for draw in range(args.draws):
            rng = np.random.default_rng(1000 * n + draw)
            chosen = [pool[i] for i in sorted(rng.choice(len(pool), size=n, replace=False))]
            where = work / f"n{n}-d{draw}"
            start = transferred_start(source, where, {"Ga": "Al"}, chosen, args.threads)
            results.append(
                {"n": n, "draw": draw, "method": "transfer_untrained",
                 "test": score(start, test, args.threads)}
            )  # fmt: skip
            for method, init in (("scratch", None), ("transfer", start)):
                t0 = time.perf_counter()
                package = train(chosen, where / method, args.epochs, args, init=init)
                results.append(
                    {"n": n, "draw": draw, "method": method,
                     "train_seconds": round(time.perf_counter() - t0, 1),
                     "test": score(package, test, args.threads)}
                )  # fmt: skip
                log(f"N={n} draw {draw} {method}: {results[-1]['test']}")
    summary = summarize(results)
    print(
        json.dumps(
            {
                "benchmark": "element_transfer_mil53_al_to_ga_gfn1_xtb",
                "settings": {**{k: str(v) for k, v in vars(args).items()}, "scale": SCALE},
                "frames": {"ga_labeled": len(ga), "ga_test": len(test), "ga_pool": len(pool)},
                "zero_force_rmse_mev_per_ang": round(zero_forces, 1),
                "source_on_al_test": score(
                    source, [f for i, f in enumerate(al) if i % 4 == 3], args.threads
                ),
                "summary_mean_over_draws": summary,
                "findings": findings(summary),
                "results": results,
                "wall_seconds": {
                    "label": round(label_seconds, 1),
                    "total": round(time.perf_counter() - started, 1),
                },
            },
            indent=1,
        )
    )
    return 0


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in results:
        out.setdefault(str(r["n"]), {}).setdefault(r["method"], {})
    for n, methods in out.items():
        for method in methods:
            rows = [r["test"] for r in results if str(r["n"]) == n and r["method"] == method]
            methods[method] = {
                key: round(float(np.mean([row[key] for row in rows])), 2) for key in rows[0]
            }
    return out


def findings(summary: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    lines = []
    for n, m in summary.items():
        s, t = m["scratch"]["force_rmse_mev_per_ang"], m["transfer"]["force_rmse_mev_per_ang"]
        winner = "transfer" if t < s else "scratch"
        lines.append(
            f"N={n}: force RMSE scratch {s:g}, transfer {t:g} meV/Å — {winner} lower "
            f"({abs(s - t) / max(s, t) * 100:.0f} %)"
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
