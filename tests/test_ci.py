"""What CI relies on: a SLURM test cannot pass by skipping, a hung test stops at its limit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # PATH without the SLURM and munge programs: the local cluster cannot start
    environ = {**os.environ, "PATH": str(Path(sys.executable).parent), **env}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "0", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_under_ci_a_slurm_test_fails_when_the_cluster_cannot_start() -> None:
    test = "tests/workflow/test_slurm.py::test_the_cluster_is_up"
    on_ci = _pytest(test, CI="true")
    assert on_ci.returncode == 1, on_ci.stdout
    assert "CI=true and the SLURM cluster cannot start: SLURM/munge programs missing" in (
        on_ci.stdout
    )
    # elsewhere (a laptop without SLURM) the same test is skipped with its reason
    local = _pytest(test, "-rs", CI="")
    assert local.returncode == 0, local.stdout
    assert "1 skipped" in local.stdout and "SLURM/munge programs missing" in local.stdout


def test_a_hung_test_stops_at_its_timeout_with_its_name(tmp_path: Path) -> None:
    hung = tmp_path / "test_hung.py"
    hung.write_text(
        "import time\n\n\ndef test_that_hangs():\n    time.sleep(60)\n\n\n"
        "def test_after_it():\n    pass\n"
    )
    out = _pytest(str(hung), "--timeout=2", f"--rootdir={tmp_path}", "-c", os.devnull)
    assert out.returncode == 1, out.stdout
    assert "Timeout" in out.stdout and "test_that_hangs" in out.stdout
    assert "1 failed, 1 passed" in out.stdout  # the run went on after the hung test
