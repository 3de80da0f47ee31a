"""Threads of the NequIP engine are passed explicitly, never inherited from the worker.

Measured bug (issue 15): a walker task set ``OMP_NUM_THREADS=1`` in its Parsl worker's own
environment, and every training started later by that worker ran nequip-train on one core of two.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from hillwalker.engines.dataset import read_frames, write_frames
from hillwalker.engines.nequip import ModelError, TrainSettings, train
from hillwalker.engines.nequip.threads import subprocess_env, torch_threads


def _child_running(name: str, timeout: float, alive: threading.Thread) -> int:
    """The PID of this process's child whose command line holds ``name`` (once it has exec'd)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            if ppid == os.getpid() and name in cmdline:
                return int(proc.name)
        assert alive.is_alive(), f"train() ended before {name} started"
        time.sleep(0.05)
    raise AssertionError(f"no {name} child within {timeout} s")


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("threads", [None, 3])
def test_training_process_gets_the_cores_given_not_the_inherited_setting(
    threads, mil53_frames_path, tmp_path, monkeypatch
):
    """Read from the running nequip-train: OMP_NUM_THREADS is ``threads``, or (None) every core
    this process may use, although the caller's environment says 1."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what an earlier walker task left behind
    data = tmp_path / "frames.extxyz"
    write_frames(data, read_frames(mil53_frames_path)[::8])
    settings = TrainSettings.from_template(None, epochs=50, num_features=8, num_layers=1)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            train(
                data,
                tmp_path / "m",
                settings=settings,
                device="cpu",
                compile=False,
                threads=threads,
            )
        except BaseException as exc:
            failures.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    pid = None
    try:
        pid = _child_running("nequip-train", timeout=180, alive=worker)
        environ = _environ(pid)
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGTERM)  # the check is done: no need to train
        worker.join(timeout=120)
    expected = threads if threads is not None else len(os.sched_getaffinity(0))
    assert environ["OMP_NUM_THREADS"] == str(expected)
    # the killed training made no model and said so
    assert len(failures) == 1 and isinstance(failures[0], ModelError), failures
    assert "nequip-train failed" in str(failures[0])
    assert not (tmp_path / "m/model.json").exists()


def test_thread_settings_are_explicit_and_do_not_leak(monkeypatch):
    """Subprocess environments and torch's threads: given or every core, never inherited; a
    scoped torch setting (evaluate's) is restored for whatever runs next in the process."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cores = len(os.sched_getaffinity(0))
    assert subprocess_env(None)["OMP_NUM_THREADS"] == str(cores)
    assert subprocess_env(3)["OMP_NUM_THREADS"] == "3"
    with pytest.raises(ModelError, match="threads must be >= 1"):
        subprocess_env(0)

    before = torch.get_num_threads()
    with torch_threads(None) as count:
        assert count == cores == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
