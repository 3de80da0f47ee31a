"""The ``hillwalker`` command line. Each command is thin: it parses options, calls the module that
does the work, and turns the known errors of that module into one clear line and exit code 1."""

from __future__ import annotations

import json
import signal
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


@app.command()
def run(
    directory: Annotated[Path, typer.Argument(help="Campaign directory (with campaign.yaml).")],
    site: Annotated[
        Path | None, typer.Option("--site", help="Site profile YAML (default: this machine).")
    ] = None,
    generations: Annotated[
        int | None, typer.Option("--generations", help="Override stop.generations.")
    ] = None,
    smoke: Annotated[
        bool, typer.Option("--smoke", help="One generation with tiny settings, to check the path.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Go on despite an unsafe change of campaign.yaml.")
    ] = False,
) -> None:
    """Run a campaign, or resume it where it stopped."""
    from hillwalker.campaign import CampaignError
    from hillwalker.config import ConfigError
    from hillwalker.progress import LiveProgress
    from hillwalker.runner import run_campaign
    from hillwalker.state import CampaignDir, StateError

    profile = None
    try:
        if site is not None:
            from hillwalker.sites import load_site

            profile = load_site(site)
        with LiveProgress(directory) as live:
            models = run_campaign(
                directory,
                site=profile,
                generations=generations,
                smoke=smoke,
                force=force,
                on_progress=live.update,
            )
    except (ConfigError, StateError, CampaignError, FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    cdir = CampaignDir(directory)
    typer.echo(f"done: {len(models)} models (generations 0..{len(models) - 1})")
    typer.echo(f"  models:  {cdir.model_dir(0).parent.parent}/NNN/model/")
    typer.echo(f"  last:    {models[-1].compiled or models[-1].package}")
    typer.echo(f"  dataset: {cdir.dataset}")
    typer.echo(f"  status:  hillwalker status {directory} [--json]   (log: {cdir.log})")


@app.command()
def status(
    directory: Annotated[Path, typer.Argument(help="Campaign directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """What a campaign has done: generations, single points, errors, CV range, wall time."""
    from hillwalker.state import StateError
    from hillwalker.status import campaign_status

    try:
        report = campaign_status(directory)
    except (FileNotFoundError, StateError) as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from hillwalker.progress import print_status

    print_status(report)


@app.command()
def templates() -> None:
    """List the material templates that ship, one line each."""
    from hillwalker.material_templates import shipped_templates

    found = shipped_templates()
    width = max((len(t.name) for t in found), default=0)
    for t in found:
        typer.echo(f"{t.name:<{width}}  {t.description}")
    typer.echo(
        "\nhillwalker new DIR --template NAME  copies one; "
        "hillwalker new DIR --structure FILE.cif  starts a new material."
    )


@app.command()
def new(
    directory: Annotated[Path, typer.Argument(help="Campaign directory to create (new or empty).")],
    template: Annotated[
        str | None, typer.Option("--template", help="A shipped template (hillwalker templates).")
    ] = None,
    structure: Annotated[
        Path | None,
        typer.Option("--structure", help="Start structure of a new material (CIF or extxyz)."),
    ] = None,
    cv: Annotated[
        str,
        typer.Option(help="With --structure: volume, distance:I,J or torsion:I,J,K,L (from 1)."),
    ] = "volume",
    level: Annotated[
        str, typer.Option(help="With --structure: CP2K level, xtb or pbe-d3.")
    ] = "xtb",
    temperature: Annotated[
        float, typer.Option(help="With --structure: walker temperature, K.")
    ] = 300.0,
    primitive: Annotated[
        bool,
        typer.Option(help="With --structure: reduce a periodic structure to its primitive cell."),
    ] = False,
) -> None:
    """Make a campaign directory from a shipped template, or for a new material's structure."""
    from hillwalker.material_templates import TemplateError, new_from_structure, new_from_template

    if template is not None and structure is not None:
        raise fail("new: give either --template NAME or --structure FILE, not both")
    try:
        if template is not None:
            made = new_from_template(directory, template)
        elif structure is not None:
            made = new_from_structure(
                directory,
                structure,
                cv=cv,
                level=level,
                temperature=temperature,
                primitive=primitive,
            )
        else:
            raise fail("new: give --template NAME (see hillwalker templates) or --structure FILE")
    except TemplateError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"made {made}; check it with: hillwalker validate {made}")


@app.command()
def validate(
    directory: Annotated[Path, typer.Argument(help="Campaign directory.")],
    site: Annotated[
        Path | None, typer.Option("--site", help="Site profile (YAML) to check as well.")
    ] = None,
) -> None:
    """Check a campaign before anything runs; report every problem; print the CVs' start values."""
    from hillwalker.validate import validate_campaign

    report = validate_campaign(directory, site)
    if report.structure_summary:
        typer.echo(report.structure_summary)
    for value in report.cv_values:
        typer.echo(f"  CV {value.name:<12} {value.describe()}")
    for line in report.unavailable:
        typer.echo(f"note: {line}", err=True)
    for line in report.warnings:
        typer.echo(f"warning: {line}", err=True)
    for line in report.problems:
        typer.echo(f"problem: {line}", err=True)
    if report.problems:
        n = len(report.problems)
        raise fail(f"{directory}: {n} problem{'s' if n > 1 else ''}")
    typer.echo(f"ok: {directory} is ready to run")


@app.command("train")
def train_command(
    data: Annotated[list[Path], typer.Argument(help="Labeled frames (extxyz), one or more files.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Model directory to write.")],
    config: Annotated[
        Path | None,
        typer.Option("--config", help="NequIP hydra YAML (default: the MIL-53(Al) template)."),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option("--init", help="Warm start from a previous model (directory or .nequip.zip)."),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Override max_epochs.")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = "auto",
    compile_model: Annotated[
        bool, typer.Option("--compile/--no-compile", help="AOTInductor-compile for ASE MD.")
    ] = True,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="direct | delta | hierarchical | transfer: a potential from frames labeled at "
            "several levels (docs/multifidelity.md). Needs --target.",
        ),
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="Target level: its name or its level file.")
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option("--baseline", help="Baseline level: name or file (delta: the file)."),
    ] = None,
    intermediate: Annotated[
        list[str] | None,
        typer.Option(
            "--intermediate",
            help="hierarchical: a level between the baseline and the target (repeatable, "
            "cheapest first): one more model per step of the ladder.",
        ),
    ] = None,
    species_map: Annotated[
        list[str] | None,
        typer.Option(
            "--species-map",
            help="NEW=OLD (repeatable), with --init: element NEW starts from the model's element "
            "OLD (docs/element-transfer.md).",
        ),
    ] = None,
    refit_references: Annotated[
        bool,
        typer.Option(
            "--refit-references",
            help="With --init: re-fit every element's energy reference (per-atom shift) of the "
            "start model to DATA first: fine-tuning to another level of theory.",
        ),
    ] = False,
    freeze_layers: Annotated[
        int,
        typer.Option(
            "--freeze-layers",
            help="Keep the type embedding and the first N interaction layers as they start "
            "(with --init: transfer learning).",
        ),
    ] = 0,
) -> None:
    """Train a NequIP model (package + compiled model + model.json record) on labeled frames;
    with --method, a potential from labels at several levels of theory."""
    from hillwalker.engines.composite import PotentialError
    from hillwalker.engines.dataset import DatasetError
    from hillwalker.engines.levels import LevelError
    from hillwalker.engines.nequip import ModelError
    from hillwalker.engines.nequip.surgery import parse_species_map
    from hillwalker.modeling import describe_potential, describe_training, train_levels, train_model

    if species_map and (method is not None or target is not None or baseline is not None):
        raise fail("--species-map goes with a plain training (--init), not with --method")
    if method is not None or target is not None or baseline is not None or intermediate:
        if method is None or target is None:
            raise fail("--method and --target go together (--baseline: for all but direct)")
        try:
            potential = train_levels(
                data, out, method=method, target=target, baseline=baseline, config=config,
                intermediates=intermediate or (), init=init, epochs=epochs, device=device, compile=compile_model,
            )  # fmt: skip
        except (ModelError, DatasetError, PotentialError, LevelError) as exc:
            raise fail(str(exc)) from None
        typer.echo(describe_potential(potential))
        return
    try:
        model = train_model(
            data,
            out,
            config=config,
            init=init,
            epochs=epochs,
            device=device,
            compile=compile_model,
            species_map=parse_species_map(species_map) if species_map else None,
            refit_references=refit_references,
            frozen_layers=freeze_layers,
        )
    except (ModelError, DatasetError) as exc:
        raise fail(str(exc)) from None
    typer.echo(describe_training(model))
    if species_map:
        typer.echo(f"  started from {model.metrics['config']['init_from']} (element transfer)")


@app.command("pretrain")
def pretrain_command(
    data: Annotated[
        list[Path],
        typer.Argument(help="Labeled frames (extxyz) at two or more levels (level=NAME each)."),
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Model directory to write.")],
    method: Annotated[
        str, typer.Option("--method", help="reptile | joint (all levels pooled, the k=1 case).")
    ] = "reptile",
    k: Annotated[int, typer.Option("--k", help="Reptile: inner optimiser steps per level.")] = 10,
    epsilon: Annotated[
        float, typer.Option("--epsilon", help="Reptile: outer step size ε, in (0, 1].")
    ] = 0.5,
    epsilon_final: Annotated[
        float, typer.Option("--epsilon-final", help="ε decays linearly towards this.")
    ] = 0.0,
    outer_steps: Annotated[
        int, typer.Option("--outer-steps", help="Outer iterations (joint: optimiser steps).")
    ] = 1000,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Override the template's batch_size.")
    ] = None,
    learning_rate: Annotated[
        float | None, typer.Option("--learning-rate", help="Inner optimiser's learning rate.")
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option("--reference", help="Level whose energy references the model keeps."),
    ] = None,
    checkpoint_every: Annotated[
        int, typer.Option("--checkpoint-every", help="Outer steps between checkpoints.")
    ] = 50,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="NequIP hydra YAML (default: the MIL-53(Al) template)."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = "auto",
) -> None:
    """Pretrain one NequIP model on frames at several levels of theory (Reptile or joint);
    a killed run resumes from its checkpoint. Fine-tune it with train --init."""
    from hillwalker.engines.dataset import DatasetError
    from hillwalker.engines.nequip import ModelError
    from hillwalker.pretraining import describe_pretraining, pretrain_levels

    try:
        model = pretrain_levels(
            data, out, method=method, k=k, epsilon=epsilon, epsilon_final=epsilon_final,
            outer_steps=outer_steps, batch_size=batch_size, learning_rate=learning_rate,
            config=config, reference_level=reference, checkpoint_every=checkpoint_every,
            device=device, echo=typer.echo,
        )  # fmt: skip
    except (ModelError, DatasetError) as exc:
        raise fail(str(exc)) from None
    typer.echo(describe_pretraining(model))


@app.command("evaluate")
def evaluate_command(
    model: Annotated[Path, typer.Argument(help="Model directory, .nequip.zip or .nequip.pt2.")],
    frames: Annotated[Path, typer.Argument(help="Labeled frames (extxyz).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the errors as JSON.")] = False,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = "auto",
) -> None:
    """Energy (meV/atom), force (meV/Å) and stress (GPa) RMSE of a model on labeled frames."""
    from hillwalker.engines.composite import PotentialError
    from hillwalker.engines.dataset import DatasetError
    from hillwalker.engines.levels import LevelError
    from hillwalker.engines.nequip import ModelError
    from hillwalker.modeling import describe_errors, evaluate_model

    try:
        result = evaluate_model(model, frames, device=device)
    except (ModelError, DatasetError, PotentialError, LevelError) as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(f"{model} on {frames}:")
        typer.echo(describe_errors(result))


@app.command("label")
def label_command(
    level: Annotated[
        Path,
        typer.Argument(
            help="Level of theory: a CP2K input (*.inp) or a YAML level file "
            "(code: tblite | pyscf, see docs/levels.md)."
        ),
    ],
    frames: Annotated[Path, typer.Argument(help="Frames to label (extxyz).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Labeled frames (extxyz).")],
    cores: Annotated[
        int | None, typer.Option("--cores", min=1, help="Cores to use (default: all).")
    ] = None,
    site: Annotated[
        Path | None, typer.Option("--site", help="Site profile YAML (default: this machine).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=1, help="Seconds per frame, then 'timeout'.")
    ] = None,
    work_dir: Annotated[
        Path | None, typer.Option("--work-dir", help="Task directories (default OUT.work).")
    ] = None,
) -> None:
    """Label frames at a level of theory (CP2K, tblite or PySCF) in parallel; failed frames are
    kept, marked with their failure."""
    from hillwalker.config import ConfigError
    from hillwalker.labeling import LabelingError, label_file

    def progress(finished: int, total: int, index: int, frame: object) -> None:
        info = getattr(frame, "info", {})
        state = info.get("status", "?")
        if state != "done":
            state += f" ({info.get('failure')})"
        typer.echo(f"[{finished:>{len(str(total))}}/{total}] frame {index}: {state}", err=True)

    try:
        profile = None
        if site is not None:
            from hillwalker.sites import load_site

            profile = load_site(site)
        summary = label_file(
            level, frames, output, cores=cores, site=profile, work_dir=work_dir,
            timeout=timeout, on_frame=progress,
        )  # fmt: skip
    except (LabelingError, ConfigError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{output}: {summary.line()}")
    typer.echo(
        f"  {summary.wall_seconds:.1f} s wall, {summary.code_seconds:.1f} s in the level's code; "
        f"task directories: {summary.work_dir}"
    )


@app.command("testset")
def testset_command(
    directory: Annotated[Path, typer.Argument(help="Campaign directory.")],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Test set to write (extxyz), outside the campaign's dataset, models and bias.",
        ),
    ],
    frames: Annotated[int, typer.Option("--frames", help="Frames in the test set.")] = 16,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Model or potential directory (default: the latest)."),
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="MD steps per segment (default: walkers.steps).")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", help="MD temperature, K (default: walkers').")
    ] = None,
    segments: Annotated[
        int, typer.Option("--segments", help="MD segments, from starts spread over the CVs.")
    ] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the MD.")] = 0,
    level: Annotated[
        Path | None,
        typer.Option("--level", help="Level of theory (default: the campaign's material.level)."),
    ] = None,
    cores: Annotated[
        int | None, typer.Option("--cores", min=1, help="Cores for labeling (default: all).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
) -> None:
    """Make a test set for a campaign: short MD with its latest model under its bias as it
    stands (the bias is copied, never added to), frames spread over the CVs, labeled at its
    level, none with the geometry of a dataset frame."""
    from hillwalker.state import StateError
    from hillwalker.testsets import TestSetError, make_test_set, snippet

    def segment_done(done: int, total: int, segment: object, found: int) -> None:
        steps_done = getattr(segment, "steps_done", "?")
        state = getattr(segment, "status", "?")
        typer.echo(f"MD [{done}/{total}] {steps_done} steps ({state}): {found} frames", err=True)

    def labeled(finished: int, total: int, index: int, frame: object) -> None:
        info = getattr(frame, "info", {})
        state = info.get("status", "?")
        if state != "done":
            state += f" ({info.get('failure')})"
        typer.echo(
            f"label [{finished:>{len(str(total))}}/{total}] frame {index}: {state}", err=True
        )

    try:
        summary = make_test_set(
            directory, output, frames=frames, model=model, steps=steps, temperature=temperature,
            seed=seed, level=level, segments=segments, force=force, cores=cores,
            on_segment=segment_done, on_frame=labeled,
        )  # fmt: skip
    except (TestSetError, StateError) as exc:
        raise fail(str(exc)) from None
    typer.echo("\n".join(summary.lines()))
    typer.echo(f"Score the campaign's models on it: add to {summary.campaign / 'campaign.yaml'}")
    typer.echo(snippet(summary))


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="Campaign directory.")],
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="HTML file (default: DIR/report.html).")
    ] = None,
) -> None:
    """One static HTML page of a campaign: errors, parity, CV coverage, FES, costs (exit 2: no
    campaign or no model yet, nothing written)."""
    from hillwalker.report import NOTHING_TO_REPORT, ReportError, build_report

    try:
        written = build_report(directory, out)
    except ReportError as exc:
        raise fail(str(exc), NOTHING_TO_REPORT) from None
    typer.echo(f"{written}  (open it in a browser: file://{written.resolve()})")


@app.command()
def compare(
    directories: Annotated[list[Path], typer.Argument(help="Campaign directories.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="HTML file.")] = Path("compare.html"),
) -> None:
    """One static HTML page comparing campaigns: error vs single points, CV coverage (exit 2:
    one of them is no campaign or has no model yet, nothing written)."""
    from hillwalker.report import NOTHING_TO_REPORT, ReportError, build_comparison

    try:
        written = build_comparison(directories, out)
    except ReportError as exc:
        raise fail(str(exc), NOTHING_TO_REPORT) from None
    typer.echo(f"{written}  (open it in a browser: file://{written.resolve()})")


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (kill, scancel of the job running hillwalker) unwinds like Ctrl-C, so every
    # `finally` runs: Parsl's interchange, workers and SLURM blocks are cleaned up
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


__all__ = ["Path", "app", "fail", "main"]
