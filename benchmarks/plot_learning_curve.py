"""The learning curves in one figure: error against single points, per method, on both test sets.

    .venv/bin/python benchmarks/plot_learning_curve.py docs/results/learning-curve-*.json \
        --thermal docs/results/thermal-pool-36-72-152sp-2026-12-04.json -o docs/img/lc.png

Reads what ``bench_learning_curve.py`` and ``bench_thermal_pool.py`` printed (saved as JSON) and
computes nothing. The fixed test set's panels (near-equilibrium forces, large-pore forces, energies
over all frames) draw every generation of a walker method (``curves_by_seed``: one line per
method) and the from-scratch methods (``random``, ``oracle``) at each budget they were trained
for; results of one method at one number of single points in several files are the same run or
its continuation (the benchmark resumes), so the last file read wins. The thermal panels (np and
lp starts, when ``--thermal`` is given) show the same seed's models on the pooled own-MD frames.
One seed (``--seed``, default 0): the figure shows runs, not means. A walker campaign run with
``--set`` (its JSON's ``campaign_settings``) is a line of its own, named by those settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

METHODS = ("shared", "none", "random", "oracle")
STYLE = {
    "shared": ("tab:red", "-o"),
    "none": ("tab:blue", "-s"),
    "random": ("tab:green", "--^"),
    "oracle": ("black", ":D"),
}
#: trained once from scratch: --set of the walker campaigns does not change them
FROM_SCRATCH = ("random", "oracle")
#: styles of walker methods run with other settings, once their method's own style is taken
OTHER_SETTINGS = (
    ("tab:purple", "-v"),
    ("tab:orange", "-<"),
    ("tab:brown", "->"),
    ("tab:cyan", "-p"),
)


def line_styles(labels: list[str]) -> dict[str, tuple[str, str]]:
    """Label → (color, style): a method's own style goes to the first of its lines (``shared`` or
    ``shared walkers.copies=1``), the next lines of that method get styles of their own."""
    styles, taken, extra = {}, set(), iter(OTHER_SETTINGS)
    for label in labels:
        base = label.split()[0]
        if base in STYLE and base not in taken:
            styles[label] = STYLE[base]
            taken.add(base)
        else:
            styles[label] = next(extra, ("tab:gray", "-x"))
    return styles


#: (bin, quantity, panel title) of the fixed test set's panels
FIXED_PANELS = (
    ("near_eq", "force_rmse_mev_per_ang", "fixed set, near equilibrium: force RMSE (meV/Å)"),
    ("lp", "force_rmse_mev_per_ang", "fixed set, large pore: force RMSE (meV/Å)"),
    ("all", "energy_rmse_mev_per_atom", "fixed set, all frames: energy RMSE (meV/atom)"),
)


def points(results: list[dict[str, Any]], seed: str, methods: list[str]) -> dict[str, dict]:
    """method → {single points → the errors per bin}, from every file's curves of ``seed``."""
    out: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in methods}
    for result in results:
        curves = result.get("curves_by_seed", {}).get(seed)
        if curves is None and seed == "0" and not result.get("seeds"):
            curves = result.get("curves", {})  # the first results had one seed, no seeds key
        settings = "".join(  # bench_learning_curve's --set SECTION.KEY=VALUE, two levels deep
            f" {section}.{key}={value}"
            for section, keys in (result.get("campaign_settings") or {}).items()
            for key, value in keys.items()
        )
        for method, curve in (curves or {}).items():
            if method in out:
                # a walker campaign run with --set is another line, named by its settings
                label = method + (settings if method not in FROM_SCRATCH else "")
                for point in curve:
                    out.setdefault(label, {})[int(point["single_points"])] = point["errors"]
    return {label: by_n for label, by_n in out.items() if by_n or label in methods}


def thermal_points(pool: dict[str, Any], seed: str, methods: list[str]) -> dict[str, dict]:
    """method → start → {budget → force RMSE} on the thermal pool."""
    out: dict[str, dict[str, dict[int, float]]] = {}
    for method in methods:
        for budget, by_seed in pool["scores"].get(method, {}).items():
            for start, scores in (by_seed.get(seed) or {}).items():
                rmse = scores["force_rmse_mev_per_ang"]
                out.setdefault(method, {}).setdefault(start, {})[int(budget)] = rmse
    return out


def plot(
    fixed: dict[str, dict[int, dict[str, Any]]],
    thermal: dict[str, dict[str, dict[int, float]]] | None,
    out: Path,
    title: str,
) -> None:
    from matplotlib.figure import Figure

    rows = 2 if thermal is not None else 1
    fig = Figure(figsize=(12.6, 3.8 * rows))
    grid = fig.subplots(rows, len(FIXED_PANELS), sharex=True, squeeze=False)
    axes = list(grid.flat)
    styles = line_styles([method for method, by_n in fixed.items() if by_n])
    for ax, (bin_name, quantity, label) in zip(axes, FIXED_PANELS, strict=False):
        for method, by_n in fixed.items():
            ns = sorted(n for n in by_n if bin_name in by_n[n])
            if ns:
                color, style = styles[method]
                ms = 3 if len(ns) > 4 else 6
                ax.plot(ns, [by_n[n][bin_name][quantity] for n in ns], style, color=color,
                        ms=ms, label=method)  # fmt: skip
        ax.set_title(label, fontsize=9)
    if thermal is not None:
        for ax, start in zip(axes[len(FIXED_PANELS) :], ("np", "lp"), strict=False):
            for method, by_start in thermal.items():
                by_n = by_start.get(start, {})
                if by_n:
                    color, style = STYLE.get(method, ("tab:gray", "-x"))
                    ns = sorted(by_n)
                    ax.plot(ns, [by_n[n] for n in ns], style, color=color, label=method)
            ax.set_title(f"thermal pool, from {start}: force RMSE (meV/Å)", fontsize=9)
    if thermal is not None:  # the sixth cell holds the legend
        legend_cell = axes.pop()
        legend_cell.axis("off")
        legend_cell.legend(*axes[0].get_legend_handles_labels(), loc="center", fontsize=10)
    else:
        axes[0].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("single points")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_name(f".{out.name}.part")
    fig.savefig(staged, dpi=100, format="png")
    staged.replace(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="bench_learning_curve.py JSON")
    parser.add_argument("--thermal", type=Path, help="bench_thermal_pool.py JSON")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("-o", "--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    results = []
    for path in args.results:
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"{path}: not a readable JSON file ({exc})") from exc
        if result.get("benchmark") != "learning_curve":
            raise SystemExit(
                f"{path}: benchmark is {result.get('benchmark')!r}, not learning_curve"
            )
        results.append(result)
    thermal = None
    if args.thermal is not None:
        pool = json.loads(args.thermal.read_text())
        if pool.get("benchmark") != "thermal_pool":
            raise SystemExit(f"{args.thermal}: benchmark is {pool.get('benchmark')!r}")
        thermal = thermal_points(pool, args.seed, methods)
    fixed = points(results, args.seed, methods)
    plot(fixed, thermal, args.out, f"MIL-53(Al), GFN1-xTB, seed {args.seed}")
    shown = {m: f"{min(by_n)}-{max(by_n)} ({len(by_n)} points)" if by_n else "none"
             for m, by_n in fixed.items()}  # fmt: skip
    print(json.dumps({"plot": str(args.out), "fixed_single_points": shown}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
