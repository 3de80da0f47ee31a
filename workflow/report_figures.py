"""The report's figures: matplotlib (Agg, no pyplot state) → PNG bytes.

Each function takes plain numbers and returns the PNG, or None when there is nothing to draw.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from ase import Atoms, units
from matplotlib.axes import Axes
from matplotlib.figure import Figure

#: figures are drawn at this resolution, and shown at their pixel size
DPI = 100
#: the three error columns of a validation or test record, with their axis labels
ERROR_KEYS = (
    ("energy_rmse_mev_per_atom", "energy RMSE (meV/atom)"),
    ("force_rmse_mev_per_ang", "force RMSE (meV/Å)"),
    ("stress_rmse_gpa", "stress RMSE (GPa)"),
)


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk."""
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.0, 0.9, max(n, 1))]


# ------------------------------------------------------------------------------------ errors


def errors(generations: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Validation (solid) and test-set (dashed) RMSEs per generation, one panel per quantity."""
    fig = Figure(figsize=(12, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    drawn = False
    gens = [g["generation"] for g in generations]
    test_names = sorted({n for g in generations for n in (g.get("test_sets") or {})})
    for ax, (key, label) in zip(axes, ERROR_KEYS, strict=True):
        drawn |= _error_line(
            ax,
            gens,
            [(g.get("validation") or {}).get(key) for g in generations],
            "validation",
            "-o",
        )
        for name in test_names:
            values = [((g.get("test_sets") or {}).get(name) or {}).get(key) for g in generations]
            drawn |= _error_line(ax, gens, values, f"test: {name}", "--s")
        ax.set_xlabel("generation")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return png(fig) if drawn else None


def _error_line(ax: Axes, gens: list[int], values: list[Any], label: str, style: str) -> bool:
    points = [(g, v) for g, v in zip(gens, values, strict=True) if isinstance(v, int | float)]
    if not points:
        return False
    x, y = zip(*points, strict=True)
    ax.plot(x, y, style, label=label)
    return True


# ------------------------------------------------------------------------------------ parity


def add_parity_frame(points: dict[str, Any], ref: Mapping[str, Any], probe: Atoms) -> None:
    """Append one frame's reference and predicted values (eV/atom, eV/Å, GPa)."""
    n = len(probe)
    points["energy"][0].append(ref["energy"] / n)
    points["energy"][1].append(probe.get_potential_energy() / n)
    points["forces"][0].extend(np.ravel(ref["forces"]))
    points["forces"][1].extend(np.ravel(probe.get_forces()))
    if "stress" in ref and probe.cell.rank == 3:
        ref_stress = np.ravel(ref["stress"])
        if ref_stress.size == 9:
            ref_stress = ref_stress[[0, 4, 8, 5, 2, 1]]
        if np.all(np.isfinite(ref_stress)):
            points["stress"][0].extend(ref_stress / units.GPa)
            points["stress"][1].extend(probe.get_stress(voigt=True) / units.GPa)


def parity(points: Mapping[str, Any]) -> bytes | None:
    """Predicted vs reference energy/atom, force components, stress components."""
    panels = [
        ("energy", "energy (eV/atom)", 1000.0, "meV/atom"),
        ("forces", "force component (eV/Å)", 1000.0, "meV/Å"),
        ("stress", "stress component (GPa)", 1.0, "GPa"),
    ]
    if not points.get("energy") or not points["energy"][0]:
        return None
    fig = Figure(figsize=(12, 4), layout="constrained")
    for ax, (key, label, scale, unit) in zip(fig.subplots(1, 3), panels, strict=True):
        ref, pred = (np.asarray(v, dtype=float) for v in points[key])
        ax.set_xlabel(f"reference {label}")
        ax.set_ylabel(f"model {label}")
        if ref.size == 0:
            ax.text(0.5, 0.5, "no labels", ha="center", transform=ax.transAxes)
            continue
        lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=1)
        ax.scatter(ref, pred, s=6, alpha=0.6, color="tab:blue")
        rmse = float(np.sqrt(np.mean((pred - ref) ** 2))) * scale
        ax.set_title(f"RMSE {rmse:.3g} {unit} ({ref.size} values)", fontsize=10)
        ax.grid(alpha=0.3)
    return png(fig)


