"""`hillwalker report DIR` and `hillwalker compare DIR…`: one static HTML page per call.

The page holds PNG figures (matplotlib, Agg) inlined as base64 data URIs and tables; it needs no
server, no network and no JavaScript. Every number in a table comes from
:func:`hillwalker.status.campaign_status` (the ``status --json`` dict), and each such cell names
its key (``data-key="single_points.done"``) and carries the exact JSON value (``data-value``).
Figures read the campaign directory only (COLVARs, hills snapshots, timings, the dataset), so a
report can be made of a running or an interrupted campaign. Figures are in :mod:`.report_figures`.
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hillwalker import report_figures as figs
from hillwalker.engines.files import atomic_write_text, read_json
from hillwalker.engines.plumed import HillsError, colvar_rows, read_hills, read_input
from hillwalker.fes import biasfactor
from hillwalker.state import CampaignDir, StateError, walker_material
from hillwalker.status import campaign_status

#: exit code of `report`/`compare` when there is nothing to report (not a campaign, no model yet)
NOTHING_TO_REPORT = 2
#: at most this many dataset frames go into the parity plots
PARITY_FRAMES = 100


class ReportError(RuntimeError):
    """Nothing to report; the message says why (the CLI exits with :data:`NOTHING_TO_REPORT`)."""


@dataclass
class CampaignData:
    """What the figures of one campaign are drawn from, read once."""

    cdir: CampaignDir
    status: dict[str, Any]
    #: (generation, walker) → COLVAR columns (CV values in PLUMED units, time in ps)
    colvars: dict[tuple[int, int], dict[str, np.ndarray]] = field(default_factory=dict)
    #: several materials: walker (as numbered in ``colvars``) → (material, its index there)
    walker_materials: dict[int, tuple[str, int]] = field(default_factory=dict)
    temperature: float | None = None
    biasfactor: float | None = None

    @property
    def name(self) -> str:
        return self.cdir.root.name

    def cv_names(self) -> list[str]:
        names: list[str] = []
        for columns in self.colvars.values():
            names += [n for n in columns if _is_cv(n) and n not in names]
        return names or list(self.status.get("cv_range", {}))


def _is_cv(name: str) -> bool:
    return name != "time" and ".bias" not in name and not name.endswith("bias")


def load_campaign_data(directory: str | Path) -> CampaignData:
    """Status and traces of a campaign; :class:`ReportError` when there is nothing to report."""
    root = Path(directory)
    if not (root / "campaign.yaml").is_file():
        raise ReportError(f"{root}: not a campaign directory (no campaign.yaml)")
    try:
        status = campaign_status(root)
    except (FileNotFoundError, StateError) as exc:
        raise ReportError(str(exc)) from None
    if not status["generations"]:
        raise ReportError(
            f"{root}: no model yet (no generation has finished training); "
            f"run 'hillwalker run {root}' first"
        )
    data = CampaignData(CampaignDir(root), status)
    numbers: dict[tuple[str, int], int] = {}  # several materials: one number per walker
    for g, w, d in data.cdir.walker_dirs():
        material = walker_material(d)
        if material is not None:
            number = numbers.setdefault((material, w), len(numbers))
            data.walker_materials[number] = (material, w)
            w = number
        data.colvars[(g, w)] = _read_colvars(sorted(d.glob("COLVAR*")))
    data.temperature, data.biasfactor = bias_settings(data.cdir)
    return data


def _read_colvars(paths: Sequence[Path]) -> dict[str, np.ndarray]:
    rows = [row for p in paths for row in colvar_rows(p)]
    names = sorted({n for row in rows for n in row}, key=lambda n: (n != "time", n))
    return {n: np.array([row.get(n, np.nan) for row in rows]) for n in names}


def bias_settings(
    cdir: CampaignDir, material: str | None = None
) -> tuple[float | None, float | None]:
    """(walker temperature K, METAD BIASFACTOR) from campaign.yaml and its PLUMED input (of
    ``material`` in a campaign of several)."""
    from hillwalker.config import ConfigError, load_campaign

    try:
        campaign = load_campaign(cdir.root)
        if material is not None:
            campaign = campaign.view(material)
        lines = read_input(cdir.root / campaign.plumed_file)
    except (ConfigError, OSError, ValueError, KeyError):
        return None, None
    return campaign.walkers.temperature, biasfactor(lines)


# -------------------------------------------------------------------------------------- figures


def generation_hills(data: CampaignData, material: str | None = None) -> dict[int, Any]:
    """The hills snapshot of each generation that has one (generations/NNN/hills, or its
    ``material``'s in a campaign of several).

    A generation's walkers leave its snapshot before its model is trained: a running campaign
    shows the bias of the generation under way too.
    """
    found = {}
    trained = {gen["generation"] for gen in data.status["generations"]}
    for g in sorted(trained | {g for g, _ in data.colvars}):
        folder = data.cdir.generation(g) / "hills"
        folder = folder if material is None else folder / material
        try:
            hills = read_hills(folder)
        except HillsError:
            continue
        if len(hills):
            found[g] = hills
    return found


def generation_timings(data: CampaignData) -> dict[int, dict[str, Any]]:
    timings = {}
    for gen in data.status["generations"]:
        record = read_json(data.cdir.timings(gen["generation"]))
        if record:
            timings[gen["generation"]] = record
    return timings


def parity_points(data: CampaignData) -> dict[str, Any] | None:
    """Reference and predicted energy/atom, forces, stress of the latest model (≤100 frames)."""
    from hillwalker.engines.composite import PotentialError
    from hillwalker.engines.dataset import STATUS_FAILED, DatasetError, labels, read_frames
    from hillwalker.engines.levels import LevelError
    from hillwalker.engines.nequip import ModelError, load_calculator
    from hillwalker.engines.potentials import is_potential, load_potential, read_potential

    latest = data.status["generations"][-1]
    model = Path(latest["model"])
    try:
        frames = [
            f for f in read_frames(data.cdir.dataset) if f.info.get("status") != STATUS_FAILED
        ]
        if is_potential(model):  # a campaign with two levels: the sum, on the target's frames
            target = read_potential(model).target
            frames = [f for f in frames if f.info.get("level", target) == target]
            calc = load_potential(model)
        else:
            calc = load_calculator(model.parent)
    except (DatasetError, ModelError, PotentialError, LevelError, OSError):
        return None
    step = max(1, -(-len(frames) // PARITY_FRAMES))
    points: dict[str, Any] = {"generation": latest["generation"], "n_frames": 0}
    for key in ("energy", "forces", "stress"):
        points[key] = ([], [])
    for atoms in frames[::step]:
        ref = labels(atoms)
        probe = atoms.copy()
        probe.calc = calc
        figs.add_parity_frame(points, ref, probe)
        points["n_frames"] += 1
    return points


# ----------------------------------------------------------------------------------------- html


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool | int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def cell(value: Any, key: str | None = None) -> str:
    """A table cell; with ``key``, marked as the ``status --json`` value at that key."""
    if key is None:
        return f"<td>{_fmt(value)}</td>"
    exact = html.escape(json.dumps(value), quote=True)
    return f'<td data-key="{html.escape(key)}" data-value="{exact}">{_fmt(value)}</td>'


def table(header: Sequence[str], rows: Sequence[Sequence[str]], caption: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(fig_id: str, png: bytes | None, caption: str) -> str:
    """An inline PNG with a known id and size (the size the figure was drawn at)."""
    if png is None:
        return f'<p class="missing" id="{fig_id}-missing">{html.escape(caption)}: no data yet.</p>'
    width, height = figs.png_size(png)
    src = "data:image/png;base64," + base64.b64encode(png).decode()
    return (
        f'<figure id="{fig_id}"><img id="{fig_id}-img" src="{src}" width="{width}" '
        f'height="{height}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
        "</figcaption></figure>"
    )


STYLE = """
body { font-family: sans-serif; margin: 16px; max-width: 1200px; color: #222; background: #fff; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
caption { text-align: left; font-weight: bold; padding: 4px 0; }
figure { margin: 8px 0; } figure img { display: block; }
figcaption { font-size: 13px; color: #444; max-width: 1000px; }
.missing { color: #a00; } .note { font-size: 13px; color: #444; }
"""


def page(title: str, body: Sequence[str]) -> str:
    made = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f'<h1>{html.escape(title)}</h1><p class="note">made {made}</p>'
        + "\n".join(body)
        + "</body></html>\n"
    )


# --------------------------------------------------------------------------------------- report


def build_report(directory: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of one campaign (default ``DIR/report.html``); its path."""
    from hillwalker import report_sections as sections

    data = load_campaign_data(directory)
    target = Path(out) if out is not None else data.cdir.root / "report.html"
    body = [
        sections.summary(data),
        sections.materials(data),
        sections.errors(data),
        sections.parity(data, parity_points(data)),
        sections.coverage(data),
        *(
            sections.free_energy(data, generation_hills(data, m), m)
            for m in (data.status.get("materials") or [None])
        ),
        sections.single_points(data),
        sections.wall_time(data, generation_timings(data)),
        sections.blow_ups(data),
    ]
    atomic_write_text(target, page(f"hillwalker report: {data.name}", body))
    target.chmod(0o644)  # a page to share (the atomic write makes it private)
    return target


def build_comparison(directories: Sequence[str | Path], out: str | Path) -> Path:
    """Write one page comparing several campaigns (error vs single points, CV coverage)."""
    from hillwalker import report_sections as sections

    if not directories:
        raise ReportError("compare needs at least one campaign directory")
    campaigns = [load_campaign_data(d) for d in directories]
    names = ", ".join(c.name for c in campaigns)
    body = [sections.comparison_table(campaigns), *sections.comparison_figures(campaigns)]
    target = Path(out)
    atomic_write_text(target, page(f"hillwalker compare: {names}", body))
    target.chmod(0o644)
    return target
