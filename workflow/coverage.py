"""Which collective-variable values the walkers have visited (their COLVAR traces), and
whether the free-energy surface of the shared bias has settled (the generations' hills)."""

from __future__ import annotations

import numpy as np

from hillwalker import fes
from hillwalker.engines.plumed import HillsError, colvar_rows, read_hills
from hillwalker.state import CampaignDir, walker_material

#: grid points per CV where two generations' surfaces are compared (1 CV; 2 CVs: 41 x 41)
FES_POINTS = {1: 201, 2: 41}


def cv_ranges(
    cdir: CampaignDir, up_to: int | None = None, material: str | None = None
) -> dict[str, list[float]]:
    """[min, max] of every CV over the walkers' COLVARs of generations ≤ ``up_to`` (all when
    None) of ``material`` (in a campaign of several; None: every walker), in PLUMED units as
    printed; bias columns and time are left out."""
    ranges: dict[str, list[float]] = {}
    for g, _, directory in cdir.walker_dirs():
        if up_to is not None and g > up_to:
            continue
        if material is not None and walker_material(directory) != material:
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


def fes_change(cdir: CampaignDir, generation: int) -> float | None:
    """Largest change (kJ/mol) of the free-energy surface between the hills snapshots of
    ``generation`` − 1 and ``generation``, over the CV range the walkers visited up to
    ``generation``, each surface shifted to a minimum of 0. None when it cannot be measured
    (fewer than two snapshots, no hills, other CVs, more than 2 CVs, an empty range)."""
    if generation < 2:  # generation 0 has no walkers, generation 1 the first snapshot
        return None
    try:
        now = read_hills(cdir.generation(generation) / "hills")
        before = read_hills(cdir.generation(generation - 1) / "hills")
    except HillsError:
        return None
    names = now.cv_names
    if not len(now) or not len(before) or before.cv_names != names or len(names) not in FES_POINTS:
        return None
    visited = cv_ranges(cdir, generation)
    if any(n not in visited or visited[n][1] <= visited[n][0] for n in names):
        return None
    points = FES_POINTS[len(names)]
    axes = [np.linspace(visited[n][0], visited[n][1], points) for n in names]
    surfaces = [fes.to_zero(fes.free_energy(h, axes)) for h in (before, now)]
    return float(np.max(np.abs(surfaces[1] - surfaces[0])))


def fes_settled(cdir: CampaignDir, generation: int, tolerance: float) -> str | None:
    """Why the free-energy surface counts as settled (changed by ≤ ``tolerance`` kJ/mol in
    the last generation, see :func:`fes_change`), or None."""
    change = fes_change(cdir, generation)
    if change is None or change > tolerance:
        return None
    return (
        f"free-energy surface settled: it changed by at most {change:.3g} kJ/mol between "
        f"generations {generation - 1} and {generation} (≤ {tolerance:g}) over the visited range"
    )
