"""nequip's command-line tools (nequip-train, -package, -compile) as logged subprocesses."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from hillwalker.engines.nequip.model_files import ModelError
from hillwalker.engines.nequip.threads import subprocess_env
from hillwalker.engines.processes import die_with_parent


def tool(name: str) -> str:
    """A nequip command-line tool from this interpreter's environment (else from PATH)."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ModelError(f"{name} not found next to {sys.executable} or on PATH")
    return found


def run_logged(
    command: list[str],
    log: Path,
    *,
    cwd: Path,
    what: str,
    append: bool = False,
    threads: int | None = None,
) -> None:
    """Run a tool with its output in ``log``; a ModelError with the log's last lines on failure.

    ``threads``: its OMP_NUM_THREADS (None: every core this process may use, never the value
    this process happens to have in its environment).
    """
    env = subprocess_env(threads)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a" if append else "w") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # a killed worker takes its training with it
        )
        try:
            code = process.wait()
        except BaseException:
            # don't leave a training running behind an interrupted caller
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
    if code != 0:
        raise ModelError(f"{log}: {what} failed (exit {code}): {last_error(log)}")


def last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error:" in line:
            return line[:400]
    return lines[-1][:400] if lines else "no output"
