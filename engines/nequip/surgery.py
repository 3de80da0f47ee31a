"""Model surgery: a NequIP package for new chemical elements, each started from a trained one's.

Transfer across chemical elements (Röcken & Zavadlav, J. Chem. Inf. Model. 2025): a germanium
potential starts from a trained silicon one, MIL-53(Ga) from MIL-53(Al). nequip cannot add a type
to a trained model (nequip issue #244), so :func:`transfer_species` builds a new model through
nequip's own model builder (the package's ``config.yaml``, with the new ``type_names``) and loads
the source model's weights into it, every per-type tensor copied from the named source type:

- the type embedding rows (``NodeTypeEmbed``);
- per-type tensors in the state dict (a dimension of size ``num_types``) and per-edge-type ones
  (``num_types²``, e.g. the reciprocal per-edge-type cutoffs), indexed through the map;
- config values keyed by type: ``avg_num_neighbors`` (a per-type neighbour normalisation),
  ``per_edge_type_cutoff``, ``per_type_energy_scales``, ``per_type_energy_shifts`` (their trained
  values are read from the source model, not from its config).

The cutoff is kept. A replaced element keeps its slot (``Ga`` takes ``Al``'s index); an element
added beside a kept source is appended. Everything else of the network does not depend on the
types and is copied as it is. Pair potentials (ZBL, LJ) are refused for now.

Energy references: each new element's per-atom energy shift is its source's unless the caller
gives one (``energy_shifts``) or asks for a fit (``fit_to``: the new elements' shifts that make
the transferred model's mean energy error on those frames zero). The change is recorded exactly:
before any training, the transferred model's energy of a frame equals the source model's energy
of the same frame with every new-element atom relabeled to its source, plus the sum of
:attr:`SpeciesTransfer.shift_changes` over the frame's new-element atoms; forces are equal.
:func:`transfer_species` checks this on the package's example frame before it writes anything.

The result is an ordinary ``.nequip.zip`` (the eager model, the source's example data, a
``config.yaml`` whose model section builds it without the source): ``training.train(...,
init_from=...)`` warm-starts from it, ``deploy.load_calculator`` loads it, ``nequip-compile``
compiles it. A record ``<name>.transfer.json`` beside it (written last) holds the map, the types
and the shifts; a call with the same inputs returns the existing package.
"""

from __future__ import annotations

import copy
import hashlib
import zipfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ase import Atoms
from ase.data import atomic_numbers

from hillwalker.engines.dataset import labels
from hillwalker.engines.files import atomic_write_json, file_digest, read_json
from hillwalker.engines.nequip.deploy import (
    load_calculator,
    model_species,
    package_r_max,
    partial_file,
)
from hillwalker.engines.nequip.model_files import ModelError, package_path, short_error
from hillwalker.engines.nequip.threads import torch_threads

__all__ = [
    "TRANSFERRED_NAME",
    "SpeciesTransfer",
    "frozen_layers",
    "parse_species_map",
    "transfer_species",
]

#: the transferred package ``hillwalker train --species-map`` writes into the model directory
TRANSFERRED_NAME = "transferred.nequip.zip"
#: record version: bump when what a record means changes
RECORD_VERSION = 1
#: the model module whose shifts are the per-atom energy references
ENERGY_SCALE_SHIFT = "per_type_energy_scale_shift"
#: relative tolerance of the built-in check (float32 models, the same weights and inputs)
CHECK_TOLERANCE = 1e-5
#: a chain of warm starts followed back to the builder config, at most this deep
MAX_CHAIN = 64


