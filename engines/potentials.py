"""Potentials trained on labels at two levels of theory: direct, delta, hierarchical, transfer.

:func:`train_potential` trains one of four methods on a multi-level dataset
(:mod:`hillwalker.engines.multilevel`) and writes a potential directory; :func:`load_potential`
turns any potential directory (or a plain NequIP model) into one ASE calculator, the sum of its
parts (:class:`~hillwalker.engines.composite.SumCalculator`):

- ``direct``: one NequIP model of the target level.
- ``delta``: the baseline level itself (a level file, computed in this process at every call:
  tblite or PySCF) + a NequIP model of target − baseline.
- ``hierarchical``: a NequIP model of the baseline (all baseline labels) + a NequIP model of
  target − baseline (the frames labeled at both): no quantum chemistry at MD time. With
  intermediate levels (cheapest first) L1 … Lk between the baseline L0 and the target, one more
  NequIP model per step: L0 + (L1 − L0) + … + (target − Lk), each step trained on the frames
  labeled at both of its levels (nested labels: fewer frames at each level up the ladder).
- ``transfer``: a NequIP model pretrained on the baseline labels, then fine-tuned on the target
  labels (learning rate × ``transfer_learning_rate``), + the per-element energy references of
  the target level relative to the baseline's (least squares over the frames), so the
  fine-tuning does not spend itself on the constant offset between two levels.

Directory::

    potential.json      method, levels, parts; written last: its presence means complete
    <part>/             a NequIP model directory (model.json, model.nequip.zip, ...)
    baseline.<suffix>   the delta method's baseline level file, copied (its digest recorded)
    data/<part>.extxyz  the frames each model trained on (delta labels for the delta part)

A ``direct`` potential's one part is a plain model directory, so everything that takes a model
takes a potential too.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ase import Atoms

from hillwalker.engines.composite import OffsetCalculator, PotentialError, SumCalculator
from hillwalker.engines.dataset import label, labels, write_frames
from hillwalker.engines.files import atomic_write_json, atomic_write_text, file_digest, read_json
from hillwalker.engines.levels import LevelError, level_calculator, load_level
from hillwalker.engines.multilevel import (
    LevelFrames,
    MultiLevelError,
    delta_frames,
    per_element_energies,
)
from hillwalker.engines.nequip import (
    RECORD_NAME,
    TrainedModel,
    TrainSettings,
    load_calculator,
    model_species,
    train,
)
from hillwalker.engines.nequip.deploy import evaluate, score
from hillwalker.engines.nequip.threads import torch_threads

__all__ = [
    "METHODS",
    "POTENTIAL_FILE",
    "Potential",
    "evaluate_potential",
    "is_potential",
    "load_potential",
    "main_model",
    "per_element_energies",
    "potential_digest",
    "read_potential",
    "score_frames",
    "train_potential",
]

METHODS = ("direct", "delta", "hierarchical", "transfer")
POTENTIAL_FILE = "potential.json"
#: the fine-tuning's learning rate relative to the pretraining's (transfer)
TRANSFER_LEARNING_RATE = 0.2


@dataclass
class Potential:
    """A trained potential directory: how it was made and its NequIP parts' records."""

    directory: Path
    method: str
    target: str
    baseline: str | None
    parts: list[dict[str, Any]]
    models: dict[str, TrainedModel]
    #: hierarchical: the levels between the baseline and the target, cheapest first
    intermediates: list[str] = dataclasses.field(default_factory=list)


def step_part(level: str) -> str:
    """The name of the hierarchical part that learns ``level`` − the level below it (the
    last step, target − the level below, is ``delta``)."""
    return f"delta-{level}"


