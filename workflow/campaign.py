"""The incremental-learning loop (Vandenhaute et al. 2023), in the paper's words.

    generation 0:  perturb the start structure → label the frames (CP2K) → train model 0
    generation g:  walkers explore with model g-1 and the kept bias → their final frames are
                   labeled → the dataset grows → model g trains → the bias is snapshotted

Every step is a task with a record in the campaign directory (``state.py``), keyed by a content
hash of its inputs. Running the loop again replays it: a task whose record is done is not redone,
so an interrupted campaign resumes where it stopped. The loop never touches Parsl directly; tasks
go through ``Execution.submit`` (``execution.py``), whose default is this machine.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ase import Atoms

from hillwalker import tasks
from hillwalker.config import Campaign, load_campaign
from hillwalker.engines.dataset import read_frames, write_frames
from hillwalker.engines.files import atomic_write_json, atomic_write_text, file_digest
from hillwalker.state import (
    DONE,
    FAILED,
    CampaignDir,
    frame_digest,
    reap_orphans,
    task_key,
)

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

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Model:
    generation: int
    package: Path
    compiled: Path
    metrics: dict[str, Any]


class CampaignRun:
    """One invocation of ``hillwalker run DIR``."""

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
        self._level: Any = None
        self._walker_keys: dict[tuple[int, int], tuple[str, dict[str, Any]]] = {}
        self._intervals: list[
            tuple[str, float, float]
        ] = []  # (kind, start, end) of this generation
        self._generation_start = time.time()

    # ---- the loop ----------------------------------------------------------------------------
    def run(self, execution: Any) -> list[Model]:
        """Run (or resume) the campaign on a started ``Execution``; returns every model."""
        from hillwalker.engines.cp2k import Level

        m = self.cfg.material
        self._level = Level.from_file(self.dir.root / m.level)
        self._level.check_elements(set(self.start_structure().get_chemical_symbols()))
        self.ex = execution
        models = [self.generation_zero()]
        for g in range(1, self.cfg.stop.generations + 1):
            reason = self.stop_reason(models[-1])
            if reason:
                log.info("stopping before generation %d: %s", g, reason)
                break
            models.append(self.generation(g, models[-1]))
        self._report(stage="finished")
        return models

    def generation_zero(self) -> Model:
        """Perturb the start structure, label the frames, train the first model."""
        self._begin_generation(0)
        self._report(generation=0, stage="perturbing")
        from hillwalker.engines.perturb import perturb

        g0 = self.cfg.generation0
        frames = perturb(
            self.start_structure(),
            g0.frames,
            position_sigma=g0.position_sigma,
            strain=g0.cell_strain,
            seed=self.cfg.seed,
        )
        write_frames(self.dir.generation(0) / "frames.extxyz", frames)
        self._report(stage="labeling")
        futures = {i: self._label(frame, generation=0, index=i) for i, frame in enumerate(frames)}
        labeled = self._wait_labels(futures)
        self._collect(0, labeled)
        return self._train(0, previous=None)

    def generation(self, g: int, model: Model) -> Model:
        """Walkers explore with ``model``; their final frames are labeled; the next model trains."""
        w = self.cfg.walkers
        self._begin_generation(g)
        self._report(generation=g, stage="exploring", walkers_done=0, walkers_total=w.count)
        self.dir.bias.mkdir(parents=True, exist_ok=True)
        walker_futures: dict[cf.Future[Any], int] = {}
        label_futures: dict[int, cf.Future[Any] | Atoms] = {}
        segments: dict[int, dict[str, Any]] = {}
        for i in range(w.count):
            done, fut = self._explore(g, i, model)
            if done is not None:
                segments[i] = done
                label_futures[i] = self._label(done["final_frame"], generation=g, index=i, walker=i)
            else:
                walker_futures[fut] = i
        # single points start as soon as a walker's frame arrives
        pending = set(walker_futures)
        while pending:
            finished, pending = cf.wait(pending, timeout=1.0, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                i = walker_futures[fut]
                segments[i] = self._record_walker(g, i, fut)
                label_futures[i] = self._label(
                    segments[i]["final_frame"], generation=g, index=i, walker=i
                )
            self._report(walkers_done=len(segments), walker_steps=self._walker_steps(g))
        self._report(walkers_done=len(segments), stage="labeling")
        labeled = self._wait_labels(label_futures)
        self._collect(g, labeled)
        self._update_walker_states(g, segments, labeled)
        from hillwalker.engines.plumed import snapshot_hills

        if w.bias != "none":
            snapshot_hills(self.dir.bias, self.dir.generation(g) / "hills")
        return self._train(g, previous=model)

    def stop_reason(self, model: Model) -> str | None:
        budget = self.cfg.stop.max_single_points
        spent = len(self.dir.records("single_point"))
        if budget is not None and spent >= budget:
            return f"single-point budget spent ({spent} ≥ {budget})"
        target = self.cfg.stop.target_force_rmse
        force = model.metrics.get("force_rmse_mev_per_ang")
        if target is not None and force is not None and force <= target:
            return f"validation force RMSE {force:.1f} meV/Å ≤ target {target}"
        return None

    # ---- labeling ----------------------------------------------------------------------------
    def _label(
        self, frame: Atoms, *, generation: int, index: int, walker: int | None = None
    ) -> cf.Future[Any] | Atoms:
        """Submit a single point unless its record says it is finished (done or failed)."""
        key = task_key("single_point", frame_digest(frame), self._level.digest())
        self.progress.single_points_total += 1
        if self.dir.record("single_point", key) is not None:
            self.progress.skipped += 1
            return self._finished_label(key)
        provenance = {
            "generation": generation,
            "walker": walker,
            "level": self._level.name,
            "task_id": f"sp-{key}",
            "index": index,
        }
        fut = self.ex.submit(
            "dft",
            tasks.label_frame,
            frame,
            str(self.dir.root / self.cfg.material.level),
            str(self.dir.task_dir("single_point", key)),
            command=self.ex.cp2k_command,
            omp_threads=self.ex.cp2k_omp_threads,
            timeout=self.cfg.labeling.timeout,
            min_distance=self.cfg.safety.min_distance,
            provenance=provenance,
        )
        fut.add_done_callback(lambda f, key=key: self._save_label(key, f))
        return fut

    def _save_label(self, key: str, fut: cf.Future[Any]) -> None:
        """Result file first, record last: a record always points at a complete result."""
        if fut.exception() is not None:
            return  # reported by _wait_labels; no record, so a rerun retries it
        frame, timing = fut.result()
        self._intervals.append(("dft", *timing["interval"]))
        result = self.dir.task_dir("single_point", key) / "result.extxyz"
        write_frames(result, [frame])
        corrections = json.loads(frame.info.get("corrections") or "[]")
        where = f"generation {frame.info.get('generation')} frame {frame.info.get('index')}"
        if frame.info.get("status") != DONE:
            log.warning(
                "%s: single point failed (%s): %s",
                where,
                frame.info.get("failure"),
                frame.info.get("failure_message"),
            )
        if corrections:
            log.info(
                "%s: single point retried: %s", where, ", ".join(c["name"] for c in corrections)
            )
        self.dir.save_record(
            "single_point",
            key,
            {
                "status": frame.info.get("status", FAILED),
                "failure": frame.info.get("failure"),
                # the retries it took: ladder rungs and reruns after a crash, by name
                "corrections": [c["name"] for c in corrections],
                "result": str(result.relative_to(self.dir.root)),
                "generation": frame.info.get("generation"),
                **timing,
            },
        )

    def _finished_label(self, key: str) -> Atoms:
        record = self.dir.record("single_point", key)
        assert record is not None
        return read_frames(self.dir.root / record["result"])[-1]

    def _wait_labels(self, futures: dict[int, cf.Future[Any] | Atoms]) -> dict[int, Atoms]:
        out: dict[int, Atoms] = {}
        pending = {f: i for i, f in futures.items() if isinstance(f, cf.Future)}
        for i, f in futures.items():
            if not isinstance(f, cf.Future):
                out[i] = f
        self._count_labels(out)
        while pending:
            finished, _ = cf.wait(set(pending), timeout=1.0, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                i = pending.pop(fut)
                exc = fut.exception()
                if exc is not None:
                    raise CampaignError(f"single point {i} could not run: {exc}") from exc
                out[i] = fut.result()[0]
            self._count_labels(out)
        self._count_labels(out)
        return dict(sorted(out.items()))

    def _count_labels(self, out: dict[int, Atoms]) -> None:
        # records of all generations, plus results whose record a callback is still writing
        status = {r["key"]: r["status"] for r in self.dir.records("single_point")}
        for frame in out.values():
            status[str(frame.info.get("task_id", "")).removeprefix("sp-")] = frame.info.get(
                "status"
            )
        self._report(
            single_points_done=sum(s == DONE for s in status.values()),
            single_points_failed=sum(s == FAILED for s in status.values()),
        )

    def _collect(self, g: int, labeled: dict[int, Atoms]) -> None:
        """The generation's new frames, then the whole dataset, rebuilt in loop order."""
        write_frames(self.dir.generation(g) / "labeled.extxyz", list(labeled.values()))
        done: list[Atoms] = []
        failed: list[Atoms] = []
        for n in range(g + 1):
            path = self.dir.generation(n) / "labeled.extxyz"
            for frame in read_frames(path) if path.exists() else []:
                (done if frame.info.get("status") == DONE else failed).append(frame)
        write_frames(self.dir.dataset, done)
        write_frames(self.dir.failed, failed)
        log.info(
            "generation %d: %d new frames, dataset %d frames, %d failed in all",
            g,
            sum(f.info.get("status") == DONE for f in labeled.values()),
            len(done),
            len(failed),
        )

    # ---- walkers -----------------------------------------------------------------------------
    def _walker_inputs(self, g: int, i: int, model: Model) -> dict[str, Any]:
        """Where walker i starts generation g: its last good state (or the start structure)."""
        states = self._walker_states(g - 1)
        start = states.get(str(i)) if self.cfg.walkers.start == "continue" else None
        start_path = Path(start) if start else self._start_structure_file()
        return {"start": start_path, "last_safe": start_path}

    def _explore(self, g: int, i: int, model: Model) -> tuple[dict[str, Any] | None, Any]:
        w = self.cfg.walkers
        inputs = self._walker_inputs(g, i, model)
        settings = self._walker_settings()
        seed = self.cfg.seed * 1000 + g * 100 + i
        key = task_key(
            "walker",
            g,
            i,
            file_digest(model.compiled),
            file_digest(inputs["start"]),
            settings,
            seed,
            w.bias,
            w.count,
            file_digest(self.dir.root / self.cfg.material.plumed),
        )
        self._walker_keys[(g, i)] = (key, inputs)
        record = self.dir.record("walker", key)
        if record is not None and record["status"] in ("ok", "blown_up"):
            self.progress.skipped += 1
            record["final_frame"] = read_frames(self.dir.root / record["final"])[-1]
            return record, None
        workdir = self.dir.generation(g) / "walkers" / f"w{i}"
        fut = self.ex.submit(
            "md",
            tasks.explore,
            str(model.compiled),
            str(inputs["start"]),
            str(self.dir.root / self.cfg.material.plumed),
            str(workdir),
            walker=i,
            generation=g,
            n_walkers=w.count,
            bias_dir=str(self.dir.bias),
            bias=w.bias,
            settings=settings,
            seed=seed,
            last_safe=str(inputs["last_safe"]),
        )
        return None, fut

    def _record_walker(self, g: int, i: int, fut: cf.Future[Any]) -> dict[str, Any]:
        key, _ = self._walker_keys[(g, i)]
        exc = fut.exception()
        if exc is not None:
            raise CampaignError(f"walker {i} of generation {g} could not run: {exc}") from exc
        summary = fut.result()
        self._intervals.append(("md", *summary["interval"]))
        final_path = self.dir.task_dir("walker", key) / "final.extxyz"
        final = summary.pop("final")
        write_frames(final_path, [final])
        record = {
            **summary,
            "final": str(final_path.relative_to(self.dir.root)),
            "generation": g,
            "walker": i,
            "cv": final.info.get("cv"),
        }
        self.dir.save_record("walker", key, record)
        for event in summary.get("events", []):
            if event.get("kind") == "blow_up":
                reset = event.get("reset_to") or f"step {event.get('reset_to_step')}"
                log.warning(
                    "generation %d walker %d blew up at step %s (%s); reset to %s",
                    g,
                    i,
                    event.get("step"),
                    event.get("reason"),
                    reset,
                )
            else:
                log.warning("generation %d walker %d: %s", g, i, event)
        return {**record, "final_frame": final}

    def _update_walker_states(
        self, g: int, segments: dict[int, dict[str, Any]], labeled: dict[int, Atoms]
    ) -> None:
        """A walker whose frame was labeled goes on from its state; otherwise from its last good one."""
        states = {}
        for i, seg in segments.items():
            _, inputs = self._walker_keys[(g, i)]
            good = seg["status"] == "ok" and labeled[i].info.get("status") == DONE
            states[str(i)] = seg["state_path"] if good else str(inputs["last_safe"])
        atomic_write_json(self.dir.generation(g) / "walkers.json", states)

    def _walker_states(self, g: int) -> dict[str, str]:
        path = self.dir.generation(g) / "walkers.json"
        if g < 1 or not path.exists():
            return {}
        return json.loads(path.read_text())

    def _walker_steps(self, g: int) -> dict[int, int]:
        """The MD step each walker of generation g has reached (last line of its walker.log)."""
        from hillwalker.engines.walkers import LOG_NAME

        steps = {}
        for i in range(self.cfg.walkers.count):
            path = self.dir.generation(g) / "walkers" / f"w{i}" / LOG_NAME
            try:
                with path.open("rb") as handle:
                    handle.seek(max(0, path.stat().st_size - 400))
                    last = handle.read().decode(errors="replace").strip().splitlines()[-1]
                steps[i] = int(last.split()[0])
            except (OSError, IndexError, ValueError):
                continue
        return steps

    def _walker_settings(self) -> dict[str, Any]:
        w, s = self.cfg.walkers, self.cfg.safety
        return {
            "ensemble": w.ensemble,
            "temperature": w.temperature,
            "pressure": w.pressure if w.ensemble == "npt" else None,
            "timestep_fs": w.timestep,
            "steps": w.steps,
            "max_force": s.max_force,
            "min_distance": s.min_distance,
            "max_temperature": s.max_temperature,
        }

    # ---- training ----------------------------------------------------------------------------
    def _train(self, g: int, previous: Model | None) -> Model:
        t = self.cfg.training
        warm = previous is not None and t.mode == "warm"
        epochs = (t.warm_epochs or t.epochs) if warm else t.epochs
        settings = {
            "epochs": epochs,
            "seed": self.cfg.seed + g,
            "validation_fraction": t.validation_fraction,
            **t.overrides,
        }
        data = self.dir.generation(g) / "train.extxyz"
        write_frames(data, read_frames(self.dir.dataset))
        template = self.dir.root / self.cfg.material.nequip
        init = str(previous.package) if warm and previous is not None else None
        key = task_key(
            "train",
            g,
            file_digest(data),
            file_digest(template),
            settings,
            file_digest(Path(init)) if init else None,
        )
        record = self.dir.record("train", key)
        if record is not None and record["status"] == DONE:
            self.progress.skipped += 1
            return Model(
                g,
                self.dir.root / record["package"],
                self.dir.root / record["compiled"],
                record["metrics"],
            )
        out_dir = self.dir.generation(g) / "model"
        self._report(stage="training", epoch=0, max_epochs=epochs)
        fut = self.ex.submit(
            "train",
            tasks.train_generation,
            str(data),
            str(out_dir),
            template=str(template),
            settings=settings,
            init_from=init,
        )
        while True:
            try:
                result = fut.result(timeout=1.0)
                break
            except cf.TimeoutError:
                self._training_epoch(out_dir)
            except Exception as exc:
                self.dir.save_record(
                    "train", key, {"status": FAILED, "error": str(exc), "generation": g}
                )
                raise CampaignError(
                    f"training of generation {g} failed: {exc}. Its log is in {out_dir}; after "
                    "fixing the cause, run again: finished work is kept."
                ) from exc
        self._intervals.append(("train", *result["interval"]))
        rel = {
            k: str(Path(result[k]).relative_to(self.dir.root))
            for k in ("package", "compiled", "directory")
        }
        self.dir.save_record(
            "train",
            key,
            {
                "status": DONE,
                "generation": g,
                **rel,
                "metrics": result["metrics"],
                "seconds": result["seconds"],
            },
        )
        metrics = result["metrics"]
        log.info(
            "generation %d model: validation force RMSE %s meV/Å, energy RMSE %s meV/atom, "
            "stress RMSE %s GPa (%s train / %s validation frames)",
            g,
            _fmt(metrics.get("force_rmse_mev_per_ang")),
            _fmt(metrics.get("energy_rmse_mev_per_atom")),
            _fmt(metrics.get("stress_rmse_gpa")),
            metrics.get("n_train"),
            metrics.get("n_val"),
        )
        self._write_timings(g)
        return Model(g, Path(result["package"]), Path(result["compiled"]), result["metrics"])

    def _training_epoch(self, out_dir: Path) -> None:
        try:
            data = json.loads((out_dir / "progress.json").read_text())
        except (OSError, ValueError):
            return
        self._report(epoch=data.get("epoch"), max_epochs=data.get("max_epochs"))

    # ---- timings -----------------------------------------------------------------------------
    def _begin_generation(self, g: int) -> None:
        self._intervals = []
        self._generation_start = time.time()
        self._skipped_before = self.progress.skipped

    def _write_timings(self, g: int) -> None:
        """Wall time of the generation split by what ran; 'other' is time with no task running."""
        end = time.time()
        wall = end - self._generation_start
        busy: dict[str, float] = {}
        for kind in ("md", "dft", "train"):
            busy[kind] = _union([(a, b) for k, a, b in self._intervals if k == kind])
        any_task = _union([(a, b) for _, a, b in self._intervals])
        dft = [(a, b) for k, a, b in self._intervals if k == "dft"]
        labeling = {}
        if dft:
            window = max(b for _, b in dft) - min(a for a, _ in dft)
            cores = getattr(self.ex, "cores", 1) or 1
            labeling = {
                "window_seconds": window,
                "task_seconds": sum(b - a for a, b in dft),
                "cores": cores,
                "core_busy_fraction": sum(b - a for a, b in dft) / (cores * window)
                if window > 0
                else None,
            }
        atomic_write_json(
            self.dir.generation(g) / "timings.json",
            {
                "generation": g,
                "wall_seconds": wall,
                "busy_seconds": busy,
                "idle_seconds": wall - any_task,
                "overhead_fraction": (wall - any_task) / wall if wall > 0 else None,
                "labeling": labeling,
                # a resumed generation's timings miss the tasks found done
                "resumed": self.progress.skipped > self._skipped_before,
            },
        )

    # ---- helpers -----------------------------------------------------------------------------
    def start_structure(self) -> Atoms:
        from hillwalker.validate import read_structure

        return read_structure(self.dir.root / self.cfg.material.structure)

    def _start_structure_file(self) -> Path:
        path = self.dir.state / "start.extxyz"
        if not path.exists():
            write_frames(path, [self.start_structure()])
        return path

    def _report(self, **fields: Any) -> None:
        for key, value in fields.items():
            setattr(self.progress, key, value)
        atomic_write_json(self.dir.state / "run.json", self.progress.as_dict())
        if self.on_progress is not None:
            self.on_progress(self.progress)


