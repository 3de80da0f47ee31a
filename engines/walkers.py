"""Metadynamics walkers: one MD segment of one walker, biased by PLUMED, with safety checks.

A walker is a start structure, a state (positions, momenta, cell, step counter), thermostat and
barostat settings, the material's PLUMED input and its hills. :func:`run_segment` runs one segment
(NVT Langevin, or full-cell NPT with ``MTKNPT``) of ``settings.steps`` steps with the model
calculator wrapped by ``ase.calculators.plumed.Plumed`` (which adds the bias virial to the stress,
so a bias on ``VOLUME`` acts on the barostat) and returns a :class:`WalkerSegment`.

Continuing
    A segment starts from an ``Atoms`` or a state file of a previous segment; momenta, cell and
    the step counter (``info["step"]``) carry over, so PLUMED's time and strides run on across
    segments and generations. Thermostat/barostat chain variables are not carried over (they are
    re-initialised each segment). PLUMED never deposits a hill on the first step of a run, so the
    step shared by the end of one segment and the start of the next is deposited once.

Shared, persistent bias
    Every walker deposits into ``<bias_dir>/HILLS.<walker>`` (PLUMED multiple walkers, see
    :mod:`hillwalker.engines.plumed`) and every segment restarts from all files (``RESTART``), so
    the bias outlives segments, generations and models. A reset (to the start structure or a
    last safe state) changes the walker's state only, never the hills.

A killed segment re-run adds no hills twice
    :mod:`hillwalker.engines.hills_ledger` records each segment's start in the walker's hills
    file and rolls a killed or re-run segment back (logged as an event); a lock stops two live
    copies of one walker. Other walkers running at that moment keep the rolled-back hills they
    had already read until their own segment ends (their next segment re-reads the files); a
    re-run's new hills reach them from their next segment on. Use one workdir per (generation,
    walker): the segment clears its own COLVAR/log there before it starts.

Safety
    After every step: finite energy, largest force ≤ ``max_force`` (eV/Å), temperature ≤
    ``max_temperature`` (K); every ``check_stride`` steps also the shortest interatomic distance
    ≥ ``min_distance`` (Å, :func:`hillwalker.engines.geometry.too_close`), and a state that passes
    all checks becomes the last safe state. Any exception from the calculator or integrator (e.g.
    numpy ``LinAlgError`` in MTKNPT) is a blow-up too. On a blow-up the segment stops, the walker
    goes back to the last safe state (positions and cell; momenta re-drawn at the temperature,
    the step counter kept going) and the event is recorded with the step and reason. If not even
    the start passes, the walker goes to ``last_safe`` (given by the caller, e.g. the previous
    generation's state), else stays at its start. Hills deposited before the blow-up stay.

Bonds kept
    Given a :class:`~hillwalker.engines.geometry.BondGraph` (``bonds``: the covalent bonds of the
    material's start structure), the distance check also stops the segment when one of those
    bonds breaks or a new one forms (:func:`~hillwalker.engines.geometry.bond_change`): a
    framework coming apart under the model is a model failure like a blow-up. The walker goes
    back to its last intact state, the broken configuration is the frame worth labeling, and a
    walker whose start is already broken (and ``last_safe`` too) goes back to the bond
    reference itself: no walker keeps sampling a decomposed structure.

Units: ASE's inside (Å, eV, eV/Å³, ASE time); ``temperature`` K, ``pressure`` GPa (converted to
eV/Å³ with ``ase.units.GPa``), times in fs (converted with ``ase.units.fs``). CV values in
``info["cv"]`` are in PLUMED units (e.g. a ``VOLUME`` in nm³), the bias in ``info["bias"]`` eV.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import ase.io
import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.calculators.plumed import Plumed
from ase.io.trajectory import TrajectoryWriter
from ase.md.langevin import Langevin
from ase.md.md import MolecularDynamics
from ase.md.nose_hoover_chain import MTKNPT
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from hillwalker.engines.dataset import STATUS_BLOWN_UP, STATUS_DONE
from hillwalker.engines.files import atomic_open, atomic_write_json, atomic_write_text
from hillwalker.engines.geometry import BondGraph, bond_change, geometry_problem, too_close
from hillwalker.engines.hills_ledger import LedgerEntry, WalkerError, close_segment, open_segment
from hillwalker.engines.plumed import (
    BIAS_MODES,
    BiasedCalculator,
    PlumedInputError,
    clean_input,
    hills_files,
    keyword_value,
    metad_label,
    parse_action,
    prepare_input,
)
from hillwalker.engines.plumed_kernel import use_kernel

__all__ = [
    "COLVAR_NAME",
    "LOG_NAME",
    "PLUMED_INPUT_NAME",
    "PLUMED_LOG_NAME",
    "STATE_NAME",
    "TRAJECTORY_NAME",
    "Walker",
    "WalkerError",
    "WalkerSegment",
    "WalkerSettings",
    "run_segment",
]

Ensemble = Literal["nvt", "npt"]
#: ``done`` (the segment ran all its steps) or ``blown_up`` (stopped and reset, see Safety)
SegmentStatus = Literal["done", "blown_up"]

STATE_NAME = "state.traj"
LOG_NAME = "walker.log"
PLUMED_LOG_NAME = "plumed.log"
PLUMED_INPUT_NAME = "plumed.dat"
COLVAR_NAME = "COLVAR"
TRAJECTORY_NAME = "trajectory.traj"
EVENTS_NAME = "events.json"


@dataclass(frozen=True)
class Walker:
    """Which walker, in which generation, sharing which bias."""

    index: int
    generation: int
    n_walkers: int
    #: the folder of every walker's ``HILLS.<i>`` (and the hills ledger)
    bias_dir: Path
    #: ``shared`` (every walker feels every walker's hills), ``independent`` or ``none``
    bias: str = "shared"

    def __post_init__(self) -> None:
        if self.bias not in BIAS_MODES:
            raise ValueError(f"bias {self.bias!r}: expected one of {', '.join(BIAS_MODES)}")
        if not 0 <= self.index < self.n_walkers:
            raise ValueError(f"walker {self.index} is not one of 0..{self.n_walkers - 1}")


@dataclass(kw_only=True)
class WalkerSettings:
    """How a walker moves. Units: K, GPa, fs, eV/Å, Å.

    The fields campaign.yaml sets (``walkers`` and ``safety``) have no defaults here: the
    campaign's models are their one source. The engine-only knobs keep theirs.
    """

    ensemble: Ensemble
    temperature: float
    #: external pressure for ``npt`` (GPa); None means 0
    pressure: float | None
    timestep_fs: float
    steps: int
    # safety thresholds
    max_force: float
    min_distance: float
    max_temperature: float
    #: Langevin friction (nvt), 1/fs
    friction_per_fs: float = 0.01
    #: MTK thermostat and barostat damping times (npt), fs
    thermostat_time_fs: float = 100.0
    barostat_time_fs: float = 1000.0
    #: write every n-th state to trajectory.traj (0: none)
    trajectory_stride: int = 0
    #: overrides the STRIDE of the input's PRINT actions (None: keep the input's)
    cv_stride: int | None = None
    #: a line in walker.log every n steps
    log_stride: int = 10
    #: how often (steps) walkers read each other's hills; None: the input's, else METAD's PACE
    walkers_rstride: int | None = None
    #: distance check and last-safe-state copy every n steps (the other checks run every step)
    check_stride: int = 10

    def __post_init__(self) -> None:
        if self.ensemble not in ("nvt", "npt"):
            raise ValueError(f"ensemble {self.ensemble!r}: expected 'nvt' or 'npt'")
        positive = (
            "temperature",
            "timestep_fs",
            "friction_per_fs",
            "thermostat_time_fs",
            "barostat_time_fs",
            "max_force",
            "min_distance",
            "max_temperature",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} = {getattr(self, name)!r}: must be > 0")
        if self.steps < 0:
            raise ValueError(f"steps = {self.steps}: must be >= 0")
        for name in ("log_stride", "check_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)}: must be >= 1")
        if self.trajectory_stride < 0:
            raise ValueError(f"trajectory_stride = {self.trajectory_stride}: must be >= 0")

    @property
    def pressure_ev_per_a3(self) -> float:
        return (self.pressure or 0.0) * units.GPa


@dataclass
class WalkerSegment:
    """What one segment of one walker produced."""

    walker: int
    generation: int
    status: SegmentStatus
    steps_done: int
    start_step: int
    end_step: int
    #: the state to continue from; info: walker, generation, step, cv, bias (eV), model
    final: Atoms
    #: ``final`` on disk (ASE .traj: positions, momenta, cell, step)
    state_path: Path
    colvar: Path
    #: the hills files the walker's bias was made of
    hills: list[Path]
    log: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    plumed_log: Path | None = None
    #: hills this segment deposited (in its own file)
    hills_added: int = 0
    #: bias energy (eV) felt at the segment's first step (the bias it restarted from)
    bias_start: float = math.nan
    #: a blown-up segment's configuration where the blow-up was seen, when its geometry is sane
    #: for a reference calculation (finite, no atoms closer than ``min_distance``), else None:
    #: where the model failed, so the frame worth labeling (``final`` is often a state that was
    #: labeled already: the segment's start)
    failed: Atoms | None = None


# --------------------------------------------------------------------------------------------
# one segment


def run_segment(
    start: Atoms | Path,
    calculator: Calculator,
    plumed_input: Path | str,
    workdir: Path,
    walker: Walker,
    settings: WalkerSettings,
    *,
    seed: int,
    last_safe: Atoms | None = None,
    model: str | None = None,
    bonds: BondGraph | None = None,
) -> WalkerSegment:
    """Run one MD segment of one walker with the PLUMED bias; see the module docstring.

    ``start``: an ``Atoms`` (``info["step"]`` continues the step counter; momenta are drawn at
    the temperature when it has none) or a state file written by a previous segment. A reset
    (the start structure, an older safe state) keeps the walker's step counter going: it starts
    at the end of the walker's last recorded segment if that is later.
    ``plumed_input``: a path, or the input text itself (PLUMED units). ``seed`` seeds the
    thermostat noise and any momenta drawn. ``model`` (e.g. the model file) goes into
    ``final.info["model"]``. ``bonds``: the covalent bonds the walker keeps (see Bonds kept).
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    walker = dataclasses.replace(walker, bias_dir=Path(walker.bias_dir).resolve())
    rng = np.random.default_rng(seed)
    begin = _start_state(start, settings, rng)
    source, text = _input_text(plumed_input)
    lines = clean_input(text, source=source)

    with contextlib.ExitStack() as stack:
        ledger, events = _open_ledger(stack, walker, begin.step)
        start_step = ledger.start_step if ledger is not None else begin.step
        prepared, colvar = _walker_input(lines, walker, settings, workdir, source)
        biased = _attach_bias(stack, calculator, prepared, begin.atoms, settings, workdir, source)
        biased.istep = start_step
        outputs = _Outputs.open(stack, workdir, settings)
        cv_names = _cv_names(lines)
        run = _run_md(
            begin.atoms, biased, settings, rng, start_step, outputs, cv_names, last_safe, bonds
        )
        events.extend(run.events)
        _finalize(biased)  # flush HILLS and COLVAR before the segment is recorded as done
        return _finish(run, events, workdir, walker, ledger, begin, start_step, colvar, model)


