"""The thermal test set's results in one figure: learning curves per region and the energy profile.

    .venv/bin/python benchmarks/plot_thermal_set.py docs/results/thermal-set-*.json \
        --budget 72 -o docs/img/thermal-set-72sp.png

Reads what ``bench_thermal_set.py`` printed (saved as JSON; several files: their rows are
merged, a later file's row of the same label and seed wins) and computes nothing. Panels: force
RMSE against single points in the np, path and lp regions (every generation of a walker row run
with ``--curve``, one line per seed; the other rows as points at their budgets), and the 400 K
energy along the np → lp path at ``--budget`` (each row's first seed; reference in black).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

COLORS = ("tab:red", "tab:blue", "tab:green", "black", "tab:purple", "tab:orange", "tab:brown")
REGIONS = ("np", "path", "lp")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--budget", default="72")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: dict[str, dict[str, Any]] = {}
    for path in args.results:
        for label, seeds in json.loads(path.read_text())["scores"].items():
            rows.setdefault(label, {}).update(seeds)
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.6))
    for color, (label, seeds) in zip(COLORS, rows.items(), strict=False):
        for n, (_, row) in enumerate(sorted(seeds.items())):
            name = label if n == 0 else None
            for ax, region in zip(axes[:3], REGIONS, strict=True):
                if "curve" in row:
                    x = [p["single_points"] for p in row["curve"]]
                    y = [p[region]["force_rmse_mev_per_ang"] for p in row["curve"]]
                    ax.plot(x, y, "-", color=color, alpha=0.8, lw=1.2, label=name)
                else:
                    budgets = sorted(int(b) for b in row if b.isdigit())
                    y = [row[str(b)][region]["force_rmse_mev_per_ang"] for b in budgets]
                    ax.plot(budgets, y, "o--", color=color, label=name)
        first = seeds[sorted(seeds)[0]].get(args.budget)
        if first is not None:
            profile = first["profile"]
            axes[3].plot(
                [p["volume"] for p in profile],
                [p["predicted_mev_per_atom"] for p in profile],
                "o-", color=color, label=f"{label} (seed {sorted(seeds)[0]})",
            )  # fmt: skip
            reference = profile
    if rows:
        axes[3].plot(
            [p["volume"] for p in reference],
            [p["reference_mev_per_atom"] for p in reference],
            "k*-", lw=2.5, ms=10, label="GFN1-xTB (reference)",
        )  # fmt: skip
    for ax, region in zip(axes[:3], REGIONS, strict=True):
        ax.set_title(f"thermal frames, {region}: force RMSE (meV/Å)")
        ax.set_xlabel("single points")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[3].set_title(f"400 K energy along np → lp at {args.budget} single points")
    axes[3].set_xlabel("cell volume (Å³)")
    axes[3].set_ylabel("mean energy − np cell's (meV/atom)")
    axes[3].legend(fontsize=8)
    axes[3].grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