def train_potential(
    data: dict[str, LevelFrames],
    out_dir: Path,
    *,
    method: str,
    target: str,
    baseline: str | None = None,
    baseline_level: Path | None = None,
    intermediates: Sequence[str] = (),
    template: Path | None = None,
    settings: TrainSettings | None = None,
    init_from: Path | None = None,
    transfer_learning_rate: float = TRANSFER_LEARNING_RATE,
    device: str = "auto",
    compile: bool = True,
    threads: int | None = None,
) -> Potential:
    """Train ``method`` on the levels in ``data`` into ``out_dir``. ``baseline_level``: the
    baseline's level file (needed by ``delta``, which computes it at MD time).
    ``intermediates``: hierarchical only, the levels between the baseline and the target,
    cheapest first. ``init_from``: a previous potential of the same method; each NequIP part
    warm-starts from its namesake."""
    out_dir = Path(out_dir)
    settings = settings or TrainSettings.from_template(template)
    intermediates = list(intermediates)
    plan = _check(data, method, target, baseline, baseline_level, intermediates)
    if method == "hierarchical":  # each step's labels, before anything is written
        ladder = [data[str(baseline)], *(data[name] for name in intermediates), data[target]]
        steps = [delta_frames(up, low) for low, up in itertools.pairwise(ladder)]
        names = [*(step_part(name) for name in intermediates), "delta"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / POTENTIAL_FILE).unlink(missing_ok=True)  # written again last

    def fit(
        part: str, frames: list[Atoms], init: Path | None = None, deployed: bool = True,
        **changes: Any,
    ) -> None:  # fmt: skip
        path = out_dir / "data" / f"{part}.extxyz"
        write_frames(path, frames)
        if init is None and init_from is not None and (init_from / part / RECORD_NAME).is_file():
            init = init_from / part
        models[part] = train(
            path, out_dir / part, template=template,
            settings=dataclasses.replace(settings, **changes), init_from=init,
            device=device, compile=compile and deployed, threads=threads,
        )  # fmt: skip
        parts.append({"name": part, "kind": "nequip", "path": part})

    models: dict[str, TrainedModel] = {}
    parts: list[dict[str, Any]] = []
    high = data[target]
    if method == "direct":
        fit("model", high.list())
    elif method == "delta":
        level_file = plan["level_file"]
        copy = out_dir / f"baseline{level_file.suffix}"
        atomic_write_text(copy, level_file.read_text())
        parts.append(
            {"name": "baseline", "kind": "level", "path": copy.name, "digest": plan["digest"]}
        )
        fit("delta", delta_frames(high, data[str(baseline)]))
    elif method == "hierarchical":
        fit("baseline", data[str(baseline)].list())
        for name, frames in zip(names, steps, strict=True):
            fit(name, frames)
    else:  # transfer
        low = data[str(baseline)]
        fit("pretrain", low.list(), deployed=False)  # a step, never run: not compiled
        parts.clear()  # the pretrained model is a step, not a part
        offsets = _offsets(high, low)
        shifted = [_shifted(f, offsets) for f in high.list()]
        rate = settings.learning_rate * transfer_learning_rate
        fit("model", shifted, init=out_dir / "pretrain", learning_rate=rate)
        parts.append({"name": "references", "kind": "offsets", "energies": offsets})
    record = _potential_record(data, method, target, baseline, intermediates, parts)
    atomic_write_json(out_dir / POTENTIAL_FILE, record)
    return Potential(out_dir, method, target, baseline, parts, models, intermediates)


def _potential_record(
    data: dict[str, LevelFrames],
    method: str,
    target: str,
    baseline: str | None,
    intermediates: list[str],
    parts: list[dict[str, Any]],
) -> dict[str, Any]:
    """potential.json: the method, each level's name and digest, the parts, frames per level."""
    return {
        "method": method,
        "target": target,
        "target_digest": data[target].digest,
        "baseline": baseline,
        "baseline_digest": data[baseline].digest if baseline else None,
        **(
            {
                "intermediates": intermediates,
                "intermediate_digests": [data[name].digest for name in intermediates],
            }
            if intermediates
            else {}
        ),
        "parts": parts,
        "frames": {name: len(frames) for name, frames in data.items()},
    }


def _check(
    data: dict[str, LevelFrames],
    method: str,
    target: str,
    baseline: str | None,
    baseline_level: Path | None,
    intermediates: list[str],
) -> dict[str, Any]:
    """PotentialError (or LevelError naming the level file) unless the inputs fit the method."""
    present = ", ".join(sorted(data)) or "none"
    if method not in METHODS:
        raise PotentialError(f"method {method!r}: one of {', '.join(METHODS)}")
    if target not in data:
        raise PotentialError(f"target level {target!r}: no frames at it (levels here: {present})")
    if intermediates:
        _check_ladder(data, method, target, baseline, intermediates)
    if method == "direct":
        return {}
    if baseline is None:
        raise PotentialError(f"method {method} needs a baseline level (--baseline)")
    if baseline == target:
        raise PotentialError(f"baseline level {baseline!r} is the target level itself")
    if baseline not in data:
        raise PotentialError(f"baseline level {baseline!r}: no frames at it (levels: {present})")
    if method != "delta":
        return {}
    if baseline_level is None:
        raise PotentialError(
            "method delta computes the baseline at every MD step: give its level file "
            "(--baseline FILE), not only its name"
        )
    level = load_level(baseline_level)
    digest = level.digest()
    labeled = data[baseline].digest
    if labeled is not None and labeled != digest:
        raise LevelError(
            f"{baseline_level}: the baseline's frames were labeled with settings {labeled}, "
            f"this file gives {digest}: its settings changed since (relabel, or use that file)"
        )
    level.check_elements({s for f in data[target].list() for s in f.get_chemical_symbols()})
    level_calculator(level)  # refuses a level that cannot run in this process
    return {"level_file": Path(baseline_level), "digest": digest}