#: settings that the existing data or bias depend on: changing them needs ``--force``
UNSAFE_CHANGES = {
    "level": "the level of theory of the existing labels",
    "structure": "the start structure of generation 0",
    "plumed": "the collective variables of the kept bias",
    "generation0": "the frames of generation 0",
    "seed": "the seed every finished task was keyed with",
}


def check_changes(cdir: CampaignDir, cfg: Campaign, *, force: bool = False) -> list[str]:
    """Compare campaign.yaml (and the files it names) with what the last run used.

    Safe changes (more generations, more walkers, other epochs or thresholds) are applied and
    returned as notes; unsafe ones raise :class:`CampaignError` unless ``force``.
    """
    root = cdir.root
    m = cfg.material
    now = {
        "level": file_digest(root / m.level),
        "structure": file_digest(root / m.structure),
        "plumed": file_digest(root / m.plumed),
        "generation0": cfg.generation0.model_dump(),
        "seed": cfg.seed,
        "config": cfg.model_dump(),
    }
    path = cdir.state / "inputs.json"
    try:
        before = json.loads(path.read_text())
    except FileNotFoundError:
        before = None
    except ValueError:
        raise CampaignError(
            f"{path}: corrupt (unreadable JSON). Delete it to accept the current campaign.yaml as is."
        ) from None
    notes: list[str] = []
    if before is not None:
        unsafe = [
            f"{key} changed: {why}"
            for key, why in UNSAFE_CHANGES.items()
            if before.get(key) != now[key]
        ]
        if unsafe and not force:
            raise CampaignError(
                f"{root / 'campaign.yaml'}: unsafe change since the last run: "
                + "; ".join(unsafe)
                + ". Undo it, start a new campaign directory, or run with --force to go on anyway."
            )
        notes = [f"forced: {u}" for u in unsafe]
        old, new = before.get("config", {}), now["config"]
        for section in sorted(set(old) | set(new)):
            if old.get(section) != new.get(section) and section not in UNSAFE_CHANGES:
                notes.append(
                    f"applied change in {section}: {old.get(section)} -> {new.get(section)}"
                )
    atomic_write_json(path, now)
    return notes


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) else "n/a"


