"""CPU threads for training, compilation and inference, always passed explicitly.

Never inherited: a Parsl worker that ran a walker task with ``OMP_NUM_THREADS=1`` in its own
environment made every later training of that worker run on one core of two (measured: the
generation-1 nequip-train process held ``OMP_NUM_THREADS=1``). So each nequip subprocess gets
its own ``env=`` and torch's thread count is set, not left to whatever the process started with.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from hillwalker.engines.nequip.model_files import ModelError


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a SLURM or Parsl binding)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def resolve_threads(threads: int | None) -> int:
    """``threads`` if given (>= 1), else every core this process may use."""
    if threads is None:
        return available_cores()
    if threads < 1:
        raise ModelError(f"threads must be >= 1, not {threads}")
    return threads


def subprocess_env(threads: int | None) -> dict[str, str]:
    """This process's environment with ``OMP_NUM_THREADS`` set for a nequip subprocess."""
    return {**os.environ, "OMP_NUM_THREADS": str(resolve_threads(threads))}


def set_torch_threads(threads: int | None) -> int:
    """Set torch's CPU threads for this process (``threads`` or every core); returns the count."""
    count = resolve_threads(threads)
    import torch

    torch.set_num_threads(count)
    return count


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """torch's CPU threads set for a block and restored after it, so they leak to no later task."""
    import torch

    before = torch.get_num_threads()
    count = set_torch_threads(threads)
    try:
        yield count
    finally:
        torch.set_num_threads(before)