@dataclass
class SpeciesTransfer:
    """A package made by :func:`transfer_species`, as recorded beside it."""

    source: Path  # the package operated on
    package: Path  # the new .nequip.zip
    record: Path
    species_map: dict[str, str]  # new element -> source element
    type_names: list[str]  # the new model's types, in index order
    source_type_names: list[str]
    energy_shifts: dict[str, float]  # per-atom energy shift (eV) of every type of the new model
    #: new element -> its shift minus its source's shift (eV/atom): the transferred model's
    #: energy of a frame = the source's on the relabeled frame + the sum over new-element atoms
    shift_changes: dict[str, float]
    r_max: float
    extra: dict[str, Any] = field(default_factory=dict)

    def energy_offset(self, symbols: Sequence[str]) -> float:
        """eV to add to the source model's energy of a relabeled frame (see the module doc)."""
        return float(sum(self.shift_changes.get(s, 0.0) for s in symbols))

    def relabeled(self, atoms: Atoms) -> Atoms:
        """A copy of ``atoms`` with every new-element atom turned into its source element."""
        out = atoms.copy()
        out.set_chemical_symbols([self.species_map.get(s, s) for s in atoms.get_chemical_symbols()])
        return out

    @classmethod
    def read(cls, record: Path) -> SpeciesTransfer:
        data = read_json(record)
        if data is None or data.get("version") != RECORD_VERSION:
            raise ModelError(f"{record}: not a species-transfer record")
        return cls(
            source=Path(data["source"]),
            package=record.parent / data["package"],
            record=record,
            species_map=dict(data["species_map"]),
            type_names=list(data["type_names"]),
            source_type_names=list(data["source_type_names"]),
            energy_shifts={k: float(v) for k, v in data["energy_shifts"].items()},
            shift_changes={k: float(v) for k, v in data["shift_changes"].items()},
            r_max=float(data["r_max"]),
            extra={k: data[k] for k in ("inputs", "package_digest", "check") if k in data},
        )


def parse_species_map(items: Sequence[str]) -> dict[str, str]:
    """``["Ge=Si", "Ga=Al"]`` -> ``{"Ge": "Si", "Ga": "Al"}``; ModelError for a bad item."""
    mapping: dict[str, str] = {}
    for item in items:
        new, sep, old = (part.strip() for part in item.partition("="))
        if not sep or not new or not old:
            raise ModelError(f"--species-map {item!r}: expected NEW=OLD, e.g. Ge=Si")
        if new in mapping:
            raise ModelError(f"--species-map: {new} is mapped twice")
        mapping[new] = old
    return mapping


def transfer_species(
    model: Path,
    out: Path,
    species_map: Mapping[str, str],
    *,
    keep: Collection[str] = (),
    energy_shifts: Mapping[str, float] | None = None,
    fit_to: Sequence[Atoms] | None = None,
    refit_all: bool = False,
    r_max: float | None = None,
    threads: int | None = None,
) -> SpeciesTransfer:
    """A package at ``out`` (``.nequip.zip``) whose types are the source model's with each new
    element of ``species_map`` (new -> source) started from its source element.

    ``model``: a ``.nequip.zip`` or a model directory. A source element in ``keep`` stays a type
    beside its new element(s); any other source element is replaced (its slot taken by its first
    new element). ``energy_shifts``: per-atom energy shifts (eV) of new elements; ``fit_to``:
    frames with energies to fit them to instead (least squares of the total energies over the
    new elements' atom counts, the other types' shifts fixed); neither: the source's shift.
    ``refit_all``: with ``fit_to``, fit every type's shift found in the frames, not only the new
    elements' (a new level of theory: its energy references differ for every element; the
    species map may then be empty). ``r_max``: the cutoff the caller needs (a ModelError if the model's differs). ``threads``:
    torch's CPU threads meanwhile (restored afterwards).
    """
    source = package_path(Path(model))
    out = Path(out)
    if not out.name.endswith(".nequip.zip"):
        raise ModelError(f"{out}: a packaged model must end in .nequip.zip")
    if energy_shifts is not None and fit_to is not None:
        raise ModelError("energy_shifts and fit_to: give one of them, not both")
    if refit_all and fit_to is None:
        raise ModelError("refit_all: needs fit_to, the frames to fit the references to")
    source_types = model_species(source)
    mapping = _checked_map(species_map, source_types, source, empty_ok=refit_all)
    kept = set(keep)
    for element in sorted(kept - set(mapping.values())):
        raise ModelError(f"keep: {element} is not a source element of the species map")
    for element in sorted(set(energy_shifts or {}) - set(mapping)):
        raise ModelError(f"energy_shifts: {element} is not a new element of the species map")
    model_r_max = package_r_max(source)
    if r_max is not None and not np.isclose(r_max, model_r_max, rtol=0, atol=1e-9):
        raise ModelError(
            f"{source}: cutoff {model_r_max:g} Å, but {r_max:g} Å was asked for: a transfer "
            "keeps the source model's cutoff"
        )
    type_names, index = _new_types(source_types, mapping, kept)
    record = out.with_name(out.name.removesuffix(".nequip.zip") + ".transfer.json")
    inputs = {
        "source_digest": file_digest(source),
        "species_map": dict(mapping),
        "keep": sorted(kept),
        "energy_shifts": None if energy_shifts is None else dict(energy_shifts),
        "fit_to": None if fit_to is None else _frames_digest(fit_to),
        **({"refit_all": True} if refit_all else {}),
    }
    done = _existing(record, out, inputs)
    if done is not None:
        return done
    with torch_threads(threads):
        made = _build(
            source, source_types, type_names, index, mapping, energy_shifts, fit_to, refit_all
        )
        _export(made, source, out)
    _write_record(record, source, out, mapping, type_names, source_types, made, model_r_max, inputs)
    return SpeciesTransfer.read(record)


