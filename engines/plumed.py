"""PLUMED inputs and metadynamics hills: clean, rewrite for a walker, read, sum, snapshot.

Units
-----
PLUMED input files are written in PLUMED's own units: length nm, time ps, energy kJ/mol (so a
``VOLUME`` CV is in nm³ = 1000 Å³, a ``DISTANCE`` in nm, ``HEIGHT`` in kJ/mol, ``SIGMA`` in the
CV's unit, ``PACE`` in MD steps). ``ase.calculators.plumed.Plumed`` tells the kernel the MD engine's
units (Å, eV, ASE time), so positions and energies cross that edge converted by PLUMED itself.
Everything this module hands back to Python code is in ASE units where an energy is involved:
:attr:`HillsData.heights` and :func:`bias_from_hills` are eV (kJ/mol → eV via ``ase.units``).
CV values (hill centres and widths, ``cv_values``) stay in the CV's PLUMED unit — they are
whatever PLUMED computed, and are compared with COLVAR as they are. Hill times are ps. A ``UNITS``
action in an input is refused, because it would change the units of HILLS and COLVAR.

Hills layout
------------
A campaign's live bias is one directory holding ``HILLS.<walker>`` for every walker, in PLUMED's
multiple-walkers layout (``WALKERS_DIR``): in ``shared`` mode every walker reads every file, in
``independent`` mode walker *i* reads and writes ``HILLS.<i>`` only (so does a single shared
walker: with ``WALKERS_N=1`` PLUMED would ignore ``WALKERS_DIR`` and write ``FILE`` relative to the
process's working directory). PLUMED 2.11 refuses to restart multiple walkers while any
walker's file is missing, hence :func:`init_bias_dir`. Each file is written by one
walker only, which is what makes a killed segment repairable (see
:mod:`hillwalker.engines.walkers`).

Bias of a hill file
-------------------
PLUMED's hills are "stretched" Gaussians cut at ``0.5·Σ(Δs/σ)² = 6.25`` and shifted so they reach
zero there: ``w·(exp(-q) - exp(-6.25)) / (1 - exp(-6.25))`` for ``q < 6.25``. With a bias factor
γ > 1 the file stores ``w·γ/(γ-1)`` (so that summing the file gives the free energy) and the bias
uses ``w``. :func:`bias_from_hills` reproduces PLUMED's sum exactly (checked to 1e-12 eV); a run
that uses METAD's ``GRID_*`` feels a spline interpolation of the same sum instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from ase import units
from ase.calculators.calculator import all_changes
from ase.calculators.plumed import Plumed
from ase.stress import full_3x3_to_voigt_6_stress

from hillwalker.engines.files import atomic_open, atomic_write_json

#: 1 kJ/mol in eV
KJ_PER_MOL = units.kJ / units.mol
#: 1 nm in Å
NM = units.nm
#: 1 ps in ASE time units
PS = 1000.0 * units.fs

#: PLUMED's Gaussian cut-off in ``0.5·Σ(Δs/σ)²`` (MetaD ``DP2CUTOFF``)
HILL_CUTOFF = 6.25

BiasMode = Literal["shared", "independent", "none"]
BIAS_MODES: tuple[str, ...] = ("shared", "independent", "none")

#: name of the live hills file of a walker inside the bias directory (PLUMED: FILE=HILLS + ".<id>")
HILLS_NAME = "HILLS"
_HILLS_FILE = re.compile(r"^HILLS\.(\d+)$")
#: METAD keywords this module owns: they are replaced for each walker and mode
_WALKER_KEYS = ("FILE", "WALKERS_N", "WALKERS_ID", "WALKERS_DIR", "WALKERS_RSTRIDE")


class PlumedInputError(ValueError):
    """A PLUMED input that cannot be used; the message names the file (and line or action)."""


class HillsError(ValueError):
    """A hills file that cannot be read; the message names the file and line."""


# --------------------------------------------------------------------------------------------
# input text


def clean_input(text: str, source: str = "<input>") -> list[str]:
    """PLUMED input text → one action per line, as the kernel's ``readInputLine`` wants them.

    Strips comments (``#`` to the end of a line) and blank lines, joins ``...`` continuation
    blocks (``METAD ...`` up to a line starting with ``...``), stops at ``ENDPLUMED``.
    """
    lines: list[str] = []
    block: list[str] | None = None
    block_start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "__FILL__" in line:
            raise PlumedInputError(f"{source}, line {number}: __FILL__ left in the input")
        words = line.split()
        if block is not None:
            if words[0] == "...":
                lines.append(" ".join(block))
                block = None
            else:
                if words[-1] == "...":
                    raise PlumedInputError(
                        f"{source}, line {number}: a '...' block opens inside the block "
                        f"opened on line {block_start}"
                    )
                block.extend(words)
            continue
        if words[0] == "...":
            raise PlumedInputError(f"{source}, line {number}: '...' closes no open block")
        if words[0] == "ENDPLUMED":
            break
        if words[-1] == "...":
            block, block_start = words[:-1], number
            continue
        lines.append(" ".join(words))
    if block is not None:
        raise PlumedInputError(
            f"{source}, line {block_start}: the '...' block opened here is never closed"
        )
    for line in lines:
        if parse_action(line)[1] == "UNITS":
            raise PlumedInputError(
                f"{source}: UNITS is not supported; write the input in PLUMED's default units "
                "(nm, ps, kJ/mol)"
            )
    if not lines:
        raise PlumedInputError(f"{source}: no PLUMED actions in the input")
    return lines


def read_input(path: str | os.PathLike[str]) -> list[str]:
    """Read and :func:`clean_input` a PLUMED input file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise PlumedInputError(f"{p}: cannot read the PLUMED input ({exc})") from exc
    return clean_input(text, source=str(p))


def source_line_numbers(text: str, cleaned: list[str]) -> list[int | None]:
    """The 1-based line of ``text`` where each cleaned PLUMED line starts (None if not found).

    A cleaned line starts with the first word of its source line once comments are removed,
    and the cleaned lines come in source order: one forward scan finds them.
    """
    sources = [(n, line.split("#", 1)[0].split()) for n, line in enumerate(text.splitlines(), 1)]
    numbers: list[int | None] = []
    cursor = 0
    for line in cleaned:
        words = line.split()
        found = None
        for i in range(cursor, len(sources)):
            number, source_words = sources[i]
            if source_words and words and source_words[0] == words[0]:
                found, cursor = number, i + 1
                break
        numbers.append(found)
    return numbers


def parse_action(line: str) -> tuple[str | None, str, list[str]]:
    """``(label, ACTION, keywords)`` of one clean line (``lab: ACTION ...`` or ``LABEL=lab``)."""
    words = line.split()
    label = None
    if words[0].endswith(":"):
        label, words = words[0][:-1], words[1:]
        if not words:
            raise PlumedInputError(f"'{line}': a label with no action")
    action, keywords = words[0].upper(), words[1:]
    for word in keywords:
        if word.upper().startswith("LABEL="):
            label = word.split("=", 1)[1]
    return label, action, keywords


def keyword_value(keywords: Sequence[str], name: str) -> str | None:
    for word in keywords:
        key, _, value = word.partition("=")
        if key.upper() == name:
            return value
    return None


def _plumed_path(path: Path, what: str) -> str:
    text = str(path.resolve())
    if any(c.isspace() for c in text) or "," in text:
        # PLUMED splits keyword values on blanks and commas
        raise PlumedInputError(f"{what} {text!r}: PLUMED cannot take a path with blanks or commas")
    return text


def hills_file(bias_dir: str | os.PathLike[str], walker: int) -> Path:
    """The live hills file that ``walker`` writes: ``<bias_dir>/HILLS.<walker>``."""
    return Path(bias_dir) / f"{HILLS_NAME}.{walker}"


def hills_files(bias_dir: str | os.PathLike[str]) -> list[Path]:
    """Every ``HILLS.<n>`` file in a bias directory, ordered by walker."""
    d = Path(bias_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _HILLS_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def init_bias_dir(bias_dir: str | os.PathLike[str], n_walkers: int) -> None:
    """Create the bias directory and an empty ``HILLS.<i>`` for every walker that has none.

    PLUMED (2.11) refuses to restart multiple walkers unless every walker's file exists, and
    without a restart it moves an existing file aside and starts an empty bias. Creating the
    missing files (exclusively, so a file another walker just made is never clobbered) lets
    every segment restart.
    """
    d = Path(bias_dir)
    d.mkdir(parents=True, exist_ok=True)
    for walker in range(n_walkers):
        try:
            fd = os.open(hills_file(d, walker), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        os.close(fd)


def prepare_input(
    lines: Sequence[str],
    *,
    walker_id: int,
    n_walkers: int,
    bias_dir: str | os.PathLike[str],
    mode: BiasMode,
    workdir: str | os.PathLike[str] | None = None,
    rstride: int | None = None,
    cv_stride: int | None = None,
    source: str = "<input>",
) -> list[str]:
    """Rewrite clean input lines for one walker of a campaign.

    - ``shared``: METAD gets ``FILE=HILLS WALKERS_N/ID/DIR/RSTRIDE`` so every walker deposits into
      ``<bias_dir>/HILLS.<walker_id>`` and reads the others' files every ``rstride`` steps
      (default: the template's ``WALKERS_RSTRIDE``, else METAD's ``PACE``).
    - ``independent``: METAD gets ``FILE=<bias_dir>/HILLS.<walker_id>`` and no walkers keywords.
    - ``none``: METAD is dropped, with its components (``label.bias``…) from other actions'
      ``ARG``; CVs, walls and PRINT stay (walls keep an unbiased walker physical too).

    ``RESTART`` is put first when a hills file of this walker's bias already exists (call
    :func:`init_bias_dir` first so that all of them do). Relative ``FILE=`` of other actions
    (COLVAR) are made absolute inside ``workdir``; ``cv_stride`` overrides PRINT's ``STRIDE``.
    """
    if mode not in BIAS_MODES:
        raise PlumedInputError(f"bias mode {mode!r}: expected one of {', '.join(BIAS_MODES)}")
    if not 0 <= walker_id < n_walkers:
        raise PlumedInputError(f"walker {walker_id} is not one of 0..{n_walkers - 1}")
    parsed = [(line, *parse_action(line)) for line in lines]
    metad = [(label, kw) for _, label, action, kw in parsed if action == "METAD"]
    if mode != "none" and len(metad) != 1:
        raise PlumedInputError(
            f"{source}: bias mode {mode!r} needs exactly one METAD action, found {len(metad)}"
        )
    metad_labels = {label for label, _ in metad if label}
    bias = Path(bias_dir)
    out: list[str] = []
    for line, _label, action, keywords in parsed:
        if action == "RESTART":
            continue  # this module decides when a run restarts
        if action == "METAD":
            if mode == "none":
                continue
            out.append(_walker_metad(line, keywords, walker_id, n_walkers, bias, mode, rstride))
            continue
        # without METAD its components go from other actions' ARG (a PRINT of only them goes)
        dropped = metad_labels if mode == "none" else set()
        new = _rewrite_keywords(line, action, dropped, workdir, cv_stride)
        if new:
            out.append(new)
    if mode != "none":
        own = (
            [hills_file(bias, w) for w in range(n_walkers)]
            if mode == "shared"
            else [hills_file(bias, walker_id)]
        )
        if any(p.exists() for p in own):
            out.insert(0, "RESTART")
    return out


def _rewrite_keywords(
    line: str,
    action: str,
    dropped: set[str],
    workdir: str | os.PathLike[str] | None,
    cv_stride: int | None,
) -> str | None:
    """One non-METAD line with ARG, FILE and PRINT's STRIDE rewritten; None: drop the line."""
    new: list[str] = []
    for word in line.split():
        key, eq, value = word.partition("=")
        upper = key.upper()
        if eq and upper == "ARG" and dropped:
            args = [a for a in value.split(",") if a.split(".", 1)[0] not in dropped]
            if not args:
                return None
            word = f"{key}={','.join(args)}"
        elif eq and upper == "FILE" and workdir is not None and not Path(value).is_absolute():
            word = f"{key}={_plumed_path(Path(workdir) / value, 'FILE')}"
        elif eq and upper == "STRIDE" and action == "PRINT" and cv_stride is not None:
            word = f"{key}={int(cv_stride)}"
        new.append(word)
    return " ".join(new)


def _walker_metad(
    line: str,
    keywords: Sequence[str],
    walker_id: int,
    n_walkers: int,
    bias: Path,
    mode: BiasMode,
    rstride: int | None,
) -> str:
    pace = keyword_value(keywords, "PACE")
    if pace is None:
        raise PlumedInputError(f"METAD without PACE: '{line}'")
    stride = rstride or keyword_value(keywords, "WALKERS_RSTRIDE") or pace
    kept = [
        w
        for w in line.split()
        if w.partition("=")[0].upper() not in _WALKER_KEYS and w.upper() != "WALKERS_MPI"
    ]
    if mode == "shared" and n_walkers > 1:
        kept += [
            f"FILE={HILLS_NAME}",
            f"WALKERS_N={n_walkers}",
            f"WALKERS_ID={walker_id}",
            f"WALKERS_DIR={_plumed_path(bias, 'bias directory')}",
            f"WALKERS_RSTRIDE={int(stride)}",
        ]
    else:
        # independent, or a single walker (PLUMED ignores WALKERS_DIR when WALKERS_N=1)
        kept.append(f"FILE={_plumed_path(hills_file(bias, walker_id), 'hills file')}")
    return " ".join(kept)


def metad_label(lines: Iterable[str]) -> str | None:
    """Label of the METAD action (its components are ``<label>.bias`` …), if any."""
    for line in lines:
        label, action, _ = parse_action(line)
        if action == "METAD":
            return label
    return None


# --------------------------------------------------------------------------------------------
# the calculator


class BiasedCalculator(Plumed):
    """``ase.calculators.plumed.Plumed`` with the model evaluated once per step, for one process.

    ASE's wrapper asks the model for energy, forces and stress one by one (each a full
    comparison of the atoms against the model's cache) and pickles the bias through an MPI
    broadcast even without MPI; for a fast model that bookkeeping costs more than PLUMED.
    Here the model computes everything it implements in one ``calculate`` call, and the bias
    comes straight from PLUMED. Energies, forces and the stress with the bias virial are the
    same as ASE's wrapper gives (tested).
    """

    def _compute_properties(
        self, pos: np.ndarray, istep: int
    ) -> tuple[float, np.ndarray, np.ndarray | None]:
        periodic = self.atoms.cell.rank == 3
        wanted = ["energy", "forces"] + (["stress"] if periodic else [])
        properties = [p for p in wanted if p in self.calc.implemented_properties]
        self.calc.calculate(self.atoms, properties, all_changes)
        results = self.calc.results
        energy_bias, forces_bias, virial_bias = self.compute_bias(pos, istep, results["energy"])
        energy = results["energy"] + energy_bias
        forces = results["forces"] + forces_bias
        if not periodic:
            return energy, forces, None
        # a model without stress (or a cell-less one) feels the bias virial only, as in ASE's
        stress = np.asarray(results.get("stress", np.zeros(6)), dtype=float).reshape(-1)
        if stress.size == 9:
            stress = full_3x3_to_voigt_6_stress(stress.reshape(3, 3))
        return (
            energy,
            forces,
            stress + full_3x3_to_voigt_6_stress(virial_bias) / (self.atoms.get_volume()),
        )


# --------------------------------------------------------------------------------------------
# COLVAR and HILLS columns


def fields_header(line: str) -> list[str] | None:
    """The column names of a ``#! FIELDS time d metad.bias`` header line, else None.

    PLUMED writes such a header at the top of every COLVAR and HILLS file, and again wherever
    the columns change (a restart, a ``clock`` column added for multiple walkers).
    """
    words = line.split()
    if len(words) >= 3 and words[0] == "#!" and words[1] == "FIELDS":
        return words[2:]
    return None


def colvar_rows(path: str | os.PathLike[str]) -> Iterator[dict[str, float]]:
    """Each data line of a COLVAR file as ``{field: value}`` under the header above it.

    Values are as printed (PLUMED units; ``time`` in ps); a value that is not a number (a line
    being written) is left out of its row. A missing file has no rows.
    """
    p = Path(path)
    if not p.is_file():
        return
    names: list[str] = []
    for line in p.read_text(errors="replace").splitlines():
        header = fields_header(line)
        if header is not None:
            names = header
            continue
        if not line.strip() or line.startswith("#"):
            continue
        row: dict[str, float] = {}
        for name, text in zip(names, line.split(), strict=False):
            with contextlib.suppress(ValueError):
                row[name] = float(text)
        yield row


# --------------------------------------------------------------------------------------------
# hills


@dataclass
class HillsData:
    """Gaussians of one or more hills files.

    ``centers``/``sigmas`` (n, d) are in the CVs' PLUMED units, ``times`` in ps, ``heights`` in eV
    as felt by the bias (bias factor already taken out), ``biasf`` the file's column (−1 or 1:
    not well-tempered), ``walkers`` the walker that deposited each hill (−1 if unknown).
    ``periods`` holds ``(min, max)`` for a periodic CV, else None.
    """

    cv_names: tuple[str, ...]
    times: np.ndarray
    centers: np.ndarray
    sigmas: np.ndarray
    heights: np.ndarray
    biasf: np.ndarray
    walkers: np.ndarray
    periods: tuple[tuple[float, float] | None, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.times)

    def select(self, mask: np.ndarray) -> HillsData:
        """The hills where ``mask`` is true."""
        return HillsData(
            self.cv_names,
            self.times[mask],
            self.centers[mask],
            self.sigmas[mask],
            self.heights[mask],
            self.biasf[mask],
            self.walkers[mask],
            self.periods,
        )

    def before(self, time: float) -> HillsData:
        """Hills deposited strictly before ``time`` (ps): the bias PLUMED felt at that time."""
        # times are printed with ~16 digits; a tolerance far below one MD step
        return self.select(self.times < time - 1e-9)


def _hills_columns(fields: Sequence[str], names: Sequence[str]) -> list[int]:
    """Where time, the centres, the sigmas, height and biasf (−1: none) are in a FIELDS block."""
    idx = {name: i for i, name in enumerate(fields)}
    return [
        idx["time"],
        *(idx[c] for c in names),
        *(idx[f"sigma_{c}"] for c in names),
        idx["height"],
        idx.get("biasf", -1),
    ]


def _parse_hills_file(path: Path) -> tuple[tuple[str, ...], dict[str, str], np.ndarray]:
    """``(cv names, SET values, rows of [time, centres…, sigmas…, height, biasf])``.

    A file may hold blocks with different FIELDS (e.g. the ``clock`` column PLUMED adds for
    multiple walkers): each block is mapped by its own header, as PLUMED reads it.
    """
    cv_names: tuple[str, ...] | None = None
    columns: list[int] = []
    n_fields = 0
    sets: dict[str, str] = {}
    rows: list[list[float]] = []
    try:
        text = path.read_text()
    except OSError as exc:
        raise HillsError(f"{path}: cannot read ({exc})") from exc
    # a last line without its newline is being written (or was cut by a kill): not a hill yet
    complete = text.split("\n")[:-1]
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        if line.startswith("#!"):
            words = line.split()
            fields = fields_header(line)
            if fields is not None:
                names = _cv_names(fields, path, number)
                if cv_names is not None and names != cv_names:
                    raise HillsError(
                        f"{path}, line {number}: CVs change from {cv_names} to {names}"
                    )
                cv_names, n_fields = names, len(fields)
                columns = _hills_columns(fields, names)
            elif len(words) >= 4 and words[1] == "SET":
                sets[words[2]] = words[3]
            continue
        if line.startswith("#"):
            continue
        if cv_names is None:
            raise HillsError(f"{path}, line {number}: a hill before the '#! FIELDS' header")
        values = line.split()
        if len(values) != n_fields:
            raise HillsError(
                f"{path}, line {number}: {len(values)} columns, the header names {n_fields}"
            )
        try:
            numbers = [float(v) for v in values]
        except ValueError as exc:
            raise HillsError(f"{path}, line {number}: not a number ({exc})") from exc
        # no biasf column: not well-tempered (PLUMED writes -1 then)
        rows.append([numbers[c] if c >= 0 else -1.0 for c in columns])
    if sets.get("multivariate", "false") != "false":
        raise HillsError(f"{path}: multivariate hills are not supported")
    names_found = cv_names or ()
    table = np.array(rows, dtype=float).reshape(len(rows), 2 * len(names_found) + 3)
    return names_found, sets, table


def read_hills(path: str | os.PathLike[str]) -> HillsData:
    """Read one hills file, or every ``HILLS.<n>`` of a bias directory (with the walker ids)."""
    p = Path(path)
    if p.is_dir():
        files = [(int(p2.name.rsplit(".", 1)[1]), p2) for p2 in hills_files(p)]
    elif p.is_file():
        m = _HILLS_FILE.match(p.name)
        files = [(int(m.group(1)) if m else -1, p)]
    else:
        raise HillsError(f"{p}: no such hills file or bias directory")
    cv_names: tuple[str, ...] | None = None
    sets_all: dict[str, str] = {}
    parts: list[tuple[np.ndarray, int]] = []
    for walker, f in files:
        names, sets, table = _parse_hills_file(f)
        if not names:
            continue
        if cv_names is not None and names != cv_names:
            raise HillsError(f"{f}: CVs {names} differ from {cv_names} in the other files")
        cv_names = names
        sets_all.update(sets)
        parts.append((table, walker))
    names_t = cv_names or ()
    d = len(names_t)
    if parts:
        table = np.vstack([a for a, _ in parts])
        walkers = np.concatenate([np.full(len(a), w, dtype=int) for a, w in parts])
    else:
        table = np.zeros((0, 2 * d + 3))
        walkers = np.zeros(0, dtype=int)
    biasf = table[:, -1]
    # the file stores w·γ/(γ−1) for well-tempered hills; the bias uses w
    rescale = np.where(biasf > 1.0, (biasf - 1.0) / np.where(biasf > 1.0, biasf, 1.0), 1.0)
    periods = tuple(
        (_set_number(sets_all[f"min_{c}"]), _set_number(sets_all[f"max_{c}"]))
        if f"min_{c}" in sets_all and f"max_{c}" in sets_all
        else None
        for c in names_t
    )
    return HillsData(
        cv_names=names_t,
        times=table[:, 0].copy(),
        centers=table[:, 1 : 1 + d].copy(),
        sigmas=table[:, 1 + d : 1 + 2 * d].copy(),
        heights=table[:, 1 + 2 * d] * rescale * KJ_PER_MOL,
        biasf=biasf.copy(),
        walkers=walkers,
        periods=periods,
    )


def _set_number(text: str) -> float:
    """A ``#! SET min_x`` value: a number, or PLUMED's ``pi``, ``-pi``, ``2pi``, ``-2*pi``."""
    try:
        return float(text)
    except ValueError:
        pass
    m = re.fullmatch(r"([+-]?)(\d*\.?\d*)\*?pi", text)
    if not m:
        raise HillsError(f"'{text}' is not a number PLUMED writes for a period")
    factor = float(m.group(2)) if m.group(2) else 1.0
    return (-1.0 if m.group(1) == "-" else 1.0) * factor * math.pi


def _cv_names(fields: Sequence[str], path: Path, number: int) -> tuple[str, ...]:
    if "time" not in fields or "height" not in fields:
        raise HillsError(f"{path}, line {number}: FIELDS {list(fields)} lack 'time' or 'height'")
    names = tuple(f for f in fields[1:] if f"sigma_{f}" in fields)
    if not names:
        raise HillsError(
            f"{path}, line {number}: FIELDS {list(fields)} name no CV with a sigma_ column"
        )
    return names


def bias_from_hills(
    hills: HillsData, cv_values: float | Sequence[float] | np.ndarray
) -> np.ndarray:
    """Metadynamics bias (eV) of ``hills`` at CV values (PLUMED units), as PLUMED sums it.

    ``cv_values``: a scalar or (m,) for one CV, (m, d) for d CVs. Returns (m,) in eV.
    """
    d = len(hills.cv_names)
    s = np.asarray(cv_values, dtype=float)
    s = s.reshape(-1, 1) if d == 1 else np.atleast_2d(s)
    if d and s.shape[1] != d:
        raise ValueError(f"cv_values have {s.shape[1]} columns, the hills have {d} CVs")
    if len(hills) == 0:
        return np.zeros(len(s))
    delta = s[:, None, :] - hills.centers[None, :, :]
    for k, period in enumerate(hills.periods):
        if period is not None:
            width = period[1] - period[0]
            delta[..., k] -= width * np.round(delta[..., k] / width)
    q = 0.5 * np.sum((delta / hills.sigmas[None, :, :]) ** 2, axis=2)
    floor = math.exp(-HILL_CUTOFF)
    shape = np.where(q < HILL_CUTOFF, (np.exp(-q) - floor) / (1.0 - floor), 0.0)
    return shape @ hills.heights


def count_hills(path: str | os.PathLike[str]) -> int:
    """Number of complete hills in a file or in all ``HILLS.<n>`` of a bias directory."""
    p = Path(path)
    files = hills_files(p) if p.is_dir() else ([p] if p.is_file() else [])
    return sum(count_hills_in_bytes(f.read_bytes()) for f in files)


def count_hills_in_bytes(data: bytes) -> int:
    complete = data[: data.rfind(b"\n") + 1]
    return sum(1 for line in complete.split(b"\n") if line.strip() and not line.startswith(b"#"))


def snapshot_hills(
    bias_dir: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    *,
    generation: int | None = None,
    model: str | None = None,
) -> list[Path]:
    """Copy the live hills into ``dest_dir`` (e.g. ``generations/007/hills``), atomically.

    Only complete lines are copied (a walker may be writing), each file via a temp file and a
    rename; then ``hills.json`` records the generation, the model that deposited them and each
    file's hill count and sha256 — it is written last, so it marks a complete snapshot.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    copied: list[Path] = []
    files: dict[str, dict[str, object]] = {}
    total = 0
    for src in hills_files(bias_dir):
        data = src.read_bytes()
        data = data[: data.rfind(b"\n") + 1]
        target = dest / src.name
        with atomic_open(target, "wb") as handle:
            handle.write(data)
        n = count_hills_in_bytes(data)
        files[src.name] = {"hills": n, "sha256": hashlib.sha256(data).hexdigest()}
        total += n
        copied.append(target)
    manifest = {"generation": generation, "model": model, "hills": total, "files": files}
    atomic_write_json(dest / "hills.json", manifest)
    return copied


def read_snapshot(snapshot_dir: str | os.PathLike[str]) -> dict[str, bytes]:
    """The hills files of a snapshot by name, each checked against its ``hills.json``."""
    snap = Path(snapshot_dir)
    manifest_path = snap / "hills.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise HillsError(f"{manifest_path}: not a complete hills snapshot ({exc})") from exc
    files = {}
    for name, meta in manifest.get("files", {}).items():
        data = (snap / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise HillsError(f"{snap / name}: content differs from {manifest_path}")
        files[name] = data
    return files


def restore_hills(snapshot_dir: str | os.PathLike[str], bias_dir: str | os.PathLike[str]) -> int:
    """Replace the live hills by a snapshot (e.g. to resume a campaign whose bias was lost).

    Checks each file against the snapshot's ``hills.json`` first; returns the hill count.
    """
    files = read_snapshot(snapshot_dir)
    for name, data in files.items():
        with atomic_open(Path(bias_dir) / name, "wb") as handle:
            handle.write(data)
    return sum(count_hills_in_bytes(data) for data in files.values())
