"""The sections of a report page: a heading, tables of ``status --json`` values, figures."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hillwalker import fes
from hillwalker import report_figures as figs
from hillwalker.report import CampaignData, bias_settings, cell, figure, table

#: points of the FES grid along one CV (sum_hills --bin)
FES_BINS = 200


def _section(title: str, *parts: str) -> str:
    return f"<section><h2>{title}</h2>{''.join(parts)}</section>"


def summary(data: CampaignData) -> str:
    s = data.status
    rows = [
        ["<th>directory</th>", cell(s["directory"], "directory")],
        ["<th>state</th>", cell(s["state"], "state")],
        ["<th>generations done</th>", cell(s["generations_done"], "generations_done")],
        ["<th>stopped by</th>", cell(s.get("stopped_by"), "stopped_by")],
        ["<th>single points done</th>", cell(s["single_points"]["done"], "single_points.done")],
        [
            "<th>single points failed</th>",
            cell(s["single_points"]["failed"], "single_points.failed"),
        ],
    ]
    for kind, seconds in s["wall_time_seconds"].items():
        rows.append([f"<th>task time {kind} (s)</th>", cell(seconds, f"wall_time_seconds.{kind}")])
    for name, (lo, hi) in s["cv_range"].items():
        rows.append([f"<th>CV {name} min</th>", cell(lo, f"cv_range.{name}.0")])
        rows.append([f"<th>CV {name} max</th>", cell(hi, f"cv_range.{name}.1")])
    return _section("Campaign", table(["", "value"], rows, "from status --json"))


def errors(data: CampaignData) -> str:
    gens = data.status["generations"]
    test_names = sorted({n for g in gens for n in (g.get("test_sets") or {})})
    header = ["generation", "E val (meV/atom)", "F val (meV/Å)", "σ val (GPa)"]
    header += [f"{q} {n}" for n in test_names for q in ("E test", "F test", "σ test")]
    header += ["single points done", "failed", "training (s)"]
    rows = []
    for i, g in enumerate(gens):
        key = f"generations.{i}"
        row = [cell(g["generation"], f"{key}.generation")]
        row += [
            cell((g.get("validation") or {}).get(k), f"{key}.validation.{k}")
            for k, _ in figs.ERROR_KEYS
        ]
        for n in test_names:
            scores = (g.get("test_sets") or {}).get(n) or {}
            row += [cell(scores.get(k), f"{key}.test_sets.{n}.{k}") for k, _ in figs.ERROR_KEYS]
        row += [
            cell(g["single_points_done"], f"{key}.single_points_done"),
            cell(g["single_points_failed"], f"{key}.single_points_failed"),
            cell(g.get("training_seconds"), f"{key}.training_seconds"),
        ]
        rows.append(row)
    what = "validation" + (" and test-set" if test_names else "")
    note = "" if test_names else '<p class="note">No test sets scored yet.</p>'
    return _section(
        "Errors per generation",
        figure("fig-errors", figs.errors(gens), f"{what} RMSE of each generation's model"),
        note,
        table(header, rows, "per generation, from status --json"),
    )


def parity(data: CampaignData, points: Mapping[str, Any] | None) -> str:
    if points is None:
        return _section("Parity", figure("fig-parity", None, "parity of the latest model"))
    caption = (
        f"model of generation {points['generation']} on {points['n_frames']} frames of "
        "dataset.extxyz (training and validation frames alike)"
    )
    return _section("Parity", figure("fig-parity", figs.parity(points), caption))


def materials(data: CampaignData) -> str:
    """A campaign of several materials: a row per material (nothing for one)."""
    found = data.status.get("materials") or {}
    if not found:
        return ""
    rows = []
    for name, m in found.items():
        key = f"materials.{name}"
        cvs = "; ".join(f"{n} {lo:.4g} … {hi:.4g}" for n, (lo, hi) in m["cv_range"].items())
        rows.append(
            [
                f"<th>{html.escape(name)}</th>",
                cell(m["joined_generation"], f"{key}.joined_generation"),
                cell(m["single_points_done"], f"{key}.single_points_done"),
                cell(m["single_points_failed"], f"{key}.single_points_failed"),
                cell(m["walker_segments"], f"{key}.walker_segments"),
                cell(m["walker_blow_ups"], f"{key}.walker_blow_ups"),
                cell(cvs or None),
            ]
        )
    header = ["material", "joined in generation", "single points done", "failed"]
    header += ["walker segments", "blow-ups", "CV range visited (PLUMED units)"]
    return _section("Materials", table(header, rows, "per material, from status --json"))


def coverage(data: CampaignData) -> str:
    names = data.cv_names()
    groups: dict[str | None, dict[int, dict[str, np.ndarray]]] = {}
    walkers: dict[int, list[tuple[int, dict[str, np.ndarray]]]] = {}
    for (g, w), columns in sorted(data.colvars.items()):
        material = data.walker_materials.get(w, (None, w))[0]
        merged = groups.setdefault(material, {}).setdefault(g, {})
        for name in names:
            if name in columns:
                merged[name] = np.concatenate([merged.get(name, np.zeros(0)), columns[name]])
        walkers.setdefault(w, []).append((g, columns))
    parts = [
        figure(
            "fig-cv-coverage" + ("" if material is None else f"-{material}"),
            figs.coverage(by_generation, names),
            "CV values visited by all walkers"
            + ("" if material is None else f" of material {html.escape(material)}")
            + " in each generation (COLVAR, PLUMED units)",
        )
        for material, by_generation in (groups or {None: {}}).items()
    ]
    for i, name in enumerate(names):
        parts.append(
            figure(
                f"fig-cv-series-{i}",
                figs.cv_series(walkers, name, data.status["walker_blow_ups"]),
                f"{name} of each walker over its segments (red line: a segment with a blow-up)",
            )
        )
    return _section("CV coverage", *parts)


def free_energy(data: CampaignData, hills: Mapping[int, Any], material: str | None = None) -> str:
    """The free energy from the hills (of ``material``'s bias in a campaign of several)."""
    title = "Free energy" + ("" if material is None else f" — {html.escape(material)}")
    fig_id = "fig-fes" + ("" if material is None else f"-{material}")
    if not hills:
        return _section(title, figure(fig_id, None, "free energy from the hills"))
    last = hills[max(hills)]
    names = list(last.cv_names)
    visited = (
        data.status["cv_range"]
        if material is None
        else data.status["materials"][material]["cv_range"]
    )
    axes = [_fes_axis(hills, k, visited.get(n)) for k, n in enumerate(names)]
    temperature, factor = data.temperature, data.biasfactor
    if material is not None:
        temperature, factor = bias_settings(data.cdir, material)
    gamma = f"γ = {factor:g}" if factor else "not well-tempered"
    temp = f", T = {temperature:g} K" if temperature else ""
    what = (
        f"F(s) = −(γ/(γ−1))·V(s) from the hills of each generation ({gamma}{temp}), the sum "
        "PLUMED's sum_hills makes; each curve shifted to a minimum of 0"
    )
    if len(names) == 1:
        surfaces = {g: fes.free_energy(h, axes) for g, h in sorted(hills.items())}
        png = figs.fes_1d(axes[0], surfaces, names[0])
    elif len(names) == 2:
        png = figs.fes_2d(axes, fes.free_energy(last, axes), names)
        what += f"; generation {max(hills)}"
    else:
        png = None
    return _section(title, figure(fig_id, png, what))


def _fes_axis(hills: Mapping[int, Any], k: int, visited: Sequence[float] | None) -> np.ndarray:
    """Grid along CV ``k``: the hills' centres ± 3σ and the visited range."""
    every = [h for h in hills.values() if len(h)]
    lo = min(float(np.min(h.centers[:, k] - 3 * h.sigmas[:, k])) for h in every)
    hi = max(float(np.max(h.centers[:, k] + 3 * h.sigmas[:, k])) for h in every)
    if visited:
        lo, hi = min(lo, visited[0]), max(hi, visited[1])
    period = every[-1].periods[k] if every[-1].periods else None
    if period is not None:
        return fes.grid_axis(period[0], period[1], FES_BINS, periodic=True)
    return fes.grid_axis(lo, hi, FES_BINS)


def single_points(data: CampaignData) -> str:
    s = data.status["single_points"]
    gens = data.status["generations"]
    png = figs.bars(
        [g["generation"] for g in gens],
        {
            "done": [g["single_points_done"] for g in gens],
            "failed": [g["single_points_failed"] for g in gens],
        },
        xlabel="generation",
        ylabel="single points",
    )
    failed = [
        [cell(c), cell(n, f"single_points.failed_by_class.{c}")]
        for c, n in s["failed_by_class"].items()
    ]
    retries = [[cell(c), cell(n, f"single_points.retries.{c}")] for c, n in s["retries"].items()]
    return _section(
        "Single points",
        figure("fig-single-points", png, "labeled frames per generation: done and failed"),
        table(["failure class", "frames"], failed or [[cell("none"), cell(0)]], "failures"),
        table(["retry", "times"], retries or [[cell("none"), cell(0)]], "retries"),
    )


def wall_time(data: CampaignData, timings: Mapping[int, Mapping[str, Any]]) -> str:
    gens = sorted(timings)
    busy = [timings[g].get("busy_seconds") or {} for g in gens]
    series = {
        "wall": [timings[g].get("wall_seconds") or 0.0 for g in gens],
        "MD": [b.get("md", 0.0) for b in busy],
        "labeling": [b.get("dft", 0.0) for b in busy],
        "training": [b.get("train", 0.0) for b in busy],
        "other (no task running)": [timings[g].get("idle_seconds") or 0.0 for g in gens],
    }
    png = figs.bars(gens, series, xlabel="generation", ylabel="seconds")
    rows = []
    for g in gens:
        labeling = timings[g].get("labeling") or {}
        rows.append(
            [
                cell(g),
                cell(timings[g].get("wall_seconds")),
                cell(labeling.get("cores")),
                cell(labeling.get("core_busy_fraction")),
                cell(timings[g].get("core_busy_fraction")),
                cell(bool(timings[g].get("resumed"))),
            ]
        )
    return _section(
        "Wall time",
        figure(
            "fig-wall-time",
            png,
            "each generation's wall time and the time each kind of "
            "task was running (generations/NNN/timings.json; kinds overlap)",
        ),
        table(
            [
                "generation",
                "wall (s)",
                "labeling cores",
                "labeling core use",
                "core use (CPU time / cores × wall)",
                "resumed",
            ],
            rows,
            "core use while labeling and over the whole generation (timings.json)",
        ),
    )


def blow_ups(data: CampaignData) -> str:
    events = data.status["walker_blow_ups"]
    keys = ("generation", "walker", "step", "reason")
    rows = [
        [cell(e.get(k), f"walker_blow_ups.{i}.{k}") for k in keys] for i, e in enumerate(events)
    ]
    failed = data.status["failed_trainings"]
    parts = [
        table(list(keys), rows, "walker blow-ups")
        if rows
        else '<p class="note">No walker blew up.</p>'
    ]
    if failed:
        parts.append(
            table(
                ["generation", "error"],
                [[cell(f.get("generation")), cell(f.get("error"))] for f in failed],
                "failed trainings",
            )
        )
    redo = {k: v for k, v in (data.status.get("will_redo") or {}).items() if v}
    if redo:
        parts.append(
            table(
                ["task kind", "tasks"],
                [[cell(k), cell(v, f"will_redo.{k}")] for k, v in redo.items()],
                "started, not finished: the next run redoes them",
            )
        )
    return _section("Walker blow-ups and failures", *parts)


# ------------------------------------------------------------------------------------ compare


def comparison_table(campaigns: Sequence[CampaignData]) -> str:
    rows = []
    for i, c in enumerate(campaigns):
        s = c.status
        last = s["generations"][-1].get("validation") or {}
        rows.append(
            [
                cell(c.name),
                cell(s["state"], f"{i}.state"),
                cell(s["generations_done"], f"{i}.generations_done"),
                cell(s["single_points"]["done"], f"{i}.single_points.done"),
                cell(s["single_points"]["failed"], f"{i}.single_points.failed"),
                cell(
                    last.get("force_rmse_mev_per_ang"),
                    f"{i}.generations.{len(s['generations']) - 1}.validation.force_rmse_mev_per_ang",
                ),
            ]
        )
    header = ["campaign", "state", "generations", "single points", "failed", "last F val (meV/Å)"]
    return _section("Campaigns", table(header, rows, "from each campaign's status --json"))


def comparison_figures(campaigns: Sequence[CampaignData]) -> list[str]:
    png = _error_vs_single_points(campaigns)
    names = sorted({n for c in campaigns for n in c.cv_names()})
    parts = [
        _section(
            "Error vs single points",
            figure(
                "fig-compare-errors",
                png,
                "validation RMSE of each generation's model against the single points done so far",
            ),
        )
    ]
    for k, name in enumerate(names):
        parts.append(
            _section(
                f"CV coverage: {name}",
                figure(
                    f"fig-compare-coverage-{k}",
                    _coverage_side_by_side(campaigns, name),
                    f"{name} visited in each generation, one panel per campaign",
                ),
            )
        )
    return parts


def _error_vs_single_points(campaigns: Sequence[CampaignData]) -> bytes | None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for c in campaigns:
        gens = c.status["generations"]
        done = np.cumsum([g["single_points_done"] for g in gens])
        for ax, (key, label) in zip(axes, figs.ERROR_KEYS, strict=True):
            values = [(g.get("validation") or {}).get(key) for g in gens]
            points = [(x, v) for x, v in zip(done, values, strict=True) if v is not None]
            if points:
                ax.plot(*zip(*points, strict=True), "-o", label=c.name)
            ax.set_xlabel("single points done")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=8)
    return figs.png(fig)


def _coverage_side_by_side(campaigns: Sequence[CampaignData], name: str) -> bytes | None:
    def draw(ax: Any, i: int) -> None:
        by_generation: dict[int, dict[str, np.ndarray]] = {}
        for (g, _), columns in sorted(campaigns[i].colvars.items()):
            if name in columns:
                old = by_generation.get(g, {}).get(name, np.zeros(0))
                by_generation[g] = {name: np.concatenate([old, columns[name]])}
        figs.draw_coverage(ax, by_generation, name, figs.colors(len(by_generation)))
        ax.set_title(campaigns[i].name, fontsize=10)

    return figs.side_by_side(len(campaigns), draw)