def _open_ledger(
    stack: contextlib.ExitStack[Any], walker: Walker, start_step: int
) -> tuple[LedgerEntry | None, list[dict[str, Any]]]:
    """The walker's ledger entry (None without a bias) and the events of opening it."""
    if walker.bias == "none":
        return None, []
    ledger = open_segment(
        stack,
        walker.bias_dir,
        walker=walker.index,
        n_walkers=walker.n_walkers,
        generation=walker.generation,
        bias=walker.bias,
        start_step=start_step,
    )
    if not ledger.rolled_back:
        return ledger, []
    event = {"step": ledger.start_step, "kind": "hills_rolled_back", "removed": ledger.rolled_back}
    return ledger, [event]


@dataclass
class _Start:
    atoms: Atoms
    #: the step counter of the start state
    step: int
    periodic: bool
    #: the cell to give back to a non-periodic walker (PLUMED saw none)
    original_cell: Any


def _start_state(start: Atoms | Path, settings: WalkerSettings, rng: np.random.Generator) -> _Start:
    atoms = _load_start(start)
    if settings.ensemble == "npt" and not atoms.pbc.all():
        raise WalkerError("npt needs a periodic cell (pbc in all three directions)")
    begin = _Start(atoms, int(atoms.info.get("step", 0)), bool(atoms.pbc.any()), atoms.cell.copy())
    if not begin.periodic:
        # ASE sends any non-zero cell to PLUMED as a periodic box, even with pbc=False
        atoms.cell[:] = 0.0
    if not atoms.has("momenta") or not np.any(atoms.get_momenta()):
        thermalize_momenta(atoms, temperature_K=settings.temperature, rng=rng)
        Stationary(atoms)
    return begin