def _check_ladder(
    data: dict[str, LevelFrames],
    method: str,
    target: str,
    baseline: str | None,
    intermediates: list[str],
) -> None:
    if method != "hierarchical":
        raise PotentialError(
            f"intermediate levels ({', '.join(intermediates)}): only method hierarchical has "
            f"a part per level; {method} learns two levels"
        )
    ladder = [str(baseline), *intermediates, target]
    repeated = sorted({name for name in ladder if ladder.count(name) > 1})
    if repeated:
        raise PotentialError(
            f"level {repeated[0]!r} appears twice in baseline, intermediates, target "
            f"({' < '.join(ladder)}): each step of the ladder needs two different levels"
        )
    for name in intermediates:
        if name not in data:
            present = ", ".join(sorted(data))
            raise PotentialError(
                f"intermediate level {name!r}: no frames at it (levels here: {present})"
            )


def _offsets(high: LevelFrames, low: LevelFrames) -> dict[str, float]:
    """The target's per-element energy references relative to the baseline's."""
    a, b = per_element_energies(high.list()), per_element_energies(low.list())
    missing = sorted(set(a) - set(b))
    if missing:
        raise MultiLevelError(
            f"element(s) {', '.join(missing)} at level {high.name} but in no {low.name} frame: "
            "the pretrained model cannot know them"
        )
    return {s: a[s] - b[s] for s in a}


def _shifted(frame: Atoms, offsets: dict[str, float]) -> Atoms:
    got = labels(frame)
    shift = sum(offsets[s] for s in frame.get_chemical_symbols())
    atoms = frame.copy()
    info = dict(atoms.info)
    atoms.info.clear()
    return label(atoms, got["energy"] - shift, got.get("forces"), got.get("stress"), **info)


# --------------------------------------------------------------------------------------------
# using a potential


def is_potential(path: Path) -> bool:
    return (Path(path) / POTENTIAL_FILE).is_file()


def _record(path: Path) -> dict[str, Any]:
    record = read_json(Path(path) / POTENTIAL_FILE)
    if not isinstance(record, dict) or record.get("method") not in METHODS:
        raise PotentialError(f"{path / POTENTIAL_FILE}: not a potential record")
    return record


def load_potential(
    path: Path, *, device: str = "auto", threads: int | None = None, cores: int | None = None
) -> Any:
    """One ASE calculator for a potential directory (the sum of its parts) or a NequIP model.
    ``cores``: threads of an in-process baseline level (delta)."""
    path = Path(path)
    if not is_potential(path):
        return load_calculator(path, device=device, threads=threads)
    parts = [
        (part["name"], _part_calculator(path, part, device, threads, cores))
        for part in _record(path)["parts"]
    ]
    return parts[0][1] if len(parts) == 1 else SumCalculator(parts)


def _part_calculator(
    root: Path, part: dict[str, Any], device: str, threads: int | None, cores: int | None
) -> Any:
    kind = part.get("kind")
    if kind == "nequip":
        return load_calculator(root / part["path"], device=device, threads=threads)
    if kind == "offsets":
        return OffsetCalculator(part["energies"])
    if kind == "level":
        file = root / part["path"]
        level = load_level(file)
        if level.digest() != part["digest"]:
            raise PotentialError(
                f"{file}: the level file changed since the potential was trained "
                f"(digest {level.digest()}, trained with {part['digest']})"
            )
        return level_calculator(level, cores)
    raise PotentialError(f"{root / POTENTIAL_FILE}: part {part.get('name')!r}: kind {kind!r}?")


