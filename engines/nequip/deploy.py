"""Using a trained model: package, compile, load as an ASE calculator, evaluate on frames.

Units are ASE's inside (eV, Å, eV/Å³); reported errors are meV/atom, meV/Å and GPa.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.units import GPa

from hillwalker.engines.dataset import STATUS_FAILED, labels
from hillwalker.engines.nequip.commands import run_logged, tool
from hillwalker.engines.nequip.data import species_of
from hillwalker.engines.nequip.model_files import (
    RECORD_NAME,
    ModelError,
    TrainedModel,
    check_file,
    package_path,
    read_json,
    short_error,
)
from hillwalker.engines.nequip.threads import set_torch_threads, torch_threads


def package_checkpoint(checkpoint: Path, out: Path, *, threads: int | None = None) -> Path:
    """``nequip-package build`` a checkpoint into ``out`` (a ``.nequip.zip``), atomically."""
    out = Path(out)
    if not out.name.endswith(".nequip.zip"):
        raise ModelError(f"{out}: a packaged model must end in .nequip.zip")
    log = out.with_name("package.log")
    # the archive is named after its file, so the temporary file (in a temporary folder) has
    # the final name
    with partial_file(out) as partial:
        command = [tool("nequip-package"), "build", str(checkpoint), str(partial)]
        run_logged(command, log, cwd=out.parent, what="nequip-package", threads=threads)
    return out


#: nequip's ``--target ase`` fields less the stress: a model of molecules (no cell, volume 0)
#: gives a NaN stress, which fails nequip-compile's eager-vs-compiled check
_ASE_INPUTS = ("pos", "edge_index", "atom_types", "cell", "edge_cell_shift")
_ASE_OUTPUTS_WITHOUT_STRESS = ("atomic_energy", "total_energy", "forces")


def compile_model(
    package: Path,
    out: Path,
    *,
    device: str = "auto",
    threads: int | None = None,
    stress: bool = True,
) -> Path:
    """AOTInductor-compile a ``.nequip.zip`` for ASE on ``device``; returns ``out`` (.nequip.pt2).

    Takes 20-35 s on 2 CPU cores (gcc); the result runs only on the device it was built for.
    ``threads``: OMP_NUM_THREADS of nequip-compile (None: every core this process may use).
    ``stress=False`` (models trained on molecules without a cell): the compiled model gives
    energies and forces only, the same inputs and single-frame shapes as ``--target ase``.
    """
    package = Path(package)
    out = Path(out)
    if not package.is_file():
        raise ModelError(f"{package}: no such model package")
    if not out.name.endswith(".nequip.pt2"):
        raise ModelError(f"{out}: a compiled model must end in .nequip.pt2")
    device = resolve_device(device)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_name("compile.log")
    with partial_file(out) as partial:
        if stress:
            fields = ["--target", "ase"]
        else:  # the ase target's inputs and single-frame shapes, its outputs less the stress
            fields = ["--input-fields", *_ASE_INPUTS, "--output-fields"]
            fields += [*_ASE_OUTPUTS_WITHOUT_STRESS, "--num-frames", "static"]
        command = [
            tool("nequip-compile"),
            str(package),
            str(partial),
            *("--mode", "aotinductor", "--device", device),
            *fields,
        ]
        run_logged(command, log, cwd=out.parent, what="nequip-compile", threads=threads)
    return out


@contextlib.contextmanager
def partial_file(out: Path) -> Iterator[Path]:
    """A path with ``out``'s name in a temporary folder beside it; moved onto ``out`` on success."""
    folder = Path(tempfile.mkdtemp(prefix=f".partial-{out.name}-", dir=out.parent))
    try:
        yield folder / out.name
        (folder / out.name).replace(out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or device == "cuda" or device.startswith("cuda:"):
        return device
    raise ModelError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")


def load_calculator(model: Path, *, device: str = "auto", threads: int | None = None) -> Any:
    """An ASE calculator for a model directory, a ``.nequip.zip`` or a ``.nequip.pt2``.

    A directory gives its compiled model when it was compiled for ``device``, else its package.
    ``threads`` sets torch's CPU threads for the whole process, since the calculator runs after
    this returns (None: every core this process may use, never what the process inherited);
    measured on 2 busy cores, 1 thread ran MIL-53 MD at 93 steps/s where 2 spinning threads
    ran 1.2.
    """
    set_torch_threads(threads)
    calc, _ = _load(Path(model), resolve_device(device))
    return calc


def model_species(model: Path) -> list[str]:
    """The chemical species a model was built for (its type names)."""
    path = Path(model)
    if path.is_dir():
        record = path / RECORD_NAME
        if record.is_file():
            species = TrainedModel.from_record(path).metrics.get("species")
            if species:
                return list(species)
        return model_species(package_path(path))
    if path.name.endswith(".nequip.zip"):
        check_file(path)
        try:
            from nequip.model.saved_models.package import ModelTypeNamesFromPackage

            return list(ModelTypeNamesFromPackage(str(path)))
        except Exception as exc:
            raise ModelError(f"{path}: not a readable NequIP package ({short_error(exc)})") from exc
    _, species = _load(path, "cpu")
    return species


def package_r_max(package: Path) -> float:
    """The cutoff radius a package was trained with (a warm start must keep it)."""
    try:
        from nequip.model.saved_models.load_utils import load_saved_model
        from nequip.nn import graph_model

        model = load_saved_model(str(package))
        return float(model.metadata[graph_model.R_MAX_KEY])
    except Exception as exc:
        raise ModelError(f"{package}: not a readable NequIP package ({short_error(exc)})") from exc


def _from_compiled(path: Path, device: str) -> Any:
    """nequip's ASE calculator for a compiled model: ``--target ase``'s fields, or those of a
    model compiled without stress (``compile_model(stress=False)``, molecules)."""
    from nequip.integrations.ase import NequIPCalculator

    class WithoutStress(NequIPCalculator):  # type: ignore[misc]
        @classmethod
        def _get_aoti_compile_target(cls) -> dict[str, Any]:
            return {"input": list(_ASE_INPUTS), "output": list(_ASE_OUTPUTS_WITHOUT_STRESS)}

    try:
        return NequIPCalculator.from_compiled_model(
            str(path), device=device, chemical_species_to_atom_type_map=True
        )
    except ValueError as exc:
        if "do not match metadata" not in str(exc):
            raise
        return WithoutStress.from_compiled_model(
            str(path), device=device, chemical_species_to_atom_type_map=True
        )


def _load(path: Path, device: str) -> tuple[Any, list[str]]:
    """(calculator, species) for a model directory, package or compiled model."""
    if path.is_dir():
        record = read_json(path / RECORD_NAME)
        compiled = record.get("compiled")
        if compiled and record.get("compiled_device") == device:
            return _load(path / compiled, device)
        return _load(package_path(path), device)
    check_file(path)
    try:
        from nequip.integrations.ase import NequIPCalculator

        if path.name.endswith(".nequip.pt2"):
            calc = _from_compiled(path, device)
        elif path.name.endswith(".nequip.zip"):
            # nequip's eager loader for packages (the public one takes compiled models only)
            calc = NequIPCalculator._from_saved_model(
                str(path), device=device, chemical_species_to_atom_type_map=True
            )
        else:
            raise ModelError(
                f"{path}: not a model: expected a directory, a .nequip.zip or a .nequip.pt2"
            )
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path}: not a readable NequIP model ({short_error(exc)})") from exc
    # identity species -> type map (set above): the model's type names are chemical symbols
    species = list(calc.transforms[0].model_type_names)
    return calc, species


