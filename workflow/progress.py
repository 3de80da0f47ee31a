"""Showing a campaign to a person: the live line of `run` and the report of `status`."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from hillwalker.campaign import Progress


class LiveProgress:
    """A live status line on a terminal; plain log lines (one per change) otherwise."""

    def __init__(self, directory: Path, console: Console | None = None) -> None:
        self.directory = directory
        self.console = console or Console(stderr=True)
        self.t0 = time.monotonic()
        self._live: Live | None = None
        self._last = ""

    def __enter__(self) -> LiveProgress:
        if self.console.is_terminal:
            self._live = Live(console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)

    def line(self, p: Progress) -> str:
        parts = [f"generation {p.generation}", p.stage]
        if p.walkers_total:
            parts.append(f"walkers {p.walkers_done}/{p.walkers_total} done")
            if p.stage == "exploring" and p.walker_steps:
                steps = " ".join(f"w{i}:{n}" for i, n in sorted(p.walker_steps.items()))
                parts.append(f"MD step {steps}")
        parts.append(f"single points {p.single_points_done} done, {p.single_points_failed} failed")
        if p.stage == "training" and p.max_epochs:
            parts.append(f"epoch {p.epoch or 0}/{p.max_epochs}")
        if p.skipped:
            parts.append(f"{p.skipped} found done")
        elapsed = time.monotonic() - self.t0
        parts.append(f"{int(elapsed // 60)}:{int(elapsed % 60):02d}")
        return " | ".join(parts)

    def update(self, p: Progress) -> None:
        text = self.line(p)
        if self._live is not None:
            self._live.update(text)
        else:
            core = text.rsplit(" | ", 1)[0]  # without the clock: print only real changes
            if core != self._last:
                print(text, file=sys.stderr, flush=True)
                self._last = core


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items())


def print_status(report: dict[str, Any]) -> None:
    console = Console()
    console.print(f"[bold]{report['directory']}[/bold]  state: {report['state']}")
    sp = report["single_points"]
    failed = _counts(sp["failed_by_class"]) or "none"
    retries = _counts(sp.get("retries", {}))
    console.print(
        f"single points: {sp['done']} done, {sp['failed']} failed ({failed})"
        + (f"; retries: {retries}" if retries else "")
        + (f"; by level: {_counts(sp['by_level'])}" if len(sp.get("by_level", {})) > 1 else "")
    )
    # the validation errors, then each test set's (evaluation.test_sets): force | energy
    tests = sorted({n for g in report["generations"] for n in (g.get("test_sets") or {})})
    table = Table(
        "gen", "new frames", "failed", "force RMSE meV/Å", "energy meV/atom",
        *(f"test {n}\nforce | energy" for n in tests), "model",
    )  # fmt: skip
    for g in report["generations"]:
        v = g["validation"]
        scored = [(g.get("test_sets") or {}).get(n) or {} for n in tests]
        table.add_row(
            str(g["generation"]),
            str(g["single_points_done"]),
            str(g["single_points_failed"]),
            _num(v.get("force_rmse_mev_per_ang")),
            _num(v.get("energy_rmse_mev_per_atom")),
            *(
                f"{_num(t.get('force_rmse_mev_per_ang'))} | "
                f"{_num(t.get('energy_rmse_mev_per_atom'))}"
                for t in scored
            ),
            g["model"],
        )
    console.print(table)
    materials = report.get("materials") or {}
    for material, m in materials.items():
        cvs = ", ".join(f"{n} {lo:.4g} … {hi:.4g}" for n, (lo, hi) in m["cv_range"].items())
        console.print(
            f"material {material} (from generation {m['joined_generation']}): single points "
            f"{m['single_points_done']} done, {m['single_points_failed']} failed; "
            f"{m['walker_segments']} walker segments, {m['walker_blow_ups']} blow-ups"
            + (f"; CV {cvs} (PLUMED units)" if cvs else "")
        )
    for name, (lo, hi) in report["cv_range"].items() if not materials else ():
        console.print(f"CV {name}: {lo:.4g} … {hi:.4g} (PLUMED units)")
    wt = report["wall_time_seconds"]
    console.print(
        f"wall time: MD {wt['md']:.0f} s, single points {wt['dft']:.0f} s, training {wt['train']:.0f} s"
    )
    for b in report.get("walker_blow_ups", []):
        reset = b.get("reset_to") or f"step {b.get('reset_to_step')}"
        console.print(
            f"walker {b['walker']} of generation {b['generation']} blew up at step "
            f"{b.get('step')} ({b.get('reason')}); reset to {reset}"
        )
    for t in report.get("failed_trainings", []):
        console.print(f"[red]training of generation {t['generation']} failed:[/red] {t['error']}")
    redo = {k: v for k, v in report.get("will_redo", {}).items() if v}
    if report["state"] == "interrupted":
        if report.get("stopped_by"):
            console.print(f"stopped by: {report['stopped_by']}")
        console.print(f"interrupted; the next run redoes only unfinished tasks: {redo or 'none'}")


def _num(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "-"
