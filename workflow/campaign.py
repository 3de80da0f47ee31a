"""The incremental-learning loop (Vandenhaute et al. 2023), in the paper's words.

    generation 0:  perturb the start structure → label the frames → train model 0
    generation g:  walkers explore with model g-1 and the kept bias → their final frames are
                   labeled → the dataset grows → model g trains → the bias is snapshotted

Every step is a task with a record in the campaign directory (``state.py``), keyed by a content
hash of its inputs. Running the loop again replays it: a task whose record is done is not redone,
so an interrupted campaign resumes where it stopped. The loop never touches Parsl directly; tasks
go through ``Execution.submit`` (``execution.py``); what surrounds the loop (lock, Parsl start,
signals, logs) is ``runner.py``.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ase import Atoms
from ase.data import atomic_numbers

from hillwalker import settings, tasks
from hillwalker.config import Campaign, load_campaign
from hillwalker.engines.dataset import (
    STATUS_BLOWN_UP,
    STATUS_DONE,
    STATUS_FAILED,
    DatasetError,
    read_frames,
    write_frames,
)
from hillwalker.engines.files import atomic_write_json, file_digest, read_json
from hillwalker.state import CampaignDir, StateError, frame_digest, task_key
from hillwalker.tasks import Timed
from hillwalker.timings import GenerationClock

if TYPE_CHECKING:
    from hillwalker.engines.levels import ReferenceLevel, SinglePointResult
    from hillwalker.engines.nequip import TrainedModel
    from hillwalker.engines.potentials import Potential
    from hillwalker.engines.walkers import WalkerSegment

log = logging.getLogger("hillwalker.campaign")


class CampaignError(RuntimeError):
    """The campaign cannot go on; the message says why and what to do."""


@dataclass
class Progress:
    """What the loop is doing now; shown live by the CLI and saved in .hillwalker/run.json."""

    generation: int = 0
    stage: str = "starting"
    walkers_done: int = 0
    walkers_total: int = 0
    walker_steps: dict[int, int] = field(default_factory=dict)
    single_points_done: int = 0
    single_points_failed: int = 0
    single_points_total: int = 0
    epoch: int | None = None
    max_epochs: int | None = None
    skipped: int = 0  # tasks found done on disk and not redone
    stop_reason: str | None = None  # why the loop ended (a stop rule, or all generations done)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


#: a single point in flight, or its labeled frame when its record says it is finished
Label = cf.Future[Any] | Atoms


@dataclass(frozen=True)
class Part:
    """One material's share of a campaign: its view of campaign.yaml (its structure, PLUMED
    input, walkers and generation0), its live bias and the generation its first frames were
    labeled in. A campaign of one material has one part, named None."""

    name: str | None
    cfg: Campaign
    bias_dir: Path
    joined: int = 0

    @property
    def count(self) -> int:
        return self.cfg.walkers.count


class CampaignRun:
    """One invocation of the loop on a started ``Execution``."""

    def __init__(
        self,
        directory: str | Path,
        *,
        config: Campaign | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.dir = CampaignDir(Path(directory))
        self.cfg = config if config is not None else load_campaign(self.dir.root)
        self.on_progress = on_progress
        self.progress = Progress()
        self._level: ReferenceLevel | None = None
        self.baseline: ReferenceLevel | None = None  # material.baseline, the cheaper level
        #: material.intermediates: the levels between the baseline and the target, cheapest first
        self.intermediates: list[ReferenceLevel] = []
        self._target_quota: dict[int, int] = {}
        self._walker_keys: dict[tuple[int, int], tuple[str, Path]] = {}
        self.parts: list[Part] = []
        #: generation g's walkers in loop order: (part, index within its material)
        self._slots: dict[int, list[tuple[Part, int]]] = {}
        self._frames0 = 0  # generation 0's perturbed frames (all materials)
        self._pending_labels: dict[str, tuple[Atoms, dict[str, Any]]] = {}
        self._label_keys: dict[cf.Future[Any], str] = {}
        self._clock = GenerationClock()
        self._skipped_before = 0
        self._test_errors: dict[int, dict[str, Any]] = {}

    # ---- the loop ----------------------------------------------------------------------------
    def run(self, execution: Any) -> list[TrainedModel]:
        """Run (or resume) the campaign on a started ``Execution``; returns every model."""
        from hillwalker.engines.levels import load_level

        self.parts = self._load_parts()
        symbols = {s for part in self.parts for s in self.start_structure(part).symbols}
        self._level = load_level(self.dir.root / self.cfg.material.level)
        self._level.check_elements(symbols)
        if self.cfg.material.baseline is not None:
            self.baseline = load_level(self.dir.root / self.cfg.material.baseline)
            self.baseline.check_elements(symbols)
            if self.baseline.name == self._level.name:
                raise CampaignError(
                    f"{self.dir.root / 'campaign.yaml'}: material.baseline: its level name "
                    f"{self.baseline.name!r} is material.level's too; labels of the two levels "
                    "would be mixed (rename one level file)"
                )
        self.intermediates = self._load_intermediates(symbols)
        self.ex = execution
        models = [self.generation_zero()]
        for g in range(1, self.cfg.stop.generations + 1):
            # a generation already trained is replayed: a stop rule added since applies after it
            reason = None if self._trained(g) else self.stop_reason(g - 1, models[-1])
            if reason:
                log.info("stopping before generation %d: %s", g, reason)
                self._report(stop_reason=reason)
                break
            models.append(self.generation(g, models[-1]))
        else:
            self._report(stop_reason=f"all {self.cfg.stop.generations} generation(s) done")
        self._report(stage="finished")
        return models

    def _load_intermediates(self, symbols: set[str]) -> list[ReferenceLevel]:
        """material.intermediates' levels, each covering the structure, no two of one name."""
        from hillwalker.engines.levels import load_level

        levels = []
        taken = [self.level.name, *([self.baseline.name] if self.baseline else [])]
        for n, name in enumerate(self.cfg.material.intermediates or []):
            level = load_level(self.dir.root / name)
            level.check_elements(symbols)
            if level.name in taken:
                raise CampaignError(
                    f"{self.dir.root / 'campaign.yaml'}: material.intermediates.{n}: its level "
                    f"name {level.name!r} is another level's too; labels of the two would be "
                    "mixed (rename one level file)"
                )
            taken.append(level.name)
            levels.append(level)
        return levels

    def generation_zero(self) -> TrainedModel:
        """Perturb the start structure, label the frames, train the first model."""
        self._begin_generation(0)
        self._report(generation=0, stage="perturbing")
        frames = self._perturbed(0)
        self._report(stage="labeling")
        self._slots[0] = []
        self._frames0 = len(frames)
        chosen = frames[: self._target_count(0)]
        labels = {
            i: self._label(frame, generation=0, index=i, material=frame.info.get("material"))
            for i, frame in enumerate(chosen)
        }
        base: dict[Any, Label] = {}
        if self.baseline is not None:  # the cheap level labels every frame
            base = {
                i: self._label(frame, generation=0, index=i, level=self.baseline)
                for i, frame in enumerate(frames)
            }
        middle = {
            (j, i): self._label(frame, generation=0, index=i, level=level)
            for j, level in enumerate(self.intermediates)
            for i, frame in enumerate(frames[: self._middle_count(0)])
        }
        self._collect(
            0, self._wait_labels(labels), self._wait_labels(base), self._wait_labels(middle)
        )
        return self._train(0, previous=None)

    def generation(self, g: int, model: TrainedModel) -> TrainedModel:
        """Walkers explore with ``model``; their final frames are labeled; the next model trains.
        A material added since the last generation joins here: its generation-0 frames are
        labeled beside the walkers' (its walkers start in the next generation)."""
        from hillwalker.engines.plumed import snapshot_hills

        self._begin_generation(g)
        slots = self._slots[g] = [
            (p, k) for p in self.parts if p.joined < g for k in range(p.count)
        ]
        self._report(generation=g, stage="exploring", walkers_done=0, walkers_total=len(slots))
        for part in self.parts:
            part.bias_dir.mkdir(parents=True, exist_ok=True)
        joining = self._perturbed(g)
        joined = {
            len(slots) + n: self._label(
                frame, generation=g, index=n, material=frame.info["material"]
            )
            for n, frame in enumerate(joining)
        }
        segments, labels, base, middle = self._explore_all(g, model)
        self._report(walkers_done=len(segments), stage="labeling")
        labels.update(joined)
        self._label_copies(g, segments, len(slots) + len(joining), labels, base, middle)
        labeled, base_labeled = self._wait_labels(labels), self._wait_labels(base)
        middle_labeled = self._wait_labels(middle)
        self._collect(g, labeled, base_labeled, middle_labeled)
        self._update_walker_states(g, segments, labeled, base_labeled, middle_labeled)
        if self.cfg.walkers.bias != "none":
            for part in self.parts:
                hills = self.dir.generation(g) / "hills"
                if part.joined < g:
                    snapshot_hills(part.bias_dir, hills if part.name is None else hills / part.name)
        return self._train(g, previous=model)

    # ---- materials ---------------------------------------------------------------------------
    def _load_parts(self) -> list[Part]:
        """One part per material. In a campaign of several, each material's joining generation is
        recorded the first time a run sees it (materials.json, before any of its work): the first
        generation not yet trained, so a material added to a running campaign starts there."""
        views = self.cfg.views()
        if views[0][0] is None:
            return [Part(None, self.cfg, self.dir.bias)]
        joins: dict[str, int] = read_json(self.dir.materials) or {}
        new = [name for name, _ in views if name is not None and name not in joins]
        first = 0
        while new and self._trained(first):
            first += 1
        joins = {**joins, **{name: first for name in new}}
        parts = [
            Part(name, view, self.dir.bias_of(name), joins[name])
            for name, view in views
            if name is not None
        ]
        self._check_new_elements(parts)
        if new:
            self.dir.state.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.dir.materials, joins)
            if first > 0:
                log.info("material(s) %s join at generation %d", ", ".join(new), first)
        return parts

    def _check_new_elements(self, parts: list[Part]) -> None:
        """A material that joins a running campaign with elements its model has no type for
        cannot warm-start that model: refused, with the way out (element-transfer surgery)."""
        if self.cfg.training.mode != "warm" or all(part.joined == 0 for part in parts):
            return
        elements = [set(self.start_structure(part).symbols) for part in parts]  # read once
        for n, part in enumerate(parts):
            if part.joined == 0:
                continue
            known = {
                s
                for m, other in enumerate(parts)
                if other.joined < part.joined
                for s in elements[m]
            }
            new = sorted(elements[n] - known)
            if new:
                z = atomic_numbers[new[0]]
                like = min(sorted(known), key=lambda s: abs(atomic_numbers[s] - z))
                raise CampaignError(
                    f"{self.dir.root / 'campaign.yaml'}: materials.{n} ({part.name}): "
                    f"{', '.join(new)} joins a campaign whose model has no type for it (warm "
                    "starts cannot add a type). Take it out again, and start a new campaign "
                    "with all materials from this one's model: training.init: "
                    f"{self.dir.model_dir(part.joined - 1)} and training.species_map mapping "
                    f"each new element onto a known one (e.g. {{{new[0]}: {like}}}); "
                    "docs/element-transfer.md"
                )

    def _perturbed(self, g: int) -> list[Atoms]:
        """Generation-0 frames of every material joining at generation g (each material's own
        generation0 settings; the material named in each frame), written to frames.extxyz."""
        from hillwalker.engines.perturb import perturb

        frames = []
        for part in self.parts:
            if part.joined != g:
                continue
            g0 = part.cfg.generation0
            new = perturb(
                self.start_structure(part),
                g0.frames,
                position_sigma=g0.position_sigma,
                strain=g0.cell_strain,
                seed=self.cfg.seed if part.name is None else _seed(self.cfg.seed, part.name),
            )
            for frame in new:
                if part.name is not None:
                    frame.info["material"] = part.name
            frames += new
        if frames:
            write_frames(self.dir.generation(g) / "frames.extxyz", frames)
        return frames

    def _trained(self, g: int) -> bool:
        return any(
            r.get("generation") == g and r["status"] == STATUS_DONE
            for r in self.dir.records("train")
        )

    def stop_reason(self, g: int, model: TrainedModel) -> str | None:
        """Why the campaign stops after generation ``g``, or None to go on."""
        stop = self.cfg.stop
        spent = len(self.dir.records("single_point"))
        if stop.max_single_points is not None and spent >= stop.max_single_points:
            return f"single-point budget spent ({spent} ≥ {stop.max_single_points})"
        budget = self.cfg.labeling.target_budget
        if self.baseline is not None and budget is not None:
            spent = self._target_spent(g + 1)
            if spent >= budget:
                return f"target-level budget spent ({spent} ≥ labeling.target_budget {budget})"
        if stop.target_force_rmse is not None:
            where = f"test set {stop.target_set}" if stop.target_set else "validation"
            errors = (
                self._test_errors.get(g, {}).get(stop.target_set)
                if stop.target_set
                else model.metrics
            )
            force = (errors or {}).get("force_rmse_mev_per_ang")
            if force is not None and force <= stop.target_force_rmse:
                return f"{where} force RMSE {force:.1f} meV/Å ≤ target {stop.target_force_rmse}"
        if stop.coverage_generations is not None:
            from hillwalker.coverage import coverage_stalled

            stalled = coverage_stalled(
                self.dir, g, stop.coverage_generations, stop.coverage_tolerance
            )
            if stalled:
                return stalled
        if stop.fes_change_kj_per_mol is not None:
            from hillwalker.coverage import fes_settled

            return fes_settled(self.dir, g, stop.fes_change_kj_per_mol)
        return None

    # ---- labeling ----------------------------------------------------------------------------
    @property
    def level(self) -> ReferenceLevel:
        if self._level is None:
            raise RuntimeError("the level of theory is loaded by run()")
        return self._level

    def _target_spent(self, g: int) -> int:
        """Target-level single points recorded for generations before ``g``."""
        return sum(
            r.get("level", self.level.name) == self.level.name and (r.get("generation") or 0) < g
            for r in self.dir.records("single_point")
        )

    def _target_count(self, g: int) -> int:
        """How many of generation g's frames get a target label (the first ones: generation 0's
        perturbed frames, the walkers' final frames): all without a baseline; else as
        labeling.target_* allow. Counted from the generations before g only, so a resumed run
        chooses as the uninterrupted one did."""
        if g not in self._target_quota:
            cfg, count = self.cfg, len(self._slots[g]) if g else self._frames0
            if self.baseline is not None:
                wanted = (
                    cfg.generation0.target_frames if g == 0 else cfg.labeling.target_per_generation
                )
                count = min(count, wanted or count)
                if cfg.labeling.target_budget is not None:
                    count = min(count, max(0, cfg.labeling.target_budget - self._target_spent(g)))
            self._target_quota[g] = count
        return self._target_quota[g]

    def _middle_count(self, g: int) -> int:
        """How many of generation g's frames (the first ones) each intermediate level labels:
        generation0.intermediate_frames, labeling.intermediate_per_generation (default: all),
        never fewer than the target's."""
        if not self.intermediates:
            return 0
        count = len(self._slots[g]) if g else self._frames0
        wanted = (
            self.cfg.generation0.intermediate_frames
            if g == 0
            else self.cfg.labeling.intermediate_per_generation
        )
        return max(min(count, wanted or count), self._target_count(g))

    def _label(
        self,
        frame: Atoms,
        *,
        generation: int,
        index: int,
        walker: int | None = None,
        level: ReferenceLevel | None = None,
        snapshot: int | None = None,
        material: str | None = None,
    ) -> Label:
        """Submit a single point at ``level`` (default: material.level) unless its record says
        it is finished (done or failed). Records are keyed by (frame, level)."""
        level = level or self.level
        key = task_key("single_point", frame_digest(frame), level.digest())
        self.progress.single_points_total += 1
        record = self.dir.record("single_point", key)
        if record is not None:
            self.progress.skipped += 1
            return self._recorded_label(key, record)
        provenance = {
            "generation": generation,
            "walker": walker,
            "level": level.name,
            "task_id": f"sp-{key}",
            "index": index,
            **({} if snapshot is None else {"snapshot": snapshot}),
            **({} if material is None else {"material": material}),
        }
        self._pending_labels[key] = (frame, provenance)
        adopted = self._adopt_label(key, level)
        if adopted is not None:
            return adopted
        options = settings.single_point_options(
            self.cfg, cores=self.ex.cp2k_omp_threads, command=self.ex.cp2k_command
        )
        fut = self.ex.submit(
            "dft",
            tasks.label_frame,
            frame,
            str(level.path),
            str(self.dir.task_dir("single_point", key)),
            options,
        )
        self._label_keys[fut] = key
        fut.add_done_callback(lambda f, key=key: self._save_label(key, f))
        return fut

    def _recorded_label(self, key: str, record: dict[str, Any]) -> Atoms:
        """The labeled frame a finished single point's record points at."""
        result = self.dir.root / record["result"]
        try:
            return read_frames(result)[-1]
        except (DatasetError, IndexError) as exc:
            raise StateError(
                f"{self.dir.record_path('single_point', key)}: its result {result} is missing or "
                f"unreadable ({exc}). Delete the record and run again: that single point is redone."
            ) from None

    def _adopt_label(self, key: str, level: ReferenceLevel) -> Atoms | None:
        """A labeled frame from a finished single point that a killed run did not record.

        The engine writes its result file last and atomically, in the task directory named by
        the hash of (frame, level), so a complete result there with this level's digest is this
        very single point: recording it now instead of running it again loses nothing.
        """
        from hillwalker.engines.levels import SinglePointResult

        sp = SinglePointResult.read(self.dir.task_dir("single_point", key))
        if sp is None or sp.status != STATUS_DONE or sp.level_digest != level.digest():
            return None
        labeled = self._record_label(key, sp, (sp.workdir.stat().st_mtime,) * 2)
        log.info("%s: finished before the last run stopped; adopted", _where(labeled))
        self.progress.skipped += 1
        return labeled

    def _save_label(self, key: str, fut: cf.Future[Any]) -> None:
        """Result file first, record last: a record always points at a complete result."""
        if fut.exception() is not None:
            return  # reported by _wait_labels; no record, so a rerun retries it
        timed: Timed[SinglePointResult] = fut.result()
        self._clock.add("dft", timed.interval, timed.cpu_seconds)
        self._record_label(key, timed.result, timed.interval)

    def _record_label(
        self, key: str, sp: SinglePointResult, interval: tuple[float, float]
    ) -> Atoms:
        labeled = self._labeled(key, sp)
        result = self.dir.task_dir("single_point", key) / "result.extxyz"
        write_frames(result, [labeled])
        self._log_label(labeled, sp)
        self.dir.save_record(
            "single_point",
            key,
            {
                "status": sp.status,
                "failure": sp.failure,
                # the retries it took: ladder rungs and reruns after a crash, by name
                "corrections": [c["name"] for c in sp.corrections],
                "result": str(result.relative_to(self.dir.root)),
                "generation": labeled.info.get("generation"),
                "level": labeled.info.get("level"),
                "interval": list(interval),
                "code_seconds": float(sp.code_seconds),
                "seconds": float(sp.wall_seconds),
            },
        )
        return labeled

    def _labeled(self, key: str, sp: SinglePointResult) -> Atoms:
        """The frame with its labels (or its failure) and provenance."""
        frame, provenance = self._pending_labels[key]
        return sp.to_atoms(frame, **provenance)

    @staticmethod
    def _log_label(frame: Atoms, sp: SinglePointResult) -> None:
        where = _where(frame)
        if sp.status != STATUS_DONE:
            log.warning("%s: single point failed (%s): %s", where, sp.failure, sp.message)
        if sp.corrections:
            names = ", ".join(c["name"] for c in sp.corrections)
            log.info("%s: single point retried: %s", where, names)

    def _wait_labels(self, labels: dict[Any, Label]) -> dict[Any, Atoms]:
        out = {i: f for i, f in labels.items() if isinstance(f, Atoms)}
        pending = {f: i for i, f in labels.items() if isinstance(f, cf.Future)}
        self._count_labels(out)
        while pending:
            finished, _ = cf.wait(set(pending), timeout=1.0, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                i = pending.pop(fut)
                exc = fut.exception()
                if exc is not None:
                    raise CampaignError(f"single point {i} could not run: {exc}") from exc
                out[i] = self._labeled(self._label_keys[fut], fut.result().result)
            self._count_labels(out)
        self._count_labels(out)
        return dict(sorted(out.items()))

    def _count_labels(self, out: dict[Any, Atoms]) -> None:
        # records of all generations, plus results whose record a callback is still writing
        status = {r["key"]: r["status"] for r in self.dir.records("single_point")}
        for frame in out.values():
            status[str(frame.info.get("task_id", "")).removeprefix("sp-")] = frame.info.get(
                "status"
            )
        self._report(
            single_points_done=sum(s == STATUS_DONE for s in status.values()),
            single_points_failed=sum(s == STATUS_FAILED for s in status.values()),
        )

    def _collect(
        self,
        g: int,
        labeled: dict[int, Atoms],
        base: dict[Any, Atoms] | None = None,
        middle: dict[Any, Atoms] | None = None,
    ) -> None:
        """The generation's new frames (target labels, then intermediate labels level by level,
        then baseline labels, each in loop order), then the whole dataset, rebuilt in loop
        order. A single point found done in an earlier generation (a walker that blew up at its
        start sends the frame it started from, labeled before) is in the dataset once."""
        new = [*labeled.values(), *(middle or {}).values(), *(base or {}).values()]
        write_frames(self.dir.generation(g) / "labeled.extxyz", new)
        done: list[Atoms] = []
        failed: list[Atoms] = []
        seen: set[str] = set()
        repeated = 0
        for n in range(g + 1):
            path = self.dir.generation(n) / "labeled.extxyz"
            for frame in read_frames(path) if path.exists() else []:
                task = str(frame.info.get("task_id", ""))
                if task.startswith("sp-") and task in seen:
                    repeated += n == g and frame.info.get("status") == STATUS_DONE
                    continue
                seen.add(task)
                (done if frame.info.get("status") == STATUS_DONE else failed).append(frame)
        write_frames(self.dir.dataset, done)
        write_frames(self.dir.failed, failed)
        log.info(
            "generation %d: %d new frames%s, dataset %d frames, %d failed in all",
            g,
            sum(f.info.get("status") == STATUS_DONE for f in new) - repeated,
            f" ({repeated} more labeled before, not added again)" if repeated else "",
            len(done),
            len(failed),
        )

    # ---- walkers -----------------------------------------------------------------------------
    def _explore_all(
        self, g: int, model: TrainedModel
    ) -> tuple[dict[int, WalkerSegment], dict[int, Label], dict[Any, Label], dict[Any, Label]]:
        """Every walker's segment; single points start as soon as a walker's frame arrives.
        Returns the segments, the target-level labels (by walker), the baseline labels (by
        (walker, snapshot); the final frame is snapshot -1) and the intermediate labels (by
        (intermediate level, walker))."""
        segments: dict[int, WalkerSegment] = {}
        labels: dict[int, Label] = {}
        base: dict[Any, Label] = {}
        middle: dict[Any, Label] = {}
        running: dict[cf.Future[Any], int] = {}
        found = {i: self._explore(g, i, model) for i in range(len(self._slots[g]))}
        self._rewind_bias(g, {i: not callable(f) for i, f in found.items()})
        for i, task in found.items():
            if callable(task):
                running[task()] = i
            else:
                segments[i] = task
                self._label_segment(g, i, task, labels, base, middle)
        pending = set(running)
        while pending:
            finished, pending = cf.wait(pending, timeout=1.0, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                i = running[fut]
                segments[i] = self._record_walker(g, i, fut)
                self._label_segment(g, i, segments[i], labels, base, middle)
            self._report(walkers_done=len(segments), walker_steps=self._walker_steps(g))
        return segments, labels, base, middle

    def _label_segment(
        self,
        g: int,
        i: int,
        segment: WalkerSegment,
        labels: dict[int, Label],
        base: dict[Any, Label],
        middle: dict[Any, Label],
    ) -> None:
        """Submit a walker segment's single points: its final frame at the target level (for
        the first walkers the target quota allows) and at each intermediate level (its quota),
        and with a baseline, its snapshots and final frame at the baseline level."""
        part, k = self._slots[g][i]
        frame = _to_label(segment, part.cfg.safety.blow_up_label)
        if i < self._target_count(g):
            labels[i] = self._label(frame, generation=g, index=i, walker=k, material=part.name)
        if i < self._middle_count(g):
            for j, level in enumerate(self.intermediates):
                middle[(j, i)] = self._label(frame, generation=g, index=i, walker=i, level=level)
        if self.baseline is None:
            return
        for s, snap in enumerate(self._snapshots(g, i)):
            base[(i, s)] = self._label(
                snap, generation=g, index=i, walker=i, level=self.baseline, snapshot=s
            )
        base[(i, -1)] = self._label(frame, generation=g, index=i, walker=i, level=self.baseline)

    def _label_copies(
        self,
        g: int,
        segments: dict[int, WalkerSegment],
        first: int,
        labels: dict[int, Label],
        base: dict[Any, Label],
        middle: dict[Any, Label],
    ) -> None:
        """walkers.copies perturbed copies of each walker frame that gets a target label
        (generation0's σ and strain; seeded by the campaign seed, generation and walker, so a
        resumed run makes, and finds, the same ones), labeled at every level its frame is,
        indexed from ``first`` on (after the walkers' and joining materials' frames)."""
        from hillwalker.engines.perturb import perturb

        index = first
        for i in sorted(segments):
            part, k = self._slots[g][i]
            if not part.cfg.walkers.copies or i >= self._target_count(g):
                continue
            frame = _to_label(segments[i], part.cfg.safety.blow_up_label)
            g0 = part.cfg.generation0
            seed = _seed(self.cfg.seed, f"copies/{part.name}/{g}/{k}")
            for copy in perturb(
                frame, part.cfg.walkers.copies, position_sigma=g0.position_sigma,
                strain=g0.cell_strain, seed=seed,
            ):  # fmt: skip
                copy.info.pop("walker", None)  # not a walker's frame: a copy of one
                copy.info["copy_of_walker"] = k
                labels[index] = self._label(copy, generation=g, index=index, material=part.name)
                if i < self._middle_count(g):
                    for j, level in enumerate(self.intermediates):
                        middle[(j, index)] = self._label(
                            copy, generation=g, index=index, level=level
                        )
                if self.baseline is not None:
                    base[(index, -1)] = self._label(
                        copy, generation=g, index=index, level=self.baseline
                    )
                index += 1

    def _snapshots(self, g: int, i: int) -> list[Atoms]:
        """The frames along walker i's segment of generation g labeled at the baseline (as its
        record keeps them: read back from the file, so a resumed run sees the same frames)."""
        key, _ = self._walker_keys[(g, i)]
        record = self.dir.record("walker", key) or {}
        path = record.get("snapshots")
        return read_frames(self.dir.root / path) if path else []

    def _save_snapshots(self, g: int, i: int, key: str) -> str | None:
        """labeling.baseline_snapshots frames of the segment's trajectory (steps stride,
        2 stride, ...; not its start) as bare geometries in the walker's task directory."""
        from hillwalker.engines.walkers import TRAJECTORY_NAME

        n = self.cfg.labeling.baseline_snapshots
        if self.baseline is None or n == 0:
            return None
        try:
            import ase.io

            found = ase.io.read(self._walker_dir(g, i) / TRAJECTORY_NAME, index=f"1:{n + 1}")
        except Exception as exc:  # a segment that died at its start has no trajectory
            log.warning("generation %d walker %d: no trajectory snapshots (%s)", g, i, exc)
            found = []
        frames = [
            Atoms(
                numbers=a.numbers,
                positions=a.positions,
                cell=a.cell,
                pbc=a.pbc,
                info={"generation": g, "walker": i},
            )
            for a in (found if isinstance(found, list) else [found])
        ]
        path = self.dir.task_dir("walker", key) / "snapshots.extxyz"
        write_frames(path, frames)
        return str(path.relative_to(self.dir.root))

    def _walker_dir(self, g: int, i: int) -> Path:
        part, k = self._slots[g][i]
        return self.dir.walker_dir(g, k, part.name)

    def _start_of(self, g: int, i: int) -> Path:
        """Where walker i starts generation g: its last good state (or the start structure)."""
        part, k = self._slots[g][i]
        states = self._walker_states(g - 1)
        start = states.get(_state_key(part, k)) if self.cfg.walkers.start == "continue" else None
        return Path(start) if start else self._start_structure_file(part)

    def _rewind_bias(self, g: int, replayed: dict[int, bool]) -> None:
        """Before a walker of generation g runs again, each part's hills go back to where they
        stood when g began (a run whose model or walker settings changed since re-runs g, but
        the live bias may hold the hills of g and the generations after it)."""
        from hillwalker.engines.hills_ledger import rewind

        if self.cfg.walkers.bias == "none" or all(replayed.values()):
            return
        for part in self.parts:
            mine = {k: replayed[i] for i, (p, k) in enumerate(self._slots[g]) if p is part}
            snapshots = {
                h: self.dir.generation(h) / "hills" / (part.name or "")
                for h in (g - 1, g)
                if h > part.joined
            }
            removed = rewind(part.bias_dir, g, mine, snapshots)
            if any(removed.values()):
                log.warning(
                    "before generation %d's walkers run: %d hill(s) of segments being run again "
                    "(killed, or with other inputs) and of later generations taken out of %s "
                    "(walkers %s), back to the bias the generation began with",
                    g,
                    sum(removed.values()),
                    part.bias_dir,
                    ", ".join(str(k) for k, n in removed.items() if n),
                )

    def _explore(
        self, g: int, i: int, model: TrainedModel
    ) -> WalkerSegment | Callable[[], cf.Future[Any]]:
        """The walker's recorded segment, or what submits its segment to run."""
        from hillwalker.engines.potentials import potential_digest
        from hillwalker.engines.walkers import Walker

        part, k = self._slots[g][i]
        w = part.cfg.walkers
        start = self._start_of(g, i)
        walker_settings = settings.walker_settings(part.cfg)
        bonds_of = self._start_structure_file(part) if part.cfg.safety.keep_bonds else None
        seed = self.cfg.seed * 1000 + g * 100 + k
        deployed = self._deployed(model)
        plumed = self.dir.root / part.cfg.plumed_file
        key = task_key(
            "walker",
            g,
            k,
            potential_digest(deployed),
            file_digest(start),
            dataclasses.asdict(walker_settings),
            seed,
            w.bias,
            w.count,
            file_digest(plumed),
            *(() if part.name is None else (part.name,)),
            # only when set: the keys of campaigns that do not keep bonds stay as they were
            *(("keep_bonds", file_digest(bonds_of)) if bonds_of else ()),
        )
        self._walker_keys[(g, i)] = (key, start)
        record = self.dir.record("walker", key)
        if record is not None and record["status"] in (STATUS_DONE, STATUS_BLOWN_UP):
            self.progress.skipped += 1
            return _segment_from_record(record, self.dir.root)
        walker = Walker(
            index=k, generation=g, n_walkers=w.count, bias_dir=part.bias_dir, bias=w.bias
        )
        return functools.partial(
            self.ex.submit,
            "md",
            tasks.explore,
            str(deployed),
            str(start),
            str(plumed),
            str(self._walker_dir(g, i)),
            walker=walker,
            settings=walker_settings,
            seed=seed,
            last_safe=str(start),
            threads=self.ex.threads("md"),
            bonds_of=str(bonds_of) if bonds_of else None,
        )

    def _record_walker(self, g: int, i: int, fut: cf.Future[Any]) -> WalkerSegment:
        key, _ = self._walker_keys[(g, i)]
        exc = fut.exception()
        if exc is not None:
            raise CampaignError(f"walker {i} of generation {g} could not run: {exc}") from exc
        timed: Timed[WalkerSegment] = fut.result()
        segment = timed.result
        self._clock.add("md", timed.interval, timed.cpu_seconds)
        final_path = self.dir.task_dir("walker", key) / "final.extxyz"
        write_frames(final_path, [segment.final])
        failed_path = None
        if segment.failed is not None:
            failed_path = self.dir.task_dir("walker", key) / "failed.extxyz"
            write_frames(failed_path, [segment.failed])
        part, _ = self._slots[g][i]
        record = {
            **_segment_record(segment),
            **({} if part.name is None else {"material": part.name}),
            "final": str(final_path.relative_to(self.dir.root)),
            "failed": str(failed_path.relative_to(self.dir.root)) if failed_path else None,
            "cv": segment.final.info.get("cv"),
            "snapshots": self._save_snapshots(g, i, key),
            "interval": list(timed.interval),
            "seconds": timed.seconds,
        }
        self.dir.save_record("walker", key, record)
        _log_walker_events(g, self._walker_name(g, i), segment.events)
        return segment

    def _update_walker_states(
        self,
        g: int,
        segments: dict[int, WalkerSegment],
        labeled: dict[int, Atoms],
        base: dict[Any, Atoms],
        middle: dict[Any, Atoms],
    ) -> None:
        """Where each walker starts the next generation (:func:`next_start`)."""
        states = {}
        for i, segment in segments.items():
            _, start = self._walker_keys[(g, i)]
            part, k = self._slots[g][i]
            at_levels = [labeled.get(i), base.get((i, -1))]
            at_levels += [middle.get((j, i)) for j in range(len(self.intermediates))]
            finals = [f for f in at_levels if f is not None]
            limits = (self.cfg.training.max_label_force, part.cfg.safety.max_force)
            states[_state_key(part, k)] = str(
                next_start(
                    segment,
                    finals,
                    min(x for x in limits if x is not None),
                    start,
                    self._start_structure_file(part),
                    labeled_final=_sends_last_safe(segment, part.cfg.safety.blow_up_label),
                )
            )
        atomic_write_json(self.dir.walker_states(g), states)

    def _walker_states(self, g: int) -> dict[str, str]:
        if g < 1:
            return {}
        return read_json(self.dir.walker_states(g)) or {}

    def _walker_steps(self, g: int) -> dict[int, int]:
        """The MD step each walker of generation g has reached (last line of its walker.log)."""
        from hillwalker.engines.walkers import LOG_NAME

        steps = {}
        for i in range(len(self._slots[g])):
            path = self._walker_dir(g, i) / LOG_NAME
            try:
                with path.open("rb") as handle:
                    handle.seek(max(0, path.stat().st_size - 400))
                    last = handle.read().decode(errors="replace").strip().splitlines()[-1]
                steps[i] = int(last.split()[0])
            except (OSError, IndexError, ValueError):
                continue
        return steps

    # ---- training ----------------------------------------------------------------------------
    def _train(self, g: int, previous: TrainedModel | None) -> TrainedModel:
        if self.baseline is not None:
            return self._train_levels(g, previous)
        from hillwalker.engines.nequip import TrainedModel

        warm = previous is not None and self.cfg.training.mode == "warm"
        init = previous.package if warm and previous is not None else None
        species_map, refit = None, False
        if g == 0 and self.cfg.training.init is not None:
            # a start model of other elements: their weights copied, their references fitted;
            # else every element's reference re-fitted to generation 0 (another level, too)
            init, warm = settings.init_package(self.dir.root, self.cfg), True
            species_map = self.cfg.training.species_map
            refit = not species_map
        changes = settings.training_changes(self.cfg, g, warm=warm)
        data = self.dir.generation(g) / "train.extxyz"
        write_frames(data, self._training_frames(g))
        template = self.dir.root / self.cfg.material.nequip
        compile = settings.compile_models(self.cfg, self.ex.parallel("md"))

        def key_for(compiled: bool) -> str:
            return task_key(
                "train",
                g,
                file_digest(data),
                file_digest(template),
                changes,
                file_digest(init) if init else None,
                *(() if compiled else ("eager",)),  # a compiled model's key is as before
                *((sorted(species_map.items()),) if species_map else ()),
                *(("refit-references",) if refit else ()),
            )

        key = key_for(compile)

        def submit(out_dir: Path) -> cf.Future[Any]:
            return self.ex.submit(
                "train",
                tasks.train_generation,
                str(data),
                str(out_dir),
                template=str(template),
                settings=settings.train_settings(template, changes, split_seed=self.cfg.seed),
                init_from=str(init) if init else None,
                threads=self.ex.threads("train"),
                compile=compile,
                species_map=species_map,
                refit_references=refit,
            )

        return self._training(
            g, key, changes["epochs"], TrainedModel.from_record, submit, other=key_for(not compile)
        )

    def _train_levels(self, g: int, previous: TrainedModel | None) -> TrainedModel:
        """Generation g's potential from the labels at both levels (training.method), each
        NequIP part warm-started from the previous generation's namesake (training.mode)."""
        from hillwalker.engines.potentials import potential_digest, read_potential

        assert self.baseline is not None
        t, baseline = self.cfg.training, self.baseline
        warm = previous is not None and t.mode == "warm"
        changes = settings.training_changes(self.cfg, g, warm=warm)
        data = self.dir.generation(g) / "train.extxyz"
        write_frames(data, self._training_frames(g))
        template = self.dir.root / self.cfg.material.nequip
        baseline_file = self.dir.root / str(self.cfg.material.baseline)
        init = previous.directory if warm and previous is not None else None
        compile = settings.compile_models(self.cfg, self.ex.parallel("md"))
        middle = [level.name for level in self.intermediates]

        def key_for(compiled: bool) -> str:
            return task_key(
                "train-levels",
                g,
                t.method,
                self.level.name,
                baseline.name,
                file_digest(data),
                file_digest(template),
                file_digest(baseline_file),
                changes,
                potential_digest(init) if init else None,
                compiled,
                *((middle,) if middle else ()),  # a two-level campaign's key is as before
            )

        key = key_for(compile)

        def submit(out_dir: Path) -> cf.Future[Any]:
            return self.ex.submit(
                "train",
                tasks.train_levels_generation,
                str(data),
                str(out_dir),
                method=t.method,
                target=self.level.name,
                baseline=baseline.name,
                baseline_level=str(baseline_file),
                intermediates=middle,
                template=str(template),
                settings=settings.train_settings(template, changes, split_seed=self.cfg.seed),
                init_from=str(init) if init else None,
                threads=self.ex.threads("train"),
                compile=compile,
            )

        def load(directory: Path) -> TrainedModel:
            return _as_model(read_potential(directory))

        return self._training(
            g, key, changes["epochs"], load, submit, convert=_as_model, other=key_for(not compile)
        )

    def _training(
        self,
        g: int,
        key: str,
        epochs: int,
        load: Callable[[Path], TrainedModel],
        submit: Callable[[Path], cf.Future[Any]],
        convert: Callable[[Any], TrainedModel] = lambda model: model,
        other: str | None = None,
    ) -> TrainedModel:
        """Generation g's recorded model (``load`` of its directory), or the training task
        ``submit`` starts, waited for: its record saved, its test sets scored, the generation's
        timings written. ``other``: the key of the same training with the other compile choice,
        which depends on this machine's cores (settings.compile_models): a run resumed on another
        machine takes the model trained before as it is; training it again would start the
        generations after it over on walkers and a bias that have gone on already."""
        record = self.dir.record("train", key)
        if (record is None or record["status"] != STATUS_DONE) and other is not None:
            found = self.dir.record("train", other)
            if found is not None and found["status"] == STATUS_DONE:
                key, record = other, found
        if record is not None and record["status"] == STATUS_DONE:
            self.progress.skipped += 1
            model = load(self.dir.root / record["directory"])
            self._score(g, key, model)
            return model
        out_dir = self.dir.model_dir(g)
        self._report(stage="training", epoch=0, max_epochs=epochs)
        timed = self._wait_training(g, key, submit(out_dir), out_dir)
        model = convert(timed.result)
        self._save_model(g, key, Timed(model, timed.started, timed.finished, timed.cpu_seconds))
        self._score(g, key, model)
        self._clock.write(
            self.dir.timings(g),
            g,
            cores=getattr(self.ex, "cores", 1) or 1,
            resumed=self.progress.skipped > self._skipped_before,
        )
        return model

    def _training_frames(self, g: int) -> list[Atoms]:
        """The dataset to train generation g on: without the frames whose reference force
        exceeds training.max_label_force (kept in the dataset, named in the log); with a delta
        part (delta, hierarchical), a frame whose label one step down the ladder (baseline,
        intermediates, target) failed or was left out is left out too (its difference is
        unknown)."""
        from hillwalker.engines.dataset import largest_force, split_by_force
        from hillwalker.engines.multilevel import frame_id

        limit = self.cfg.training.max_label_force
        frames, above = split_by_force(read_frames(self.dir.dataset), limit)
        if above:
            log.warning(
                "generation %d: %d frame(s) with a reference force above "
                "training.max_label_force (%g eV/Å) left out of training: %s",
                g,
                len(above),
                limit,
                ", ".join(
                    f"generation {f.info.get('generation')} task {f.info.get('task_id')} "
                    f"({largest_force(f):.0f} eV/Å, {f.get_volume():.0f} Å³)"
                    for f in above
                ),
            )
            if not frames:
                raise CampaignError(
                    f"{self.dir.root / 'campaign.yaml'}: training.max_label_force: every one "
                    f"of the {len(above)} labeled frames has a force above {limit:g} eV/Å; "
                    "nothing is left to train on (raise it, or null to train on every frame)"
                )
        if self.cfg.training.method not in ("delta", "hierarchical") or self.baseline is None:
            return frames
        ladder = [self.baseline.name, *(level.name for level in self.intermediates)]
        ladder.append(self.level.name)
        known = {frame_id(f) for f in frames if f.info.get("level") == ladder[0]}
        left_out: set[int] = set()
        for name in ladder[1:]:
            here = [n for n, f in enumerate(frames) if f.info.get("level") == name]
            left_out |= {n for n in here if frame_id(frames[n]) not in known}
            known = {frame_id(frames[n]) for n in here if n not in left_out}
        if left_out:
            log.warning(
                "%d frame(s) without a label one level down left out of the delta training",
                len(left_out),
            )
        return [f for n, f in enumerate(frames) if n not in left_out]

    def _score(self, g: int, key: str, model: TrainedModel) -> None:
        """The model's errors on every test set, recorded with its training (computed once per
        test-set file: a record that has them for the same file is left as it is)."""
        test_sets = self.cfg.evaluation.test_sets
        record = self.dir.record("train", key) or {}
        errors, digests = (
            dict(record.get("test_sets") or {}),
            dict(record.get("test_set_digests") or {}),
        )
        wanted = {name: self.dir.root / path for name, path in test_sets.items()}
        todo = {n: p for n, p in wanted.items() if digests.get(n) != file_digest(p)}
        if todo:
            self._report(stage="testing")
        futures = {
            name: self.ex.submit(
                "train",
                tasks.score_model,
                str(self._deployed(model)),
                str(path),
                threads=self.ex.threads("train"),
                level=None if self.baseline is None else self.level.name,
            )
            for name, path in todo.items()
        }
        for name, fut in futures.items():
            timed: Timed[dict[str, Any]] = tasks.result_of(fut)
            self._clock.add("train", timed.interval, timed.cpu_seconds)
            errors[name], digests[name] = timed.result, file_digest(todo[name])
            log.info(
                "generation %d model on test set %s (%d frames): force RMSE %s meV/Å, "
                "energy RMSE %s meV/atom",
                g,
                name,
                timed.result.get("n_frames"),
                _fmt(timed.result.get("force_rmse_mev_per_ang")),
                _fmt(timed.result.get("energy_rmse_mev_per_atom")),
            )
        self._test_errors[g] = {n: errors[n] for n in wanted}
        if futures:
            self.dir.save_record(
                "train", key, {**record, "test_sets": errors, "test_set_digests": digests}
            )

    def _wait_training(
        self, g: int, key: str, fut: cf.Future[Any], out_dir: Path
    ) -> Timed[TrainedModel]:
        while True:
            try:
                timed: Timed[TrainedModel] = fut.result(timeout=1.0)
                return timed
            except cf.TimeoutError:
                self._training_epoch(out_dir)
            except Exception as exc:
                self.dir.save_record(
                    "train", key, {"status": STATUS_FAILED, "error": str(exc), "generation": g}
                )
                raise CampaignError(
                    f"training of generation {g} failed: {exc}. Its log is in {out_dir}; after "
                    "fixing the cause, run again: finished work is kept."
                ) from exc

    def _save_model(self, g: int, key: str, timed: Timed[TrainedModel]) -> None:
        model = timed.result
        self._clock.add("train", timed.interval, timed.cpu_seconds)
        rel = {
            name: None if path is None else str(Path(path).relative_to(self.dir.root))
            for name, path in (
                ("package", model.package),
                ("compiled", model.compiled),
                ("directory", model.directory),
            )
        }
        self.dir.save_record(
            "train",
            key,
            {
                "status": STATUS_DONE,
                "generation": g,
                **rel,
                "metrics": model.metrics,
                "seconds": timed.seconds,
            },
        )
        m = model.metrics
        log.info(
            "generation %d model: validation force RMSE %s meV/Å, energy RMSE %s meV/atom, "
            "stress RMSE %s GPa (%s train / %s validation frames)",
            g,
            _fmt(m.get("force_rmse_mev_per_ang")),
            _fmt(m.get("energy_rmse_mev_per_atom")),
            _fmt(m.get("stress_rmse_gpa")),
            m.get("n_train"),
            m.get("n_val"),
        )

    @staticmethod
    def _deployed(model: TrainedModel) -> Path:
        """What the walkers run: the compiled model, or the eager package (training.compile)."""
        return model.compiled if model.compiled is not None else model.package

    def _training_epoch(self, out_dir: Path) -> None:
        from hillwalker.engines.nequip import PROGRESS_NAME

        # a potential's parts train one after another, each in its own directory
        found = [out_dir / PROGRESS_NAME, *out_dir.glob(f"*/{PROGRESS_NAME}")]
        found = [p for p in found if p.is_file()]
        if not found:
            return
        data = read_json(max(found, key=lambda p: p.stat().st_mtime))
        if data is not None:
            self._report(epoch=data.get("epoch"), max_epochs=data.get("max_epochs"))

    # ---- helpers -----------------------------------------------------------------------------
    def _begin_generation(self, g: int) -> None:
        self._clock = GenerationClock()
        self._skipped_before = self.progress.skipped

    def start_structure(self, part: Part | None = None) -> Atoms:
        """The start structure of ``part`` (default: of a campaign of one material)."""
        from hillwalker.validate import read_structure

        cfg = self.cfg if part is None else part.cfg
        return read_structure(self.dir.root / cfg.structure_file)

    def _start_structure_file(self, part: Part) -> Path:
        path = self.dir.start_frame
        if part.name is not None:
            path = path.with_name(f"start-{part.name}.extxyz")
        if not path.exists():
            write_frames(path, [self.start_structure(part)])
        return path

    def _walker_name(self, g: int, i: int) -> str:
        part, k = self._slots[g][i]
        return str(k) if part.name is None else f"{part.name}/{k}"

    def _report(self, **fields: Any) -> None:
        for key, value in fields.items():
            setattr(self.progress, key, value)
        atomic_write_json(self.dir.run_state, self.progress.as_dict())
        if self.on_progress is not None:
            self.on_progress(self.progress)


def _as_model(potential: Potential) -> TrainedModel:
    """A generation's potential as the loop passes models around: its directory stands for the
    package (what the walkers load: ``load_potential`` takes either), with the validation
    metrics of its main learned part (``main_model``) and the method."""
    from hillwalker.engines.nequip import TrainedModel
    from hillwalker.engines.potentials import POTENTIAL_FILE, main_model

    main = main_model(potential)
    return TrainedModel(
        directory=potential.directory,
        package=potential.directory,
        compiled=None,
        record=potential.directory / POTENTIAL_FILE,
        metrics={**main.metrics, "method": potential.method, "part": main.directory.name},
    )


def goes_on(status: str, finals: list[Atoms], max_label_force: float | None) -> bool:
    """Whether a walker's next segment starts from where this one ended: it ended normally
    (``status``), and its frame's labels (``finals``, one per level) are done and all below
    ``max_label_force`` (eV/Å; None: no limit), i.e. trained on."""
    from hillwalker.engines.dataset import split_by_force

    return status == STATUS_DONE and all(
        f.info.get("status") == STATUS_DONE and not split_by_force([f], max_label_force)[1]
        for f in finals
    )


def next_start(
    segment: WalkerSegment,
    finals: list[Atoms],
    max_force: float,
    start: Path,
    structure: Path,
    *,
    labeled_final: bool = False,
) -> Path:
    """Where a walker starts its next segment. From where this one ended when it ended normally
    and its frame was labeled (``finals``: at every level that labeled it) with every reference
    force below ``max_force`` (the lower of training.max_label_force and safety.max_force: a
    torn geometry is not trained on, and a model that learned forces above the walkers' check
    would stop the next segment at its first step); otherwise from this segment's ``start`` -
    unless it blew up there before one step, so the model it has now cannot run from that
    start: then from the material's ``structure`` (measured: a walker whose start the models
    put at 29 eV/Å went back to it and blew up at its first step in ten generations running,
    each time sending a frame labeled before, a quarter of the budget spent on nothing).
    ``labeled_final``: the labels are of the state the segment ended in (a blow-up with
    safety.blow_up_label ``last_safe``): that state counts as an end like a normal one."""
    ended = STATUS_DONE if labeled_final and segment.status == STATUS_BLOWN_UP else segment.status
    if goes_on(ended, finals, max_force):
        return segment.state_path
    if segment.status == STATUS_BLOWN_UP and segment.steps_done == 0:
        return structure
    return start


def _to_label(segment: WalkerSegment, choice: str = "failed") -> Atoms:
    """The frame a walker's segment sends to the reference level: where a blown-up walker failed
    (when that geometry is sane: the model's worst configuration, and a new one), else the state
    it ends in (for a blow-up that is a state it passed, often one labeled before). With
    ``choice`` ``last_safe`` a blow-up sends the last state of the segment that passed every
    check instead, when the segment got past its first check (a state of its own, not its
    start: measured, the configurations where a bond had gone cost the models trained on them
    — docs/learning-curve.md)."""
    if segment.status != STATUS_BLOWN_UP or _sends_last_safe(segment, choice):
        return segment.final
    return segment.failed if segment.failed is not None else segment.final


def _sends_last_safe(segment: WalkerSegment, choice: str) -> bool:
    """A blown-up segment sends (and its walker goes on from) its last safe state: ``choice``
    is ``last_safe`` and the segment went back to a state it passed after its start."""
    return (
        choice == "last_safe"
        and segment.status == STATUS_BLOWN_UP
        and any(
            e.get("kind") == "blow_up" and int(e.get("reset_to_step", -1)) > segment.start_step
            for e in segment.events
        )
    )


def _segment_record(segment: WalkerSegment) -> dict[str, Any]:
    """A walker segment as JSON (its final and failed frames go to their own extxyz files)."""
    data = {f.name: getattr(segment, f.name) for f in dataclasses.fields(segment)}
    data.pop("final")
    data.pop("failed")
    return json.loads(json.dumps(data, default=str))


def _segment_from_record(record: dict[str, Any], root: Path) -> WalkerSegment:
    """The segment a walker record describes (the inverse of :func:`_segment_record`); its
    frames are read from the files the record names, relative to the campaign ``root``."""
    from hillwalker.engines.walkers import WalkerSegment

    failed = record.get("failed")
    values: dict[str, Any] = {
        "final": read_frames(root / record["final"])[-1],
        "failed": read_frames(root / failed)[-1] if failed else None,
    }
    for f in dataclasses.fields(WalkerSegment):
        if f.name in ("final", "failed") or f.name not in record:
            continue
        value = record[f.name]
        if "Path" in str(f.type) and value is not None:
            value = [Path(v) for v in value] if isinstance(value, list) else Path(value)
        values[f.name] = value
    return WalkerSegment(**values)


def _seed(seed: int, material: str) -> int:
    """A material's own seed: two materials never get the same perturbations."""
    return seed + int(hashlib.sha256(material.encode()).hexdigest()[:8], 16)


def _state_key(part: Part, k: int) -> str:
    """A walker's entry in walkers.json: its index, or material/index with several materials."""
    return str(k) if part.name is None else f"{part.name}/{k}"


def _log_walker_events(g: int, i: str, events: list[dict[str, Any]]) -> None:
    for event in events:
        if event.get("kind") == "blow_up":
            reset = event.get("reset_to") or f"step {event.get('reset_to_step')}"
            log.warning(
                "generation %d walker %s blew up at step %s (%s); reset to %s",
                g,
                i,
                event.get("step"),
                event.get("reason"),
                reset,
            )
        else:
            log.warning("generation %d walker %s: %s", g, i, event)


def _where(frame: Atoms) -> str:
    material = frame.info.get("material")
    where = f"generation {frame.info.get('generation')} frame {frame.info.get('index')}"
    return where if material is None else f"{where} ({material})"


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) else "n/a"