def _walker_input(
    lines: list[str], walker: Walker, settings: WalkerSettings, workdir: Path, source: str
) -> tuple[list[str], Path]:
    """The input as this walker runs it (written to plumed.dat), and its COLVAR file."""
    prepared = prepare_input(
        lines,
        walker_id=walker.index,
        n_walkers=walker.n_walkers,
        bias_dir=walker.bias_dir,
        mode=walker.bias,  # type: ignore[arg-type]
        workdir=workdir,
        rstride=settings.walkers_rstride,
        cv_stride=settings.cv_stride,
        source=source,
    )
    cv_names = _cv_names(lines)
    if not any(parse_action(line)[1] == "PRINT" for line in prepared) and cv_names:
        label = metad_label(lines)
        args = ",".join(cv_names + ([f"{label}.bias"] if label and walker.bias != "none" else []))
        stride = settings.cv_stride or 1
        prepared.append(f"PRINT ARG={args} STRIDE={stride} FILE={workdir / COLVAR_NAME}")
    colvar = _print_file(prepared) or workdir / COLVAR_NAME
    # this segment's own outputs: a killed earlier attempt must not leave lines in them
    for path in (colvar, workdir / LOG_NAME, workdir / TRAJECTORY_NAME):
        if path.parent == workdir:
            path.unlink(missing_ok=True)
    atomic_write_text(workdir / PLUMED_INPUT_NAME, "\n".join(prepared) + "\n")
    return prepared, colvar