def _union(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by a set of time intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def smoke_config(cfg: Campaign) -> Campaign:
    """One generation with tiny settings: checks the whole path in minutes."""
    data = cfg.model_dump()
    data["generation0"].update(frames=min(cfg.generation0.frames, 4))
    data["walkers"].update(count=min(cfg.walkers.count, 2), steps=min(cfg.walkers.steps, 20))
    data["training"].update(epochs=min(cfg.training.epochs, 5), warm_epochs=None)
    data["stop"].update(generations=1, max_single_points=None, target_force_rmse=None)
    return Campaign.model_validate(data)


def run_campaign(
    directory: str | Path,
    *,
    site: Any = None,
    generations: int | None = None,
    smoke: bool = False,
    force: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> list[Model]:
    """Lock the campaign directory, start Parsl for the site, run the loop, always clean up."""
    from hillwalker.execution import Execution

    root = Path(directory).resolve()
    cfg = load_campaign(root)
    if generations is not None:
        data = cfg.model_dump()
        data["stop"]["generations"] = generations
        cfg = Campaign.model_validate(data)
    if smoke:
        root = _smoke_dir(root, cfg)
        cfg = load_campaign(root)
    preflight(root)
    if site is not None:
        # a single point may run up to labeling.timeout: refuse before submitting anything if
        # a dft block could not hold one, instead of SLURM killing it silently at the limit
        site.check_task_fits("dft", cfg.labeling.timeout)
    cdir = CampaignDir(root)
    with cdir.locked():
        handler = _file_log(cdir.log)
        try:
            log.info("run %s (site: %s)", root, getattr(site, "name", None) or "local")
            if cdir.took_over_stale_lock:
                reaped = reap_orphans(root)
                log.warning(
                    "took over the lock of a dead run; stopped %d leftover processes", len(reaped)
                )
            for note in check_changes(cdir, cfg, force=force):
                log.warning("%s", note)
            runner = CampaignRun(root, config=cfg, on_progress=on_progress)
            with Execution(site, run_dir=root) as ex:
                return runner.run(ex)
        except BaseException as exc:
            log.error("run stopped: %s: %s", type(exc).__name__, exc)
            _note_stop(cdir, exc)
            raise
        finally:
            logging.getLogger("hillwalker").removeHandler(handler)
            handler.close()


def _note_stop(cdir: CampaignDir, exc: BaseException) -> None:
    """Why the run stopped, for `status` (run.json; the next run's first report clears it)."""
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        why = f"interrupted ({type(exc).__name__}{f' {exc}' if str(exc) else ''})"
    else:
        why = str(exc) or type(exc).__name__
    path = cdir.state / "run.json"
    try:
        run = json.loads(path.read_text())
    except (OSError, ValueError):
        run = {}
    if isinstance(run, dict):
        atomic_write_json(path, {**run, "stopped_by": why})


def preflight(root: Path) -> None:
    """`hillwalker validate` before anything runs: every mistake at once, nothing submitted."""
    from hillwalker.config import ConfigError
    from hillwalker.validate import validate_campaign

    report = validate_campaign(root)
    if not report.ok:
        raise ConfigError(
            ["campaign not valid (run 'hillwalker validate' for details):", *report.problems]
        )


def _smoke_dir(root: Path, cfg: Campaign) -> Path:
    """A scratch campaign in DIR/.hillwalker/smoke: tiny settings, same material files.

    The smoke run leaves the real campaign's records, dataset and bias alone.
    """
    smoke = root / ".hillwalker" / "smoke"
    data = smoke_config(cfg).model_dump()
    data["material"] = {k: str((root / v).resolve()) for k, v in data["material"].items()}
    smoke.mkdir(parents=True, exist_ok=True)
    atomic_write_text(smoke / "campaign.yaml", yaml.safe_dump(data, sort_keys=False))
    return smoke


def _file_log(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("hillwalker")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler
