"""Find the PLUMED kernel library that the ``plumed`` Python wrapper loads.

Order: a user's ``PLUMED_KERNEL`` (e.g. set by ``module load plumed`` on a cluster) wins; else the
kernel that ``scripts/setup.sh`` unpacked into the virtual environment
(``<venv>/opt/plumed-kernel/plumed/_lib/lib/libplumedKernel.so``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: where scripts/setup.sh puts the kernel, relative to the environment's prefix
BUNDLED_KERNEL = Path("opt/plumed-kernel/plumed/_lib/lib/libplumedKernel.so")


class PlumedKernelError(RuntimeError):
    pass


def bundled_kernel() -> Path:
    return Path(sys.prefix) / BUNDLED_KERNEL


def find_kernel() -> Path:
    """Path of the kernel to use, or :class:`PlumedKernelError` saying how to get one."""
    user = os.environ.get("PLUMED_KERNEL")
    if user:
        path = Path(user)
        if not path.is_file():
            raise PlumedKernelError(
                f"PLUMED_KERNEL={user} does not exist: point it at libplumedKernel.so or unset it"
            )
        return path
    path = bundled_kernel()
    if path.is_file():
        return path
    raise PlumedKernelError(
        f"no PLUMED kernel: {path} is missing and PLUMED_KERNEL is unset. "
        "Run 'bash scripts/setup.sh', or set PLUMED_KERNEL to your libplumedKernel.so"
    )


def use_kernel() -> Path:
    """Make sure ``PLUMED_KERNEL`` is set for this process (and its children); return the path.

    The ``plumed`` wrapper reads the variable when a ``plumed.Plumed`` object is created, so this
    must run before any PLUMED object is made.
    """
    path = find_kernel()
    os.environ["PLUMED_KERNEL"] = str(path)
    return path


def plumed_tool_env() -> dict[str, str]:
    """Environment for the ``plumed`` command-line tool of the bundled kernel (e.g. sum_hills)."""
    kernel = find_kernel()
    libdir = kernel.parent
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(libdir), env.get("LD_LIBRARY_PATH", "")) if p
    )
    env.setdefault("PLUMED_ROOT", str(libdir / "plumed"))
    env["PLUMED_KERNEL"] = str(kernel)
    return env