def _write_record(
    record: Path,
    source: Path,
    out: Path,
    mapping: dict[str, str],
    type_names: list[str],
    source_types: list[str],
    made: _Made,
    r_max: float,
    inputs: dict[str, Any],
) -> None:
    """The record beside the package, written last (its presence marks the package complete)."""
    atomic_write_json(
        record,
        {
            "version": RECORD_VERSION,
            "source": str(source),
            "package": out.name,
            "package_digest": file_digest(out),
            "species_map": dict(mapping),
            "type_names": type_names,
            "source_type_names": list(source_types),
            "energy_shifts": made.shifts,
            "shift_changes": made.shift_changes,
            "r_max": r_max,
            "check": made.check,
            "inputs": inputs,
        },
    )


def frozen_layers(model: Any, layers: int) -> list[Any]:
    """Optimizer parameters of ``model`` without those of its first ``layers`` interaction layers
    (``layer0_convnet`` …) and its type embedding, which stay as transferred.

    A nequip param-group factory: set ``training_module.optimizer.param_groups`` to
    ``{_target_: hillwalker.engines.nequip.surgery.frozen_layers, layers: 1}`` in the template.
    """
    if layers < 0:
        raise ModelError(f"frozen_layers: layers must be >= 0, not {layers}")
    frozen = ("type_embed.", *(f"layer{i}_convnet." for i in range(layers)))
    trained = []
    for name, parameter in model.named_parameters():
        if layers and any(f".{prefix}" in f".{name}" for prefix in frozen):
            parameter.requires_grad_(False)  # no gradient work for weights that do not move
        else:
            trained.append(parameter)
    return trained


# --------------------------------------------------------------------------------------------
# checks and the new type list


def _checked_map(
    species_map: Mapping[str, str],
    source_types: Sequence[str],
    source: Path,
    empty_ok: bool = False,
) -> dict[str, str]:
    if not species_map and not empty_ok:
        raise ModelError(f"{source}: empty species map: nothing to transfer")
    mapping: dict[str, str] = {}
    for new, old in species_map.items():
        for role, symbol in (("new", new), ("source", old)):
            if symbol not in atomic_numbers or symbol == "X":
                message = f"{role} element {symbol!r} is not a chemical symbol"
                raise ModelError(f"species map {new}={old}: {message}")
        if old not in source_types:
            raise ModelError(
                f"{source}: species map {new}={old}: the model has no {old} "
                f"(model species: {' '.join(source_types)})"
            )
        if new in source_types:
            raise ModelError(
                f"{source}: species map {new}={old}: {new} is already a type of this model "
                f"(model species: {' '.join(source_types)})"
            )
        mapping[new] = old
    return mapping


def _new_types(
    source_types: Sequence[str], mapping: Mapping[str, str], keep: Collection[str]
) -> tuple[list[str], list[int]]:
    """(new type names, index of each one's source type): a replaced element's slot goes to its
    first new element, the other new elements are appended."""
    placed: set[str] = set()
    names: list[str] = []
    index: list[int] = []
    for i, name in enumerate(source_types):
        first = next((n for n, o in mapping.items() if o == name), None)
        if first is not None and name not in keep:
            names.append(first)
            placed.add(first)
        else:
            names.append(name)
        index.append(i)
    for new, old in mapping.items():
        if new not in placed:
            names.append(new)
            index.append(list(source_types).index(old))
    return names, index


