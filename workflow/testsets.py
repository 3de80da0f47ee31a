"""Make an independent test set for a campaign: ``hillwalker testset DIR -o OUT.extxyz``.

A campaign scores every model it trains on the files named in ``evaluation.test_sets``
(labeled frames it never trains on). :func:`make_test_set` makes such a file for the material of
a campaign, read-only on the campaign directory:

1. Sampling: short MD segments (``engines.walkers.run_segment``) with the campaign's latest model
   (or ``model``) and its PLUMED bias *as it stands*: the campaign's hills files are copied into
   a scratch directory per segment and METAD's ``PACE`` is raised above the segment's length, so
   the segments feel the campaign's bias and deposit nothing (the campaign's ``bias/`` is never
   opened for writing). The segments start from walker final frames spread over the CV range
   the walkers visited (the start structure when no walker has run yet), with momenta drawn at
   the temperature, and write a frame every few steps with its CV values (COLVAR).
2. Picking: of the sampled frames (not a segment's start, not after a blow-up, geometry sane,
   not the geometry of any frame in the campaign's dataset files), ``frames`` spread evenly over
   the CV values.
3. Labeling at the campaign's level (``material.level``, or ``level``) with
   :func:`hillwalker.labeling.label_file` (Parsl, one task per frame, resumable from the task
   directories); frames whose single point failed are left out and counted.

Each frame of the output has ``testset=True``, ``testset_campaign``, ``testset_model`` and its
``cv`` in ``info``. Scratch files (MD segments, labeling tasks) go to ``OUT.work``.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from ase import Atoms

from hillwalker.engines.dataset import STATUS_BLOWN_UP, STATUS_DONE, read_frames, write_frames

if TYPE_CHECKING:
    from hillwalker.config import Campaign
    from hillwalker.engines.walkers import WalkerSegment, WalkerSettings
    from hillwalker.labeling import ProgressCallback

#: frames in a test set unless asked otherwise
DEFAULT_FRAMES = 16
#: MD segments (each from its own start) unless asked otherwise
DEFAULT_SEGMENTS = 4
#: sampled frames per picked frame: enough to choose from, few enough to stay close in time
_CANDIDATES_PER_FRAME = 3
#: scratch folder of the MD segments and of the labeling tasks inside the work directory
MD_DIR, LABEL_DIR = "md", "labels"

#: called after each MD segment: (segments done, total, the segment, frames it gave)
SegmentCallback = Callable[[int, int, "WalkerSegment", int], None]


class TestSetError(ValueError):
    """The test set cannot be made as asked; the message names the file or key."""

    __test__ = False  # not a pytest class


@dataclass
class TestSetSummary:
    __test__ = False  # not a pytest class

    output: Path
    work_dir: Path
    campaign: Path
    model: Path
    level: Path
    asked: int
    picked: int = 0
    labeled: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # failure class -> count
    sampled: int = 0  # frames the MD wrote (starts excluded)
    in_dataset: int = 0  # sampled frames with the geometry of a dataset frame (left out)
    insane: int = 0  # sampled frames refused by the geometry check
    blown_up: int = 0  # segments stopped by a safety check
    bias: str = "shared"  # the campaign's walkers.bias
    hills: int = 0  # hills of the campaign's bias the segments restarted from
    hills_added: int = 0  # hills the segments deposited (into their copies; PACE keeps it 0)
    cv_range: dict[str, tuple[float, float]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        failed = sum(self.failed.values())
        classes = ", ".join(f"{k} {v}" for k, v in sorted(self.failed.items()))
        text = [
            f"{self.output}: {self.labeled} labeled frames (asked for {self.asked}; "
            f"{self.picked} picked of {self.sampled} sampled"
            + (f", {failed} failed to label: {classes}" if failed else "")
            + ")",
            f"  model {self.model}; level {self.level}",
            (
                f"  MD under the campaign's {self.bias} bias as it stands ({self.hills} hills, "
                f"copied; {self.hills_added} added to the copies, none to the campaign)"
                if self.bias != "none"
                else "  MD without a bias (the campaign's walkers.bias is none)"
            ),
            "  CV range: "
            + (
                ", ".join(f"{k} {lo:.6g}..{hi:.6g}" for k, (lo, hi) in self.cv_range.items()) or "-"
            ),
            f"  no frame has the geometry of a frame in the campaign's dataset files "
            f"({self.in_dataset} sampled frames that did were left out)",
        ]
        if self.insane or self.blown_up:
            text.append(
                f"  {self.insane} sampled frames refused by the geometry check; "
                f"{self.blown_up} MD segments blew up (frames after the last safe state dropped)"
            )
        return text


def make_test_set(
    directory: str | Path,
    output: str | Path,
    *,
    frames: int = DEFAULT_FRAMES,
    model: str | Path | None = None,
    steps: int | None = None,
    temperature: float | None = None,
    seed: int = 0,
    level: str | Path | None = None,
    segments: int = DEFAULT_SEGMENTS,
    force: bool = False,
    cores: int | None = None,
    work_dir: str | Path | None = None,
    threads: int = 1,
    on_segment: SegmentCallback | None = None,
    on_frame: ProgressCallback | None = None,
) -> TestSetSummary:
    """Sample, pick and label ``frames`` test frames for the campaign in ``directory``; write
    ``output`` (atomically, only at the end). ``steps``/``temperature``: of each MD segment
    (default: the campaign's ``walkers``). ``threads``: torch threads of the MD."""
    from hillwalker.labeling import LabelingError, default_work_dir, label_file

    plan = _plan(directory, output, frames, model, level, steps, temperature, segments, force)
    work = Path(work_dir) if work_dir is not None else default_work_dir(plan.output)
    summary = TestSetSummary(plan.output, work, plan.root, plan.model, plan.level, asked=frames)
    candidates = _sample(plan, work, seed, threads, summary, on_segment)
    chosen = pick_spread([c.info["cv"] for c in candidates], frames)
    picked = [candidates[i] for i in chosen]
    summary.picked = len(picked)
    if not picked:
        raise TestSetError(
            f"the MD gave no usable frame ({summary.sampled} sampled, {summary.in_dataset} in the "
            f"dataset, {summary.insane} insane, {summary.blown_up} segments blew up): try more "
            f"--steps or another --model; {plan.output} not written"
        )
    picked_file, labeled_file = work / "picked.extxyz", work / "labeled.extxyz"
    write_frames(picked_file, picked)
    try:
        labeling = label_file(
            plan.level,
            picked_file,
            labeled_file,
            cores=cores,
            work_dir=work / LABEL_DIR,
            timeout=plan.cfg.labeling.timeout,
            min_distance=plan.cfg.safety.min_distance,
            on_frame=on_frame,
        )
    except LabelingError as exc:
        raise TestSetError(str(exc)) from None
    summary.failed = labeling.failed
    done = [f for f in read_frames(labeled_file) if f.info.get("status") == STATUS_DONE]
    # the separation from the training data, checked on what is written
    taken = dataset_frame_ids(plan.root)
    if any(_frame_id(f) in taken for f in done):
        raise TestSetError(
            f"a labeled frame has the geometry of a dataset frame; {plan.output} not written"
        )
    if not done:
        raise TestSetError(
            f"no frame could be labeled at {plan.level} ({labeling.line()}; task directories in "
            f"{work / LABEL_DIR}); {plan.output} not written"
        )
    write_frames(plan.output, done)
    summary.labeled = len(done)
    summary.cv_range = _cv_range(done)
    return summary


def snippet(summary: TestSetSummary, name: str | None = None) -> str:
    """The campaign.yaml lines that make the campaign score its models on the new test set."""
    try:
        path = str(summary.output.relative_to(summary.campaign))
    except ValueError:
        path = str(summary.output)  # outside the campaign: an absolute path works too
    key = name or summary.output.name.removesuffix(".extxyz")
    return f"evaluation:\n  test_sets:\n    {key}: {path}"


# --------------------------------------------------------------------------------------------
# what to do, checked before anything runs


@dataclass
class _Plan:
    root: Path
    cfg: Campaign
    output: Path
    model: Path
    level: Path
    settings: WalkerSettings
    segments: int
    frames: int


def _plan(
    directory: str | Path,
    output: str | Path,
    frames: int,
    model: str | Path | None,
    level: str | Path | None,
    steps: int | None,
    temperature: float | None,
    segments: int,
    force: bool,
) -> _Plan:
    from hillwalker import settings
    from hillwalker.config import ConfigError, load_campaign
    from hillwalker.engines.levels import LevelError, load_level

    root = Path(directory).resolve()
    if not (root / "campaign.yaml").is_file():
        raise TestSetError(f"{root}: not a campaign directory (no campaign.yaml)")
    if frames < 1:
        raise TestSetError(f"--frames {frames}: must be at least 1")
    if segments < 1:
        raise TestSetError(f"--segments {segments}: must be at least 1")
    if steps is not None and steps < 1:
        raise TestSetError(f"--steps {steps}: must be at least 1")
    if temperature is not None and not temperature > 0:
        raise TestSetError(f"--temperature {temperature}: must be > 0 K")
    try:
        cfg = load_campaign(root)
    except ConfigError as exc:
        raise TestSetError(str(exc)) from None
    out = Path(output).resolve()
    _check_output(root, out, force)
    model_path = Path(model).resolve() if model is not None else latest_model(root)
    if not model_path.exists():
        raise TestSetError(f"{model_path}: no such model (a NequIP model or a potential directory)")
    level_path = Path(level).resolve() if level is not None else root / cfg.material.level
    try:
        load_level(level_path)
    except LevelError as exc:
        raise TestSetError(str(exc)) from None
    run_steps = steps if steps is not None else cfg.walkers.steps
    stride = max(1, run_steps * segments // (_CANDIDATES_PER_FRAME * frames))
    walker_settings = dataclasses.replace(
        settings.walker_settings(cfg),
        steps=run_steps,
        temperature=temperature if temperature is not None else cfg.walkers.temperature,
        trajectory_stride=stride,
        cv_stride=stride,
        walkers_rstride=run_steps + 1,  # nobody deposits: nothing to re-read
    )
    return _Plan(root, cfg, out, model_path, level_path, walker_settings, segments, frames)


def _check_output(root: Path, out: Path, force: bool) -> None:
    """OUT is none of the campaign's own files (its data, models, bias, state), and new."""
    own = [root / "dataset.extxyz", root / "failed.extxyz"]
    inside = [root / "generations", root / "bias", root / ".hillwalker"]
    if out in own or any(out.is_relative_to(d) for d in inside):
        raise TestSetError(
            f"{out}: is one of the campaign's own files (its dataset, models, bias or state); "
            f"write the test set elsewhere, e.g. {root / 'testsets' / out.name}"
        )
    if out.is_dir():
        raise TestSetError(f"{out}: is a directory; give a file name (OUT.extxyz)")
    if out.exists() and not force:
        raise TestSetError(f"{out}: exists; use --force to replace it")


def latest_model(root: Path) -> Path:
    """The model (or potential directory) the campaign's last finished training made."""
    from hillwalker.status import campaign_status

    generations = campaign_status(root)["generations"]
    if not generations:
        raise TestSetError(
            f"{root}: no trained model yet (no finished training in "
            f"{root / '.hillwalker' / 'tasks' / 'train'}); run the campaign first or give --model"
        )
    return Path(generations[-1]["model"])


def dataset_frame_ids(root: Path) -> set[str]:
    """Geometries of every frame in the campaign's dataset files (dataset, failed frames, each
    generation's frames, labels and training snapshots)."""
    files = [root / "dataset.extxyz", root / "failed.extxyz"]
    files += sorted(root.glob("generations/*/*.extxyz"))
    return {_frame_id(f) for path in files if path.is_file() for f in read_frames(path)}


def _frame_id(atoms: Atoms) -> str:
    from hillwalker.engines.multilevel import frame_id

    return frame_id(atoms)


# --------------------------------------------------------------------------------------------
# sampling


def _sample(
    plan: _Plan,
    work: Path,
    seed: int,
    threads: int,
    summary: TestSetSummary,
    on_segment: SegmentCallback | None,
) -> list[Atoms]:
    """Frames along short MD segments from spread starts, each with ``info["cv"]``."""
    from hillwalker.engines.plumed import PlumedInputError, count_hills
    from hillwalker.engines.potentials import load_potential
    from hillwalker.engines.walkers import Walker, WalkerError, run_segment

    starts = _starts(plan)
    try:
        calculator = load_potential(plan.model, threads=threads, cores=threads)
    except Exception as exc:  # torch, nequip and the potential record raise many types
        raise TestSetError(f"{plan.model}: cannot load the model ({exc})") from exc
    try:
        plumed = frozen_bias_input(plan.root / plan.cfg.plumed_file, plan.settings.steps)
    except PlumedInputError as exc:
        raise TestSetError(str(exc)) from None
    taken = dataset_frame_ids(plan.root)
    w = plan.cfg.walkers
    hills = _campaign_hills(plan.root)
    n_walkers = max([w.count, *(int(p.suffix[1:]) + 1 for p in hills)])
    summary.bias, summary.hills = w.bias, sum(count_hills(p) for p in hills)
    found: list[Atoms] = []
    for k, (index, start) in enumerate(starts):
        segment_dir = work / MD_DIR / f"s{k}"
        if segment_dir.exists():
            shutil.rmtree(segment_dir)  # a new sample: no state of an earlier one carries over
        bias_dir = segment_dir / "bias"
        bias_dir.mkdir(parents=True)
        for path in hills:
            shutil.copyfile(path, bias_dir / path.name)
        walker = Walker(index, generation=0, n_walkers=n_walkers, bias_dir=bias_dir, bias=w.bias)
        try:
            segment = run_segment(
                start,
                calculator,
                plumed,
                segment_dir / "md",
                walker,
                plan.settings,
                seed=seed * 1000 + k,
                model=str(plan.model),
            )
        except (WalkerError, PlumedInputError) as exc:
            raise TestSetError(f"MD segment {k} ({segment_dir}): {exc}") from None
        summary.hills_added += segment.hills_added
        frames = _segment_frames(segment, plan, summary, taken)
        found.extend(frames)
        if on_segment is not None:
            on_segment(k + 1, len(starts), segment, len(frames))
    for frame in found:
        frame.info.update(
            testset=True, testset_campaign=str(plan.root), testset_model=str(plan.model)
        )
    return found


def _campaign_hills(root: Path) -> list[Path]:
    from hillwalker.engines.plumed import hills_files

    return hills_files(root / "bias")


def frozen_bias_input(path: Path, steps: int) -> str:
    """The PLUMED input with METAD's ``PACE`` above ``steps``: the bias of the hills it restarts
    from, felt but not added to (a segment deposits no hill)."""
    from hillwalker.engines.plumed import parse_action, read_input

    lines = []
    for line in read_input(path):
        if parse_action(line)[1] == "METAD":
            words = [w for w in line.split() if w.partition("=")[0].upper() != "PACE"]
            line = " ".join([*words, f"PACE={steps + 1}"])
        lines.append(line)
    return "\n".join(lines) + "\n"


def _starts(plan: _Plan) -> list[tuple[int, Atoms]]:
    """(walker, frame) to start each segment from: walker final frames spread over the CVs the
    walkers reached (the start structure when no walker has run yet), momenta left to draw."""
    from hillwalker.state import CampaignDir
    from hillwalker.validate import read_structure

    cdir = CampaignDir(plan.root)
    visited: list[tuple[int, Atoms]] = []
    cvs: list[dict[str, float]] = []  # where each final frame is, as its walker record says
    for record in cdir.records("walker"):
        final = record.get("final")
        if record["status"] not in (STATUS_DONE, STATUS_BLOWN_UP) or not final:
            continue
        if not (plan.root / final).is_file() or not isinstance(record.get("cv"), dict):
            continue
        index = int(record.get("walker") or 0)
        index = index if index < plan.cfg.walkers.count else 0
        visited.append((index, read_frames(plan.root / final)[-1]))
        cvs.append({k: v for k, v in record["cv"].items() if isinstance(v, int | float)})
    if not visited:
        try:
            structure = read_structure(plan.root / plan.cfg.structure_file)
        except ValueError as exc:
            raise TestSetError(str(exc)) from None
        visited, cvs = [(0, structure)], [{}]
    chosen = pick_spread(cvs, plan.segments)
    starts = []
    for i in chosen:
        index, atoms = visited[i]
        bare = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        bare.info["step"] = 0  # a fresh step counter: COLVAR rows fall on the trajectory frames
        starts.append((index, bare))
    return starts


def _segment_frames(
    segment: WalkerSegment, plan: _Plan, summary: TestSetSummary, taken: set[str]
) -> list[Atoms]:
    """The usable frames a segment wrote, each with its CV values in ``info["cv"]``."""
    import ase.io

    from hillwalker.engines.geometry import geometry_problem
    from hillwalker.engines.plumed import colvar_rows
    from hillwalker.engines.walkers import TRAJECTORY_NAME

    stride, dt = plan.settings.trajectory_stride, plan.settings.timestep_fs
    names = list((segment.final.info.get("cv") or {}).keys())
    by_step = {
        round(row["time"] * 1000 / dt): {n: row[n] for n in names if n in row}
        for row in colvar_rows(segment.colvar)
        if "time" in row
    }
    last_safe = segment.end_step
    if segment.status == STATUS_BLOWN_UP:
        summary.blown_up += 1
        last_safe = int(segment.final.info.get("step", segment.start_step))
    path = Path(segment.log).parent / TRAJECTORY_NAME
    written = ase.io.read(path, index=":") if path.is_file() else []
    frames = []
    for k, atoms in enumerate(written if isinstance(written, list) else [written]):
        step = segment.start_step + k * stride
        if k == 0:
            continue  # the start: a frame the campaign's walkers made, not a new one
        summary.sampled += 1
        cv = by_step.get(step)
        if step > last_safe or not cv or len(cv) < len(names):
            continue
        frame = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        if geometry_problem(frame, plan.cfg.safety.min_distance) is not None:
            summary.insane += 1
            continue
        if _frame_id(frame) in taken:
            summary.in_dataset += 1
            continue
        frame.info.update(cv=cv, testset_step=step, testset_segment=segment.walker)
        frames.append(frame)
    return frames


# --------------------------------------------------------------------------------------------
# picking


def pick_spread(cvs: list[dict[str, float]], n: int) -> list[int]:
    """Indices of up to ``n`` of the points ``cvs`` spread evenly over their CV values.

    One CV: the points nearest to ``n`` evenly spaced values from the smallest to the largest.
    Several: farthest-point picking in the CVs scaled to their ranges. Points without CV values
    come last, in order. The result is sorted.
    """
    names = sorted({k for cv in cvs for k in cv})
    known = [i for i, cv in enumerate(cvs) if names and all(k in cv for k in names)]
    rest = [i for i in range(len(cvs)) if i not in set(known)]
    if n >= len(known):
        return sorted(known + rest[: n - len(known)])
    values = np.array([[cvs[i][k] for k in names] for i in known], dtype=float)
    span = values.max(axis=0) - values.min(axis=0)
    scaled = (values - values.min(axis=0)) / np.where(span > 0, span, 1.0)
    chosen: list[int] = []
    if len(names) == 1:
        free = np.ones(len(known), dtype=bool)
        for target in np.linspace(0.0, 1.0, n):
            distance = np.where(free, np.abs(scaled[:, 0] - target), math.inf)
            best = int(np.argmin(distance))
            free[best] = False
            chosen.append(best)
    else:
        chosen = [int(np.argmin(scaled[:, 0]))]
        nearest = np.linalg.norm(scaled - scaled[chosen[0]], axis=1)
        while len(chosen) < n:
            nearest[chosen] = -1.0  # never twice, even among equal points
            best = int(np.argmax(nearest))
            chosen.append(best)
            nearest = np.minimum(nearest, np.linalg.norm(scaled - scaled[best], axis=1))
    return sorted(known[i] for i in chosen)


def _cv_range(frames: list[Atoms]) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for frame in frames:
        for name, value in (frame.info.get("cv") or {}).items():
            lo, hi = out.get(name, (value, value))
            out[name] = (min(lo, value), max(hi, value))
    return out