def potential_species(path: Path) -> list[str]:
    """The elements a potential (or model) covers: those of every NequIP part."""
    path = Path(path)
    if not is_potential(path):
        return model_species(path)
    covered: set[str] | None = None
    for part in _record(path)["parts"]:
        if part["kind"] == "nequip":
            mine = set(model_species(path / part["path"]))
            covered = mine if covered is None else covered & mine
    return sorted(covered or ())


def evaluate_potential(
    path: Path, data: dict[str, LevelFrames], *, device: str = "auto", source: str | None = None
) -> dict[str, Any]:
    """Errors of a potential on the target-level frames in ``data`` (its ``total``), and of
    each learned part on what it learned where ``data`` has those labels: the ML baseline on
    the baseline frames, the delta model on target − baseline."""
    path = Path(path)
    record = _record(path)
    target, baseline = record["target"], record.get("baseline")
    if target not in data:
        raise PotentialError(
            f"{source or 'the frames'}: no frames at the target level {target!r} "
            f"(levels: {', '.join(sorted(data)) or 'none'})"
        )
    calc = load_potential(path, device=device)
    loaded = dict(calc.parts) if isinstance(calc, SumCalculator) else {}  # reused per part
    result: dict[str, Any] = {
        "method": record["method"],
        "target": target,
        "baseline": baseline,
        "total": score(calc, data[target].list(), species=potential_species(path),
                       source=source, model=str(path)),
        "parts": {},
    }  # fmt: skip
    # what each learned part learned: (its level, the level below it) along the ladder
    ladder = [baseline, *record.get("intermediates", []), target]
    learned = {"baseline": (baseline, None)}
    learned.update({step_part(up): (up, low) for low, up in itertools.pairwise(ladder)})
    learned["delta"] = (target, ladder[-2])
    for part in record["parts"]:
        if part["kind"] != "nequip" or record["method"] in ("direct", "transfer"):
            continue
        up, low = learned.get(part["name"], (None, None))
        if up not in data or (low is not None and low not in data):
            continue
        try:
            frames = data[up].list() if low is None else delta_frames(data[up], data[low])
        except MultiLevelError:
            continue  # not every frame of the upper level has a label below it here
        result["parts"][part["name"]] = score(loaded[part["name"]], frames, source=source)
    return result


def read_potential(path: Path) -> Potential:
    """A finished potential directory as :func:`train_potential` returned it."""
    path = Path(path)
    record = _record(path)
    models = {
        part["name"]: TrainedModel.from_record(path / part["path"])
        for part in record["parts"]
        if part["kind"] == "nequip"
    }
    return Potential(
        path,
        record["method"],
        record["target"],
        record.get("baseline"),
        record["parts"],
        models,
        list(record.get("intermediates", [])),
    )


def main_model(potential: Potential) -> TrainedModel:
    """The part whose validation errors speak for the potential: the model of the target (direct,
    transfer) or of target - baseline (delta, hierarchical: the errors of the sum on the target
    labels where the baseline is exact, i.e. delta)."""
    for name in ("model", "delta"):
        if name in potential.models:
            return potential.models[name]
    raise PotentialError(f"{potential.directory}: no learned part")


def potential_digest(path: Path) -> str:
    """The content hash of what a potential (or a model file) computes: its record and the
    files of every part (each NequIP part's package, a baseline level file)."""
    path = Path(path)
    if not is_potential(path):
        return file_digest(path if path.is_file() else TrainedModel.from_record(path).package)
    import hashlib

    h = hashlib.sha256((path / POTENTIAL_FILE).read_bytes())
    for part in _record(path)["parts"]:
        if part["kind"] == "nequip":
            h.update(file_digest(TrainedModel.from_record(path / part["path"]).package).encode())
        elif part["kind"] == "level":
            h.update(file_digest(path / part["path"]).encode())
    return h.hexdigest()


def score_frames(
    path: Path,
    frames: Sequence[Atoms],
    *,
    device: str = "auto",
    threads: int | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """:func:`~hillwalker.engines.nequip.evaluate`'s errors of a model or a potential (the sum of
    its parts) on labeled frames of its target level."""
    path = Path(path)
    if not is_potential(path):
        return evaluate(path, frames, device=device, source=source, threads=threads)
    with torch_threads(threads):
        calc = load_potential(path, device=device, threads=threads, cores=threads)
        return score(calc, frames, species=potential_species(path), source=source,
                     model=str(path))  # fmt: skip