def _attach_bias(
    stack: contextlib.ExitStack[Any],
    calculator: Calculator,
    prepared: list[str],
    atoms: Atoms,
    settings: WalkerSettings,
    workdir: Path,
    source: str,
) -> Plumed:
    """Wrap the model in PLUMED and make it the atoms' calculator (finalized when stack closes)."""
    use_kernel()
    try:
        biased = BiasedCalculator(
            calculator,
            prepared,
            timestep=settings.timestep_fs * units.fs,
            atoms=atoms,
            kT=units.kB * settings.temperature,
            log=str(workdir / PLUMED_LOG_NAME),
            restart=False,  # RESTART comes from the input (prepare_input) when hills exist
        )
    except Exception as exc:  # the kernel reports input errors as PlumedError
        raise PlumedInputError(f"{source}: PLUMED rejected the input: {exc}") from exc
    stack.callback(_finalize, biased)
    atoms.calc = biased
    return biased


@dataclass
class _Outputs:
    """The segment's running files: walker.log and, when asked for, trajectory.traj."""

    log: IO[str]
    trajectory: TrajectoryWriter | None

    @classmethod
    def open(
        cls, stack: contextlib.ExitStack[Any], workdir: Path, settings: WalkerSettings
    ) -> _Outputs:
        # closed by the segment's ExitStack
        log = stack.enter_context(Path(workdir / LOG_NAME).open("w", buffering=1))  # noqa: SIM115
        trajectory = (
            stack.enter_context(TrajectoryWriter(str(workdir / TRAJECTORY_NAME), "w"))
            if settings.trajectory_stride
            else None
        )
        return cls(log, trajectory)


