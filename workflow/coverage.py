"""Which collective-variable values the walkers have visited, from their COLVAR traces."""

from __future__ import annotations

from hillwalker.engines.plumed import colvar_rows
from hillwalker.state import CampaignDir


def cv_ranges(cdir: CampaignDir, up_to: int | None = None) -> dict[str, list[float]]:
    """[min, max] of every CV over the walkers' COLVARs of generations ≤ ``up_to`` (all when
    None), in PLUMED units as printed; bias columns and time are left out."""
    ranges: dict[str, list[float]] = {}
    for g, _, directory in cdir.walker_dirs():
        if up_to is not None and g > up_to:
            continue
        for colvar in sorted(directory.glob("COLVAR*")):
            for row in colvar_rows(colvar):
                for name, value in row.items():
                    if name == "time" or ".bias" in name or name.endswith("bias"):
                        continue
                    lo, hi = ranges.get(name, [value, value])
                    ranges[name] = [min(lo, value), max(hi, value)]
    return ranges


def coverage_stalled(
    cdir: CampaignDir, generation: int, generations: int, tolerance: float
) -> str | None:
    """Why the visited CV range counts as no longer growing, or None.

    Stalled: over the last ``generations`` generations, no CV's visited range grew by more than
    ``tolerance`` times its width ``generations`` generations ago.
    """
    before_g = generation - generations
    if before_g < 1:
        return None
    before, now = cv_ranges(cdir, before_g), cv_ranges(cdir, generation)
    if not now or set(now) != set(before):
        return None
    growth = {}
    for name, (lo, hi) in now.items():
        width = before[name][1] - before[name][0]
        grown = (before[name][0] - lo) + (hi - before[name][1])
        if width <= 0 or grown > tolerance * width:
            return None
        growth[name] = grown / width
    shown = ", ".join(f"{n} {100 * v:.2g} %" for n, v in growth.items())
    return (
        f"CV coverage has not grown in {generations} generation(s) "
        f"(range growth since generation {before_g}: {shown})"
    )