# ---------------------------------------------------------------------------- CV coverage


def coverage(
    by_generation: Mapping[int, Mapping[str, np.ndarray]], cv_names: Sequence[str]
) -> bytes | None:
    """Histogram of the CV values visited in each generation (all walkers), one panel per CV."""
    if not by_generation or not cv_names:
        return None
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(cv_names)))
    palette = colors(len(by_generation))
    for ax, name in zip(axes, cv_names, strict=True):
        draw_coverage(ax, by_generation, name, palette)
    return png(fig)


def draw_coverage(
    ax: Axes, by_generation: Mapping[int, Mapping[str, np.ndarray]], name: str, palette: list[Any]
) -> None:
    values = [v[name][np.isfinite(v[name])] for v in by_generation.values() if name in v]
    if not values or not any(v.size for v in values):
        ax.text(0.5, 0.5, "no samples", ha="center", transform=ax.transAxes)
        return
    everything = np.concatenate(values)
    bins = np.linspace(everything.min(), everything.max() + 1e-12, 41).tolist()
    for color, (g, columns) in zip(palette, sorted(by_generation.items()), strict=False):
        if name in columns and columns[name].size:
            ax.hist(
                columns[name], bins=bins, histtype="step", color=color, lw=1.5, label=f"gen {g}"
            )
    ax.set_xlabel(name)
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)


def cv_series(
    walkers: Mapping[int, Sequence[tuple[int, Mapping[str, np.ndarray]]]],
    name: str,
    blow_ups: Sequence[Mapping[str, Any]],
) -> bytes | None:
    """Each walker's CV against MD time, segment after segment (generation boundaries dotted)."""
    if not walkers:
        return None
    fig = Figure(figsize=(12, 2.2 * len(walkers) + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(walkers), 1, sharex=True))
    for ax, (w, segments) in zip(axes, sorted(walkers.items()), strict=True):
        offset = 0.0
        for g, columns in segments:
            if name not in columns or "time" not in columns or not columns["time"].size:
                continue
            t = columns["time"] - columns["time"][0] + offset
            ax.plot(t, columns[name], lw=1, label=f"gen {g}")
            ax.axvline(offset, color="0.7", ls=":", lw=1)
            for event in blow_ups:
                if event.get("walker") == w and event.get("generation") == g:
                    ax.axvline(offset, color="tab:red", lw=2)
            offset = float(t[-1])
        ax.set_ylabel(f"walker {w}\n{name}")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("MD time over the walker's segments (ps)")
    return png(fig)


# ------------------------------------------------------------------------------------- FES


def fes_1d(axis: np.ndarray, surfaces: Mapping[int, np.ndarray], name: str) -> bytes | None:
    """F(s) of each generation's hills, each shifted so that its minimum is 0."""
    if not surfaces:
        return None
    fig = Figure(figsize=(12, 4), layout="constrained")
    ax = fig.subplots()
    for color, (g, values) in zip(colors(len(surfaces)), sorted(surfaces.items()), strict=True):
        ax.plot(axis, values - values.min(), color=color, label=f"gen {g}")
    ax.set_xlabel(name)
    ax.set_ylabel("free energy (kJ/mol)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig)


def fes_2d(axes: Sequence[np.ndarray], values: np.ndarray, names: Sequence[str]) -> bytes:
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    ax = fig.subplots()
    mesh = ax.contourf(axes[0], axes[1], (values - values.min()).T, levels=20, cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="free energy (kJ/mol)")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    return png(fig)


# ------------------------------------------------------------------------ bars and counts


def bars(
    groups: Sequence[Any],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    size: tuple[float, float] = (12, 3.6),
) -> bytes | None:
    """Grouped bars: one group per x value, one bar per series."""
    if not groups or not series:
        return None
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(series)
    x = np.arange(len(groups))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, [str(g) for g in groups])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return png(fig)


def side_by_side(n: int, draw: Callable[[Axes, int], None], *, height: float = 3.6) -> bytes | None:
    """``n`` panels in a row, ``draw(ax, i)`` fills panel i (one campaign each)."""
    if n == 0:
        return None
    fig = Figure(figsize=(max(6.0, 4.0 * n), height), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n, sharey=True))
    for i, ax in enumerate(axes):
        draw(ax, i)
    return png(fig)
