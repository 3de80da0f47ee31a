"""Free-energy surfaces from metadynamics hills: PLUMED's ``sum_hills``, in numpy.

``plumed sum_hills --hills HILLS --min a --max b --bin n`` prints ``file.free`` = −Σ hᵢ·Kᵢ(s) on
the grid ``a + k·(b − a)/n`` (k = 0…n; n points for a periodic CV), where hᵢ is the height *as the
file stores it* — for a well-tempered run PLUMED writes w·γ/(γ−1), so the sum of the file is
already the free-energy estimate — and Kᵢ is the stretched Gaussian of
:func:`hillwalker.engines.plumed.bias_from_hills`. No offset is applied (``--mintozero`` shifts
the minimum to zero; :func:`to_zero` does the same). :func:`free_energy` is that sum, in kJ/mol.

:class:`~hillwalker.engines.plumed.HillsData` keeps the heights the bias felt (w, in eV), so the
well-tempered factor γ/(γ−1) is put back here from each hill's ``biasf`` column — the bias
factor PLUMED wrote, which is the input's ``BIASFACTOR``. ``kT`` only matters to ``sum_hills``
when CVs are integrated out (``--idw``), which this module does not do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from hillwalker.engines.plumed import (
    KJ_PER_MOL,
    HillsData,
    bias_from_hills,
    keyword_value,
    parse_action,
)


def grid_axis(lo: float, hi: float, bins: int, *, periodic: bool = False) -> np.ndarray:
    """The points of ``sum_hills --min lo --max hi --bin bins`` along one CV."""
    n = bins if periodic else bins + 1
    return lo + (hi - lo) * np.arange(n) / bins


def well_tempered_factor(hills: HillsData) -> np.ndarray:
    """γ/(γ−1) for each well-tempered hill (biasf > 1), else 1."""
    gamma = hills.biasf
    safe = np.where(gamma > 1.0, gamma, 2.0)
    return np.where(gamma > 1.0, safe / (safe - 1.0), 1.0)


def free_energy(hills: HillsData, axes: Sequence[np.ndarray]) -> np.ndarray:
    """−Σ (file heights)·K on the grid spanned by ``axes`` (one per CV), kJ/mol.

    Shape: the axes' lengths (``values[i, j]`` at ``axes[0][i], axes[1][j]``).
    """
    if len(axes) != len(hills.cv_names):
        raise ValueError(f"{len(axes)} grid axes for the CVs {hills.cv_names}")
    mesh = np.meshgrid(*axes, indexing="ij")
    points = np.stack([m.ravel() for m in mesh], axis=1)
    file_hills = replace(hills, heights=hills.heights * well_tempered_factor(hills))
    # in blocks: the sum holds (points x hills x CVs) arrays
    block = max(1, 2_000_000 // max(1, len(hills) * len(axes)))
    bias = np.concatenate(
        [bias_from_hills(file_hills, points[i : i + block]) for i in range(0, len(points), block)]
    )
    return -(bias / KJ_PER_MOL).reshape(mesh[0].shape)


def to_zero(values: np.ndarray) -> np.ndarray:
    """``--mintozero``: the surface shifted so that its minimum is 0."""
    return values - np.min(values) if values.size else values


def biasfactor(plumed_lines: Sequence[str]) -> float | None:
    """The METAD action's ``BIASFACTOR`` (None: not well-tempered, or no METAD)."""
    for line in plumed_lines:
        _, action, keywords = parse_action(line)
        if action == "METAD":
            value = keyword_value(keywords, "BIASFACTOR")
            return float(value) if value is not None else None
    return None
