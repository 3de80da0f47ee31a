"""A nequip loss (or metrics) in which a frame without a label contributes nothing.

Frames labeled by an energy-only method (CCSD(T), FCI) carry NaN forces in the training data, and
frames without stress NaN stress. nequip's ``ignore_nan`` drops NaN targets from a metric, but a
batch in which *every* target of a field is NaN then gives 0/0 = NaN for that term, and the loss
(and what is logged and monitored) becomes NaN. :func:`skipping_missing` builds the template's
own loss or metrics (``inner``, e.g. ``nequip.train.EnergyForceStressLoss``) and makes the terms
of the ``nan_fields`` skip NaN targets and count as 0 in a batch that has none;
:func:`statistics_skipping_missing` does the same for the data statistics (the force RMS that
scales the model would otherwise be NaN, and the whole model with it).

Runs inside ``nequip-train`` (hydra ``_target_``); see ``training._skip_missing_overrides``.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

#: ASE/extxyz label name → nequip field name
_FIELDS = {"forces": "forces", "stress": "stress", "energy": "total_energy"}


def skipping_missing(
    inner: str,
    nan_fields: list[str],
    ignore_nan: dict[str, bool] | None = None,
    **kwargs: Any,
) -> Any:
    """``inner(**kwargs)`` (a nequip ``MetricsManager``) with NaN-skipping, empty-safe terms for
    ``nan_fields`` (and any field ``ignore_nan`` names)."""
    module, _, name = inner.rpartition(".")
    manager = getattr(importlib.import_module(module), name)(**kwargs)
    fields = {_FIELDS.get(f, f) for f in nan_fields}
    fields |= {_FIELDS.get(f, f) for f, on in (ignore_nan or {}).items() if on}
    for metric_name, entry in manager.entries.items():
        if entry.field is None or getattr(entry.field, "field", None) not in fields:
            continue
        entry.ignore_nan = True
        metric = manager[metric_name]
        if isinstance(metric, torch.nn.ModuleList):
            for m in metric:
                _empty_is_zero(m)
        else:
            _empty_is_zero(metric)
    return manager


def statistics_skipping_missing(inner: str, nan_fields: list[str], **kwargs: Any) -> Any:
    """``inner(**kwargs)`` (a nequip ``DataStatisticsManager``, e.g. the template's
    ``CommonDataStatisticsManager``) computing the ``nan_fields`` statistics (the force RMS that
    scales the model) over the frames that have them: NaN labels are skipped."""
    module, _, name = inner.rpartition(".")
    manager = getattr(importlib.import_module(module), name)(**kwargs)
    fields = {_FIELDS.get(f, f) for f in nan_fields}
    for idx, field in enumerate(manager.fields):
        if getattr(field, "field", None) in fields:
            manager.ignore_nans[idx] = True
    return manager


def _empty_is_zero(metric: Any) -> None:
    """A running-mean metric (nequip's ``_MeanX``: MSE, MAE, RMSE) computes 0, not 0/0, when it
    has seen no value; other metrics are left as they are."""
    if not hasattr(metric, "count"):
        return
    compute = metric.compute

    def compute_or_zero() -> torch.Tensor:
        if not torch.is_nonzero(metric.count):
            return torch.zeros((), dtype=torch.get_default_dtype())
        result: torch.Tensor = compute()
        return result

    metric.compute = compute_or_zero