def _finish(
    run: _Run,
    events: list[dict[str, Any]],
    workdir: Path,
    walker: Walker,
    ledger: LedgerEntry | None,
    begin: _Start,
    start_step: int,
    colvar: Path,
    model: str | None,
) -> WalkerSegment:
    """Write the state, then mark the segment done (last, so a kill before it means 'redo')."""
    final = run.final
    if not begin.periodic:
        final.cell = begin.original_cell
        if run.failed is not None:
            run.failed.cell = begin.original_cell
    final.info.update(
        {"walker": walker.index, "generation": walker.generation, "step": run.end_step}
    )
    if model is not None:
        final.info["model"] = model
    else:
        final.info.pop("model", None)
    state_path = workdir / STATE_NAME
    _write_state(state_path, final)

    hills_added = 0
    hills: list[Path] = []
    if ledger is not None:
        hills_added = close_segment(ledger, end_step=run.end_step, segment_status=run.status)
        hills = hills_files(walker.bias_dir) if walker.bias == "shared" else [ledger.own_hills]
    for event in events:
        event.setdefault("walker", walker.index)
        event.setdefault("generation", walker.generation)
    atomic_write_json(workdir / EVENTS_NAME, events)
    return WalkerSegment(
        walker=walker.index,
        generation=walker.generation,
        status=run.status,
        steps_done=run.end_step - start_step,
        start_step=start_step,
        end_step=run.end_step,
        final=final,
        state_path=state_path,
        colvar=colvar,
        hills=hills,
        log=workdir / LOG_NAME,
        events=events,
        plumed_log=workdir / PLUMED_LOG_NAME,
        hills_added=hills_added,
        bias_start=run.bias_start,
        failed=_with_info(run.failed, final.info) if run.failed is not None else None,
    )


def _with_info(atoms: Atoms, info: dict[str, Any]) -> Atoms:
    """``atoms`` with the provenance of ``info`` (walker, generation, model) and its own step."""
    atoms.info = {**{k: v for k, v in info.items() if k not in ("cv", "bias")}, **atoms.info}
    return atoms


# --------------------------------------------------------------------------------------------
# MD loop


@dataclass
class _Run:
    status: SegmentStatus
    end_step: int
    final: Atoms
    events: list[dict[str, Any]]
    bias_start: float = math.nan
    failed: Atoms | None = None


def _make_integrator(
    atoms: Atoms, settings: WalkerSettings, rng: np.random.Generator
) -> MolecularDynamics:
    dt = settings.timestep_fs * units.fs
    if settings.ensemble == "nvt":
        return Langevin(
            atoms,
            dt,
            temperature_K=settings.temperature,
            friction=settings.friction_per_fs / units.fs,
            fixcm=False,
            rng=rng,
        )
    return MTKNPT(
        atoms,
        dt,
        temperature_K=settings.temperature,
        pressure_au=settings.pressure_ev_per_a3,
        tdamp=settings.thermostat_time_fs * units.fs,
        pdamp=settings.barostat_time_fs * units.fs,
    )


def _run_md(
    atoms: Atoms,
    biased: Plumed,
    settings: WalkerSettings,
    rng: np.random.Generator,
    start_step: int,
    outputs: _Outputs,
    cv_names: list[str],
    last_safe: Atoms | None,
    bonds: BondGraph | None = None,
) -> _Run:
    cv_memory = _cv_memory(biased, cv_names)
    dyn = _make_integrator(atoms, settings, rng)
    outputs.log.write("# step time_ps epot_eV bias_eV temperature_K volume_A3 fmax_eV/A cv\n")
    safe: Atoms | None = None
    step = start_step
    reason: str | None = None
    bias_start = math.nan
    evaluated = False
    start_state = _state_copy(atoms, None, {})
    start_state.info["step"] = start_step
    try:
        for done, _ in enumerate(dyn.irun(settings.steps)):
            evaluated = True
            step = start_step + done
            if done == 0:
                bias_start = _bias_energy(biased)
            reason = _check_step(atoms, biased, settings)
            last = done == settings.steps
            if reason is None and (done % settings.check_stride == 0 or last):
                reason = too_close(atoms, settings.min_distance)
                if reason is None and bonds is not None:
                    reason = bond_change(atoms, bonds)
                if reason is None:
                    safe = _state_copy(atoms, biased, cv_memory)
            if reason is not None:
                break
            if done % settings.log_stride == 0 or last:
                _log_line(outputs.log, atoms, biased, settings, step, cv_memory)
            if outputs.trajectory is not None and done % settings.trajectory_stride == 0:
                outputs.trajectory.write(atoms)
    except Exception as exc:  # the integrator or the model blew up: a walker event, not a crash
        # the step being made when it failed (the start itself if it failed before any step)
        step = start_step + dyn.nsteps + (1 if evaluated else 0)
        reason = f"{type(exc).__name__}: {exc}"
    if reason is None:
        assert safe is not None  # the last step always runs the full check
        return _Run(STATUS_DONE, step, safe, [], bias_start)
    event: dict[str, Any] = {"step": step, "kind": "blow_up", "reason": reason}
    failed = _sane_copy(atoms, step, settings.min_distance)
    event["failed_frame"] = failed is not None
    safe = _reset_state(event, safe, last_safe, start_state, settings, rng, bonds)
    outputs.log.write(f"# blow-up at step {step}: {reason}\n")
    return _Run(STATUS_BLOWN_UP, step, safe, [event], bias_start, failed)


