"""CP2K single points: a level of theory (one CP2K input file) + a frame → energy, forces, stress.

The CP2K implementation of :class:`hillwalker.engines.levels.ReferenceLevel`, along its seams:

- :mod:`.level`: the level (parse, check, digest, elements it covers, the free-atom level);
- :mod:`.inputs`: a frame at a level → CP2K input (the frame's cell and coordinates put in);
- :mod:`.run`: the CP2K subprocess, units, and :func:`single_point`;
- :mod:`.handlers`: what went wrong and what to change (the SCF ladder, the crash rerun);
- :mod:`.output`: the output parser (a pure function over the text);
- :mod:`.tree`: CP2K's parsed input tree (cp2k-input-tools) and keys by path.
"""

from __future__ import annotations

from hillwalker.engines.cp2k.handlers import DEFAULT_LADDER, FAILURES, ScfCorrection
from hillwalker.engines.cp2k.inputs import frame_input, write_input
from hillwalker.engines.cp2k.level import (
    Level,
    cp2k_data_dir,
    isolated_atom_energies,
    isolated_atom_level,
    load,
)
from hillwalker.engines.cp2k.output import Cp2kOutput, parse_output
from hillwalker.engines.cp2k.run import DEFAULT_COMMAND, single_point, to_ase_units
from hillwalker.engines.levels import RESULT_FILE, LevelError, RunOptions, SinglePointResult

__all__ = [
    "DEFAULT_COMMAND",
    "DEFAULT_LADDER",
    "FAILURES",
    "RESULT_FILE",
    "Cp2kOutput",
    "Level",
    "LevelError",
    "RunOptions",
    "ScfCorrection",
    "SinglePointResult",
    "cp2k_data_dir",
    "frame_input",
    "isolated_atom_energies",
    "isolated_atom_level",
    "load",
    "parse_output",
    "single_point",
    "to_ase_units",
    "write_input",
]
