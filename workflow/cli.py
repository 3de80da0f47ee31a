"""The ``hillwalker`` command line. Each command is thin: it parses options, calls the module that
does the work, and turns the known errors of that module into one clear line and exit code 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Active learning of NequIP potentials: CP2K labels, PLUMED metadynamics walkers, Parsl.",
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Active learning of NequIP potentials: CP2K labels, PLUMED metadynamics walkers, Parsl."""


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one error line to stderr; ``raise fail(...)``."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="Print problems only.")] = False,
) -> None:
    """Check that CP2K, PLUMED, torch, NequIP, Parsl, ASE, pymatgen (and SLURM) really work."""
    from hillwalker.doctor import run_checks

    checks = run_checks()
    broken = [c for c in checks if c.required and not c.ok]
    if as_json:
        typer.echo(
            json.dumps(
                {"ok": not broken, "components": {c.name: c.as_dict() for c in checks}}, indent=2
            )
        )
    elif not quiet:
        for c in checks:
            mark = "ok " if c.ok else ("!! " if c.required else "-- ")
            where = f"  {c.path}" if c.path else ""
            typer.echo(f"{mark}{c.name:<17} {c.version or '':<14}{where}")
            for key, value in c.details.items():
                typer.echo(f"     {key}: {value}")
    for c in checks:
        if not c.ok and (c.required or not quiet):
            typer.echo(f"{'problem' if c.required else 'note'}: {c.name}: {c.problem}", err=True)
    if broken:
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


__all__ = ["Path", "app", "fail", "main"]