def _sane_copy(atoms: Atoms, step: int, min_distance: float) -> Atoms | None:
    """The blow-up configuration (positions and cell, no momenta) if a reference code can take
    it: finite, a full cell when periodic, no pair closer than ``min_distance``; else None."""
    copy = Atoms(
        atoms.numbers.copy(),
        positions=np.array(atoms.positions, float),
        cell=atoms.cell.copy(),
        pbc=atoms.pbc.copy(),
    )
    if geometry_problem(copy, min_distance) is not None:
        return None
    copy.info = {"step": step, "blow_up": True}
    return copy


def _reset_state(
    event: dict[str, Any],
    safe: Atoms | None,
    last_safe: Atoms | None,
    start_state: Atoms,
    settings: WalkerSettings,
    rng: np.random.Generator,
    bonds: BondGraph | None = None,
) -> Atoms:
    """Where a blown-up walker goes back to (said in ``event``), with fresh momenta."""

    def broken(atoms: Atoms) -> bool:
        return bonds is not None and bond_change(atoms, bonds) is not None

    if safe is not None:
        event["reset_to_step"] = int(safe.info.get("step", start_state.info["step"]))
    else:
        if last_safe is not None and broken(last_safe):
            last_safe = None  # not a state to go back to
        if last_safe is None and bonds is not None and broken(start_state):
            # the start (and any last safe state) is broken: the intact reference itself
            safe = bonds.reference.copy()
            safe.info = {"step": start_state.info["step"]}
            event["reset_to"] = "bond_reference"
        elif last_safe is not None:
            safe = last_safe.copy()
            safe.info = dict(last_safe.info)
            event["reset_to"] = "last_safe"
        else:
            # not even the start passed the checks, and no earlier safe state was given
            safe = start_state
            event["reset_to"] = "start"
    # the safe state's own momenta may already lead back into the blow-up
    thermalize_momenta(safe, temperature_K=settings.temperature, rng=rng)
    Stationary(safe)
    return safe


def _check_step(atoms: Atoms, biased: Plumed, settings: WalkerSettings) -> str | None:
    # read the cached results: a get_forces() that recomputed would advance PLUMED's step
    energy = biased.results.get("energy", math.nan)
    if not math.isfinite(energy):
        return f"energy is {energy}"
    forces = biased.results["forces"]
    if not np.all(np.isfinite(forces)):
        return "non-finite forces"
    fmax = float(np.sqrt((forces**2).sum(axis=1).max())) if len(forces) else 0.0
    if fmax > settings.max_force:
        return f"force {fmax:.3g} eV/Å > max_force {settings.max_force} eV/Å"
    temperature = atoms.get_temperature()
    if not temperature <= settings.max_temperature:
        return f"temperature {temperature:.4g} K > max_temperature {settings.max_temperature} K"
    return None


def _state_copy(atoms: Atoms, biased: Plumed | None, cv_memory: dict[str, np.ndarray]) -> Atoms:
    copy = Atoms(
        atoms.numbers.copy(),
        positions=atoms.positions.copy(),
        cell=atoms.cell.copy(),
        pbc=atoms.pbc.copy(),
    )
    copy.set_momenta(atoms.get_momenta())
    if biased is not None:
        copy.info = {
            "step": int(biased.istep) - 1,
            "cv": {name: float(value[0]) for name, value in cv_memory.items()},
            "bias": _bias_energy(biased),
        }
    return copy


def _bias_energy(biased: Plumed) -> float:
    """Bias energy (eV) of the last evaluation: biased minus model energy."""
    return float(biased.results["energy"] - biased.calc.results["energy"])


