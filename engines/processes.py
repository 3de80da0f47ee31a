"""Child processes of the engines (CP2K, nequip-train/-package/-compile) die with their parent."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent() -> None:
    """``preexec_fn``: SIGTERM the child when the process that started it dies.

    A Parsl worker killed by Parsl, SLURM or a ``kill -9`` of the run would otherwise leave its
    CP2K or training running on, in a task directory that the rerun of the task reuses.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