def _existing(record: Path, out: Path, inputs: dict[str, Any]) -> SpeciesTransfer | None:
    """The package made earlier from the same inputs, if it is there unchanged."""
    data = read_json(record)
    if data is None or data.get("inputs") != inputs or not out.is_file():
        return None
    if data.get("package_digest") != file_digest(out):
        return None
    try:
        return SpeciesTransfer.read(record)
    except (KeyError, TypeError, ValueError):
        return None


def _frames_digest(frames: Sequence[Atoms]) -> str:
    digest = hashlib.sha256()
    for atoms in frames:
        digest.update(np.asarray(atoms.numbers, np.int64).tobytes())
        digest.update(np.asarray(atoms.positions, float).tobytes())
        digest.update(np.asarray(atoms.cell[:], float).tobytes())
        digest.update(repr(labels(atoms).get("energy")).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# building the new model


@dataclass
class _Made:
    model: Any  # the new GraphModel (this process's nequip)
    config: dict[str, Any]  # the full training config, its model section the new builder's
    shifts: dict[str, float]
    shift_changes: dict[str, float]
    check: dict[str, float]


def _build(
    source: Path,
    source_types: list[str],
    type_names: list[str],
    index: list[int],
    mapping: dict[str, str],
    energy_shifts: Mapping[str, float] | None,
    fit_to: Sequence[Atoms] | None,
    refit_all: bool = False,
) -> _Made:
    from nequip.model.saved_models.load_utils import load_saved_model
    from nequip.utils.global_state import set_global_state

    set_global_state()  # what nequip's tools and calculators do before building models
    try:
        old_model = load_saved_model(str(source))
    except Exception as exc:
        raise ModelError(f"{source}: not a readable NequIP package ({short_error(exc)})") from exc
    config, builder = _builder_config(source)
    if list(builder.get("type_names", [])) != list(source_types):
        raise ModelError(
            f"{source}: config.yaml builds types {builder.get('type_names')}, the package holds "
            f"{source_types}: cannot rebuild this model"
        )
    if builder.get("pair_potential") is not None:
        raise ModelError(f"{source}: a model with a pair potential cannot be transferred yet")
    old_scales, old_shifts = _scale_shift(old_model, source_types, source)
    by_new = {name: source_types[i] for name, i in zip(type_names, index, strict=True)}
    shifts = {t: old_shifts[by_new[t]] for t in type_names} if old_shifts is not None else None
    wanted = dict(energy_shifts or {})
    if fit_to is not None:
        wanted = _fitted_shifts(source, fit_to, mapping, old_shifts or {}, source_types, refit_all)
    if wanted:
        shifts = {
            t: wanted.get(t, v) for t, v in (shifts or dict.fromkeys(type_names, 0.0)).items()
        }
    new_builder = _remapped_builder(builder, source_types, type_names, by_new, old_scales, shifts)
    model = _instantiate(new_builder, source)
    state = _remapped_state(old_model.state_dict(), model, len(source_types), index, source)
    model.load_state_dict(state, strict=True)
    changed = by_new if refit_all else {new: old for new, old in mapping.items()}
    changes = {
        new: (shifts or {}).get(new, 0.0) - (old_shifts or {}).get(old, 0.0)
        for new, old in changed.items()
        if new in type_names
    }
    # packaged models are stored in training mode (nequip's training relies on it: in eval mode
    # forces are computed without a graph to train through); the check runs both in eval mode
    training = old_model.training
    check = _check(old_model.eval(), model.eval(), source, type_names, index, source_types, changes)
    model.train(training)
    config["training_module"]["model"] = new_builder
    return _Made(
        model=model,
        config=config,
        shifts={t: float(v) for t, v in (shifts or {}).items()},
        shift_changes={k: float(v) for k, v in changes.items()},
        check=check,
    )


def _package_config(package: Path) -> dict[str, Any]:
    """The training config saved in a package (``model/config.yaml``)."""
    try:
        with zipfile.ZipFile(package) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/model/config.yaml"))
            config = yaml.safe_load(archive.read(name))
    except (OSError, StopIteration, zipfile.BadZipFile, yaml.YAMLError) as exc:
        raise ModelError(f"{package}: no readable model/config.yaml ({short_error(exc)})") from exc
    if not isinstance(config, dict) or not isinstance(
        (config.get("training_module") or {}).get("model"), dict
    ):
        raise ModelError(f"{package}: model/config.yaml has no training_module.model")
    return config


def _builder_config(package: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the package's training config, the model-builder section that made its architecture):
    a warm-started package names the package it started from (``ModelFromPackage``), whose
    config is followed back to a builder."""
    config = _package_config(package)
    model = config["training_module"]["model"]
    current = package
    for _ in range(MAX_CHAIN):
        target = str(model.get("_target_", ""))
        if not target.endswith("ModelFromPackage"):
            if not target or "type_names" not in model:
                raise ModelError(
                    f"{current}: model/config.yaml: training_module.model ({target or 'no '}"
                    "_target_) is not a model builder with type_names: cannot rebuild it"
                )
            return copy.deepcopy(config), copy.deepcopy(model)
        previous = Path(str(model.get("package_path", "")))
        if not previous.is_file():
            raise ModelError(
                f"{current}: warm-started from {previous}, which is gone: its model builder "
                "config is needed to rebuild the model with new types"
            )
        current = previous
        model = _package_config(previous)["training_module"]["model"]
    raise ModelError(f"{package}: more than {MAX_CHAIN} warm starts back to a model builder")


def _scale_shift(
    model: Any, type_names: Sequence[str], source: Path
) -> tuple[float | dict[str, float] | None, dict[str, float] | None]:
    """The source model's trained per-type energy scales (a float when shared) and shifts."""
    module = _energy_module(model, source)
    scales: float | dict[str, float] | None = None
    shifts: dict[str, float] | None = None
    if module.has_scales:
        values = module.scales.detach().reshape(-1).tolist()
        scales = values[0] if len(values) == 1 else dict(zip(type_names, values, strict=True))
    if module.has_shifts:
        values = module.shifts.detach().reshape(-1).tolist()
        if len(values) == 1:
            values = values * len(type_names)
        shifts = dict(zip(type_names, values, strict=True))
    return scales, shifts


def _energy_module(model: Any, source: Path | str) -> Any:
    for name, module in model.named_modules():
        if name.split(".")[-1] == ENERGY_SCALE_SHIFT:
            return module
    raise ModelError(f"{source}: no {ENERGY_SCALE_SHIFT} module: not a NequIP energy model")


def _remapped_builder(
    builder: dict[str, Any],
    old_types: list[str],
    new_types: list[str],
    by_new: dict[str, str],
    scales: float | dict[str, float] | None,
    shifts: dict[str, float] | None,
) -> dict[str, Any]:
    """The builder config for the new types: every value keyed by type copied from the source
    type; energy scales and shifts the trained ones."""
    out = copy.deepcopy(builder)
    out["type_names"] = list(new_types)
    out.pop("compile_mode", None)  # the package holds the eager model
    neighbors = builder.get("avg_num_neighbors")
    if isinstance(neighbors, dict):
        out["avg_num_neighbors"] = {t: neighbors[by_new[t]] for t in new_types}
    cutoffs = builder.get("per_edge_type_cutoff")
    if cutoffs is not None:
        from nequip.nn.embedding.utils import cutoff_partialdict_to_fulldict

        full = cutoff_partialdict_to_fulldict(cutoffs, old_types, float(builder["r_max"]))
        out["per_edge_type_cutoff"] = {
            a: {b: full[by_new[a]][by_new[b]] for b in new_types} for a in new_types
        }
    out["per_type_energy_scales"] = (
        {t: scales[by_new[t]] for t in new_types} if isinstance(scales, dict) else scales
    )
    out["per_type_energy_shifts"] = shifts
    return out


def _instantiate(builder: dict[str, Any], source: Path) -> Any:
    """The model of a builder config, built as nequip's training module builds it."""
    from hydra.utils import get_method
    from nequip.model.utils import override_model_compile_mode

    kwargs = copy.deepcopy(builder)
    target = kwargs.pop("_target_")
    try:
        with override_model_compile_mode("eager"):
            return get_method(target)(**kwargs)
    except Exception as exc:
        raise ModelError(
            f"{source}: nequip could not build the model with types {builder['type_names']} "
            f"({short_error(exc)})"
        ) from exc


def _remapped_state(
    old: dict[str, Any], model: Any, n_old: int, index: list[int], source: Path
) -> dict[str, Any]:
    """The source weights for the new model: per-type dimensions indexed through ``index``;
    the energy scales and shifts as the new model was built (from the remapped config)."""
    import torch

    n_new = len(index)
    new = model.state_dict()
    energy = next(n for n, _ in model.named_modules() if n.split(".")[-1] == ENERGY_SCALE_SHIFT)
    built = {f"{energy}.scales", f"{energy}.shifts"}
    types = torch.as_tensor(index, dtype=torch.long)
    pairs = (types[:, None] * n_old + types[None, :]).reshape(-1)
    state = {}
    for key, target in new.items():
        if key in built:
            state[key] = target
            continue
        if key not in old:
            raise ModelError(f"{source}: the rebuilt model has {key}, the package does not")
        value = old[key]
        if value.dim() != target.dim():
            raise ModelError(f"{source}: {key}: {tuple(value.shape)} cannot become "
                             f"{tuple(target.shape)}")  # fmt: skip
        for dim, (a, b) in enumerate(zip(value.shape, target.shape, strict=True)):
            if a == b:
                continue
            if (a, b) == (n_old, n_new):
                value = value.index_select(dim, types)
            elif (a, b) == (n_old * n_old, n_new * n_new):
                value = value.index_select(dim, pairs)
            else:
                raise ModelError(
                    f"{source}: {key}: dimension {dim} is {a} for {n_old} types and {b} for "
                    f"{n_new}: not a per-type tensor this surgery knows how to copy"
                )
        state[key] = value.to(dtype=target.dtype).clone()
    return state


# --------------------------------------------------------------------------------------------
# energy shifts and the built-in check


def _fitted_shifts(
    source: Path,
    frames: Sequence[Atoms],
    mapping: dict[str, str],
    old_shifts: dict[str, float],
    source_types: list[str],
    refit_all: bool = False,
) -> dict[str, float]:
    """New elements' shifts (``refit_all``: every type's in the frames) that zero the new
    model's least-squares energy error on ``frames``: the source model on the relabeled frames,
    residuals fitted on atom counts (the smallest change where the counts do not tell the
    elements apart, e.g. frames of one composition)."""
    import torch

    # the calculator runs at the thread count the caller's torch_threads set
    calc = load_calculator(source, device="cpu", threads=torch.get_num_threads())
    residuals, counts = [], []
    candidates = (
        [*mapping, *(t for t in source_types if t not in mapping)] if refit_all else mapping
    )
    fitted = [t for t in candidates if any(t in f.get_chemical_symbols() for f in frames)]
    for i, atoms in enumerate(frames):
        ref = labels(atoms).get("energy")
        if ref is None or not np.isfinite(ref):
            raise ModelError(f"fit_to: frame {i} has no energy: cannot fit energy shifts to it")
        probe = atoms.copy()
        probe.set_chemical_symbols([mapping.get(s, s) for s in atoms.get_chemical_symbols()])
        unknown = sorted(set(probe.get_chemical_symbols()) - set(source_types))
        if unknown:
            raise ModelError(
                f"fit_to: frame {i} has element(s) {', '.join(unknown)} that neither the model "
                f"{source} nor the species map covers"
            )
        probe.calc = calc
        residuals.append(float(ref) - float(probe.get_potential_energy()))
        symbols = atoms.get_chemical_symbols()
        counts.append([symbols.count(new) for new in fitted])
    if not fitted:
        return {}
    delta, *_ = np.linalg.lstsq(np.array(counts, float), np.array(residuals), rcond=None)
    return {
        new: old_shifts.get(mapping.get(new, new), 0.0) + float(d)
        for new, d in zip(fitted, delta, strict=True)
    }


def _check(
    old_model: Any,
    model: Any,
    source: Path,
    type_names: list[str],
    index: list[int],
    source_types: list[str],
    changes: dict[str, float],
) -> dict[str, float]:
    """The new model on the package's example frame, each atom of a source type given the new
    type that copies it (a new element where there is one), against the source model: equal
    forces, energies apart by the shift changes. A ModelError otherwise (nothing is written)."""
    import torch
    from nequip.data import AtomicDataDict
    from nequip.model.saved_models.package import data_dict_from_package

    data = data_dict_from_package(str(source))
    slot = {}
    for i, old in enumerate(index):  # the last new type copying each source type: new first
        if old not in slot or type_names[i] not in source_types:
            slot[old] = i
    lookup = torch.as_tensor([slot[i] for i in range(len(source_types))], dtype=torch.long)

    def run(net: Any, batch: dict[str, Any]) -> tuple[float, np.ndarray]:
        result = net({k: v.clone() if hasattr(v, "clone") else v for k, v in batch.items()})
        energy = float(result[AtomicDataDict.TOTAL_ENERGY_KEY].detach().sum())
        return energy, result[AtomicDataDict.FORCE_KEY].detach().double().numpy()

    old_types = data[AtomicDataDict.ATOM_TYPE_KEY]
    relabeled = dict(data)
    relabeled[AtomicDataDict.ATOM_TYPE_KEY] = lookup[old_types]
    e_old, f_old = run(old_model, data)
    e_new, f_new = run(model, relabeled)
    offset = sum(
        changes.get(type_names[int(t)], 0.0)
        for t in relabeled[AtomicDataDict.ATOM_TYPE_KEY].reshape(-1)
    )
    n_atoms = len(f_old)
    energy_error = abs(e_new - (e_old + offset)) / n_atoms
    force_error = float(np.abs(f_new - f_old).max()) if n_atoms else 0.0
    scale = max(1.0, abs(e_old) / n_atoms, float(np.abs(f_old).max()) if n_atoms else 0.0)
    if energy_error > CHECK_TOLERANCE * scale or force_error > CHECK_TOLERANCE * scale:
        raise ModelError(
            f"{source}: the transferred model differs from the source on its example frame "
            f"(energy {energy_error:.2e} eV/atom, force {force_error:.2e} eV/Å): a per-type "
            "tensor was not copied; no package was written"
        )
    return {"energy_ev_per_atom": energy_error, "force_ev_per_ang": force_error}


# --------------------------------------------------------------------------------------------
# the package


def _export(made: _Made, source: Path, out: Path) -> None:
    """Write the new model as a nequip package (eager model, example data, config, metadata),
    laid out as ``nequip-package build`` lays it out; atomically."""
    import torch
    from nequip.model.saved_models.package import (
        _suppress_package_importer_exporter_warnings,
        data_dict_from_package,
    )
    from nequip.model.utils import _EAGER_MODEL_KEY
    from nequip.scripts._package_utils import (
        _EXTERNAL_MODULES,
        _INTERNAL_MODULES,
        _MOCK_MODULES,
    )
    from nequip.train.lightning import _SOLE_MODEL_KEY
    from nequip.utils.versions import get_current_code_versions
    from nequip.utils.versions.version_utils import get_version_safe

    data = data_dict_from_package(str(source))
    metadata = {
        "versions": get_current_code_versions(verbose=False),
        "external_modules": {k: get_version_safe(k) for k in _EXTERNAL_MODULES},
        "package_version_id": _package_version_id(),
        "available_models": [_EAGER_MODEL_KEY],
        "atom_types": dict(enumerate(made.model.type_names)),
    }
    modules = torch.nn.ModuleDict({_SOLE_MODEL_KEY: made.model.to(torch.device("cpu"))})
    out.parent.mkdir(parents=True, exist_ok=True)
    importer = torch.package.importer.sys_importer
    with (
        partial_file(out) as partial,
        _suppress_package_importer_exporter_warnings(),
        torch.package.PackageExporter(str(partial), importer=(importer,), debug=True) as exporter,
    ):
        exporter.mock([f"{m}.**" for m in _MOCK_MODULES])
        exporter.extern([f"{m}.**" for m in _EXTERNAL_MODULES])
        exporter.intern([f"{m}.**" for m in _INTERNAL_MODULES])
        exporter.save_pickle("model", "example_data.pkl", data, dependencies=True)
        exporter.save_text("model", "config.yaml", yaml.safe_dump(made.config, sort_keys=False))
        exporter.save_text("model", "package_metadata.txt", yaml.dump(metadata))
        exporter.save_pickle("model", f"{_EAGER_MODEL_KEY}_model.pkl", modules, dependencies=True)


def _package_version_id() -> int:
    """The package format version ``nequip-package build`` writes now."""
    import logging

    # importing nequip's packaging script adds a stdout handler at INFO to the root logger
    # (hydra's configure_log): keep the caller's logging as it was
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from nequip.scripts.package import _CURRENT_NEQUIP_PACKAGE_VERSION
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return int(_CURRENT_NEQUIP_PACKAGE_VERSION)