def _log_line(
    log: IO[str],
    atoms: Atoms,
    biased: Plumed,
    settings: WalkerSettings,
    step: int,
    cv_memory: dict[str, np.ndarray],
) -> None:
    forces = biased.results["forces"]
    volume = atoms.get_volume() if atoms.cell.rank == 3 else 0.0
    cvs = " ".join(f"{name}={value[0]:.8g}" for name, value in cv_memory.items())
    log.write(
        f"{step} {step * settings.timestep_fs / 1000:.6f} {biased.calc.results['energy']:.8f} "
        f"{_bias_energy(biased):.8f} {atoms.get_temperature():.2f} {volume:.4f} "
        f"{np.sqrt((forces**2).sum(axis=1).max()):.4f} {cvs}\n"
    )


# --------------------------------------------------------------------------------------------
# state and input


def _load_start(start: Atoms | Path | str) -> Atoms:
    if isinstance(start, Atoms):
        atoms = start.copy()
        atoms.info = dict(start.info)
        if start.has("momenta"):
            atoms.set_momenta(start.get_momenta())
        return atoms
    path = Path(start)
    if not path.is_file():
        raise WalkerError(f"{path}: no such walker state file")
    try:
        atoms = ase.io.read(path, index=-1)
    except Exception as exc:  # ASE raises many types for a broken file
        raise WalkerError(f"{path}: not a readable walker state ({exc})") from exc
    if isinstance(atoms, list):
        atoms = atoms[-1]
    atoms.calc = None
    return atoms


def _write_state(path: Path, atoms: Atoms) -> None:
    frame = atoms.copy()
    frame.info = dict(atoms.info)
    frame.set_momenta(atoms.get_momenta())
    with atomic_open(path, "wb") as handle:
        writer = TrajectoryWriter(handle, "w")
        writer.write(frame)


def _input_text(plumed_input: Path | str) -> tuple[str, str]:
    if isinstance(plumed_input, str) and "\n" not in plumed_input:
        candidate = Path(plumed_input)
        if candidate.is_file():
            plumed_input = candidate
    if isinstance(plumed_input, Path):
        try:
            return str(plumed_input), plumed_input.read_text()
        except OSError as exc:
            raise PlumedInputError(f"{plumed_input}: cannot read the PLUMED input ({exc})") from exc
    return "<plumed input>", plumed_input


def _cv_names(lines: list[str]) -> list[str]:
    """The walker's CVs: METAD's ARG, else the first PRINT's ARG without bias components."""
    for wanted in ("METAD", "PRINT"):
        for line in lines:
            _, action, keywords = parse_action(line)
            arg = keyword_value(keywords, "ARG")
            if action == wanted and arg:
                return [a for a in arg.split(",") if not a.endswith(".bias")]
    return []


def _print_file(lines: list[str]) -> Path | None:
    for line in lines:
        _, action, keywords = parse_action(line)
        if action == "PRINT":
            name = keyword_value(keywords, "FILE")
            return Path(name) if name else None
    return None


def _cv_memory(biased: Plumed, names: list[str]) -> dict[str, np.ndarray]:
    """Arrays PLUMED fills with each CV's value at every step (its data-fetching interface)."""
    memory: dict[str, np.ndarray] = {}
    for name in names:
        rank = np.zeros(1, dtype=np.int64)
        try:
            biased.plumed.cmd(f"getDataRank {name}", rank)
            shape = np.zeros(int(rank[0]), dtype=np.int64)
            biased.plumed.cmd(f"getDataShape {name}", shape)
            if int(np.prod(shape)) != 1:
                continue  # vector CVs are in COLVAR only
            memory[name] = np.zeros(1)
            biased.plumed.cmd(f"setMemoryForData {name}", memory[name])
        except Exception:  # noqa: S112 - a CV PLUMED cannot hand out is only missing from info
            continue
    return memory


def _finalize(biased: Plumed) -> None:
    if getattr(biased, "_hillwalker_finalized", False):
        return
    biased._hillwalker_finalized = True  # type: ignore[attr-defined]
    with contextlib.suppress(Exception):  # after a kernel error finalize can fail too
        biased.plumed.finalize()