# --------------------------------------------------------------------------------------------
# evaluation


def evaluate(
    model: Path,
    frames: Sequence[Atoms],
    *,
    device: str = "auto",
    source: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Errors of ``model`` against labeled frames (frames with status "failed" are skipped).

    Returns exactly the keys of ``hillwalker evaluate --json``: energy RMSE per atom (meV/atom),
    force RMSE over all components (meV/Å; None when no frame has forces: energy-only labels
    such as CCSD(T) count for the energy only), stress RMSE over the nine 3x3 components (GPa;
    None when no frame has a stress), the force RMSE per element (meV/Å) and how many frames
    had forces (``n_frames_with_forces``). ``source`` names the
    frames (their file) in error messages. ``threads``: torch's CPU threads while it runs (None:
    every core this process may use); the process's own setting is restored afterwards.
    """
    path = Path(model)
    with torch_threads(threads):
        calc, species = _load(path, resolve_device(device))
        return score(calc, frames, species=species, source=source, model=str(path))


def score(
    calc: Any,
    frames: Sequence[Atoms],
    *,
    species: Sequence[str] | None = None,
    source: str | None = None,
    model: str = "the model",
) -> dict[str, Any]:
    """:func:`evaluate`'s errors for any ASE calculator (a sum of parts, too); ``species``:
    the elements it covers (None: unchecked)."""
    where = f"{source}: " if source else ""
    usable = _usable_frames(frames, where)
    if species is not None:
        missing = sorted(set(species_of(usable)) - set(species))
        if missing:
            raise ModelError(
                f"{where}element(s) {', '.join(missing)} not in the model {model} "
                f"(model species: {' '.join(species)})"
            )
    errors = _Errors()
    cv = _cv_bins(usable)
    bins = [_Errors() for _ in range(CV_BINS)] if cv else []
    # frames of a campaign of several materials name theirs (info["material"])
    materials = [atoms.info.get("material") for atoms in usable]
    groups = {m: _Errors() for m in sorted({str(m) for m in materials if m is not None})}
    for i, atoms in enumerate(usable):
        also = [bins[cv[1][i]]] if cv else []
        if materials[i] is not None:
            also.append(groups[str(materials[i])])
        errors.add(atoms, calc, also=also)
    result = {"n_frames": len(usable), **errors.summary()}
    if groups:
        result["by_material"] = {
            m: {"n_frames": len(e.energy), **e.summary()} for m, e in groups.items()
        }
    if cv:  # frames that carry their CV value (e.g. from `hillwalker testset`)
        name, _, edges = cv
        result["by_cv_bin"] = {
            "cv": name,
            "bins": [
                {"lo": float(edges[b]), "hi": float(edges[b + 1]), "n_frames": len(e.energy),
                 **{k: e.summary()[k] for k in ("energy_rmse_mev_per_atom",
                                                "force_rmse_mev_per_ang")}}
                for b, e in enumerate(bins) if e.energy
            ],
        }  # fmt: skip
    return result


#: bins of equal width between the lowest and highest CV value of the scored frames
CV_BINS = 4


def _cv_bins(frames: Sequence[Atoms]) -> tuple[str, list[int], np.ndarray] | None:
    """(first CV's name, each frame's bin, bin edges) when every frame has ``info["cv"]`` with
    that CV and the values spread; else None."""
    values = []
    name = None
    for atoms in frames:
        cv = atoms.info.get("cv")
        if not isinstance(cv, dict) or not cv:
            return None
        name = name or next(iter(cv))
        value = cv.get(name)
        if not isinstance(value, int | float) or not np.isfinite(value):
            return None
        values.append(float(value))
    if name is None or max(values) <= min(values):
        return None
    edges = np.linspace(min(values), max(values), CV_BINS + 1)
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, CV_BINS - 1)
    return name, [int(i) for i in index], edges


def _usable_frames(frames: Sequence[Atoms], where: str) -> list[Atoms]:
    """The frames to score: all but failed single points, each with an energy."""
    usable = [f for f in frames if f.info.get("status") != STATUS_FAILED]
    if not usable:
        raise ModelError(f"{where}no labeled frames to evaluate (empty dataset)")
    for i, atoms in enumerate(frames):
        if "energy" not in labels(atoms) and atoms.info.get("status") != STATUS_FAILED:
            raise ModelError(f"{where}frame {i} has no energy: evaluation needs one")
    return usable


class _Errors:
    """Squared errors gathered frame by frame (ASE units), summarised as RMSEs."""

    def __init__(self) -> None:
        self.energy: list[float] = []
        self.forces: dict[str, list[np.ndarray]] = {}
        self.stress: list[np.ndarray] = []
        self.with_forces = 0

    def add(self, atoms: Atoms, calc: Any, also: Sequence[_Errors] = ()) -> None:
        """The frame's squared errors, into this summary and those in ``also`` (one call of
        ``calc`` per frame)."""
        into = [self, *also]
        ref = labels(atoms)
        probe = atoms.copy()
        probe.calc = calc
        energy = probe.get_potential_energy()
        for e in into:
            e.energy.append(((energy - ref["energy"]) / len(atoms)) ** 2)
        if "forces" in ref and np.all(np.isfinite(ref["forces"])):
            diff = probe.get_forces() - np.asarray(ref["forces"])
            symbols = np.array(atoms.get_chemical_symbols())
            for e in into:
                e.with_forces += 1
                for symbol in set(symbols.tolist()):
                    e.forces.setdefault(symbol, []).append((diff[symbols == symbol] ** 2).ravel())
        if "stress" in ref and atoms.cell.rank == 3:
            ref_stress = _full_stress(np.asarray(ref["stress"]))
            if np.all(np.isfinite(ref_stress)):
                stress = _full_stress(probe.get_stress(voigt=True))
                for e in into:
                    e.stress.append(((stress - ref_stress) ** 2).ravel())

    def summary(self) -> dict[str, Any]:
        forces = [np.concatenate(v) for v in self.forces.values()]
        by_element = {
            s: 1000.0 * float(np.sqrt(np.mean(np.concatenate(self.forces[s]))))
            for s in sorted(self.forces, key=lambda s: atomic_numbers[s])
        }
        stress = self.stress
        return {
            "energy_rmse_mev_per_atom": 1000.0 * float(np.sqrt(np.mean(self.energy))),
            "force_rmse_mev_per_ang": (
                1000.0 * float(np.sqrt(np.mean(np.concatenate(forces)))) if forces else None
            ),
            "stress_rmse_gpa": (
                float(np.sqrt(np.mean(np.concatenate(stress)))) / GPa if stress else None
            ),
            "force_rmse_by_element": by_element,
            "n_frames_with_forces": self.with_forces,
        }


def _full_stress(stress: np.ndarray) -> np.ndarray:
    stress = np.asarray(stress, float)
    if stress.shape == (3, 3):
        return stress
    xx, yy, zz, yz, xz, xy = stress
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
