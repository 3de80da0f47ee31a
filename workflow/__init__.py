"""hillwalker: active learning of NequIP potentials with CP2K labels and PLUMED metadynamics walkers."""

from __future__ import annotations

__version__ = "0.1.0"
