"""A real one-node SLURM cluster on localhost for tests: munged + slurmctld + slurmd.

Everything lives in one temporary directory (its own munge key and socket, slurm.conf, spool,
state, logs) and on free ports, so it touches neither /etc nor a SLURM the machine may already
run. ``stop()`` cancels every job, then stops each daemon by its PID and kills any job process
left behind (found by our SLURM_CONF in its environment), so nothing outlives the tests.

Needs root (slurmd must start job steps as their user; munged runs as the ``munge`` user) and the
Debian packages ``slurm-wlm`` and ``munge`` (``scripts/setup.sh --tests`` installs them).

    cluster = SlurmCluster.start()   # or the ``slurm_cluster`` fixture in conftest.py
    subprocess.run(["sinfo"], env=cluster.env)
    cluster.stop()
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "srun")
PARTITION = "debug"
#: CPUs slurmd announces. More than the real cores (config_overrides) so that a block per
#: task kind can run at once, and an idle block never holds up another kind's; tests here
#: check orchestration, not speed.
NODE_CPUS = 8


def why_unavailable() -> str | None:
    """Why this machine cannot run the cluster, or None if it can."""
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root (slurmd, munged as the munge user)"
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        return (
            f"SLURM/munge programs missing: {', '.join(missing)} "
            "(install with 'bash scripts/setup.sh --tests')"
        )
    try:
        import pwd

        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (install the Debian package munge)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(command: list[str], env: dict[str, str] | None = None, timeout: float = 30) -> str:
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _is_zombie(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return fields[0] == "Z"


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    env: dict[str, str]
    munge_pid_file: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    partition: str = PARTITION
    cpus: int = NODE_CPUS

    # ---- start -----------------------------------------------------------------------------

    @classmethod
    def start(cls, timeout: float = 60) -> SlurmCluster:
        problem = why_unavailable()
        if problem:
            raise RuntimeError(problem)
        # /tmp/pytest-of-root is 0700: the munge user could not reach its socket there
        root = Path(tempfile.mkdtemp(prefix="hillwalker-slurm-", dir="/tmp"))
        root.chmod(0o755)
        munge_dir = root / "munge"
        munge_dir.mkdir(mode=0o755)
        for sub in ("state", "spool", "log"):
            (root / sub).mkdir()
        conf = root / "slurm.conf"
        cluster = cls(
            root=root,
            conf=conf,
            env={**os.environ, "SLURM_CONF": str(conf)},
            munge_pid_file=munge_dir / "munged.pid",
        )
        try:
            cluster._start_munge(munge_dir)
            cluster._write_conf(munge_dir / "munge.socket")
            cluster._start_slurm()
            cluster._wait_idle(timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start_munge(self, munge_dir: Path) -> None:
        key = munge_dir / "munge.key"
        _run(["mungekey", "--create", f"--keyfile={key}"])
        shutil.chown(munge_dir, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        key.chmod(0o600)
        # munged daemonizes; its PID comes from the pid file (stop() kills that PID)
        _run(
            [
                "runuser",
                "-u",
                "munge",
                "--",
                "munged",
                f"--key-file={key}",
                f"--socket={munge_dir / 'munge.socket'}",
                f"--pid-file={self.munge_pid_file}",
                f"--log-file={munge_dir / 'munged.log'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
                "--force",  # /tmp is world-writable, which munged otherwise refuses
            ]
        )

    def _write_conf(self, munge_socket: Path) -> None:
        root = self.root
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        self.conf.write_text(
            f"""\
ClusterName=hillwalker
SlurmctldHost=localhost
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root / "log" / "jobcomp.txt"}
SchedulerType=sched/backfill
KillWait=2
MinJobAge=3600
InactiveLimit=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={max(1, memory_mb // 2)} \
State=UNKNOWN
PartitionName={self.partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
        )

    def _start_slurm(self) -> None:
        log = self.root / "log"
        for name, command in (
            ("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)]),
            ("slurmd", ["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)]),
        ):
            with (log / f"{name}.out").open("wb") as out:
                self.processes[name] = subprocess.Popen(
                    command, env=self.env, stdout=out, stderr=subprocess.STDOUT
                )

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited ({process.returncode}): {self.logs(name)}")
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                state = self.sinfo_state()
                if state.startswith("idle"):
                    return
            time.sleep(0.5)
        raise RuntimeError(f"node not idle after {timeout} s (state {state!r}): {self.logs()}")

    # ---- use ---------------------------------------------------------------------------------

    def run(self, *command: str, timeout: float = 30) -> str:
        """Run a SLURM client command against this cluster; its stdout."""
        return _run(list(command), env=self.env, timeout=timeout)

    def sinfo_state(self) -> str:
        return self.run("sinfo", "-h", "-N", "-o", "%T", timeout=10).strip()

    def jobs(self) -> dict[str, str]:
        """Job id → state of every job slurmctld still knows (finished ones for MinJobAge)."""
        out = self.run("squeue", "-h", "-t", "all", "-o", "%i %T")
        return dict(line.split() for line in out.splitlines() if line.strip())

    def job_info(self, job_id: str) -> str:
        return self.run("scontrol", "show", "job", job_id)

    def logs(self, name: str | None = None) -> str:
        names = [name] if name else ["slurmctld", "slurmd"]
        parts = []
        for n in names:
            for path in (self.root / "log" / f"{n}.log", self.root / "log" / f"{n}.out"):
                if path.is_file():
                    parts.append(f"--- {path}\n" + path.read_text()[-3000:])
        return "\n".join(parts)

    # ---- stop ----------------------------------------------------------------------------------

    def job_processes(self, name: str | None = None) -> list[int]:
        """PIDs of processes running in our jobs (optionally only those named ``name``)."""
        pids = self._job_processes()
        if name is None:
            return pids
        found = []
        for pid in pids:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                    found.append(pid)
            except OSError:
                continue
        return found

    def _job_processes(self) -> list[int]:
        """PIDs of processes started for our jobs (they carry our SLURM_CONF)."""
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        """Cancel all jobs, stop every daemon by PID, kill leftovers. Safe to call twice."""
        if self.processes.get("slurmctld") and self.processes["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):
                self.run("scancel", "--full", f"--partition={self.partition}", timeout=10)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    live = self.run("squeue", "-h", "-o", "%i", timeout=10).split()
                    if not live:
                        break
                    time.sleep(0.5)
        for name in ("slurmd", "slurmctld"):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        # slurmstepd and job scripts are not slurmd's children to wait for: end them by PID
        for pid in self._job_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.munge_pid_file.is_file():
            with contextlib.suppress(ValueError, ProcessLookupError):
                pid = int(self.munge_pid_file.read_text().strip())
                os.kill(pid, signal.SIGTERM)
                for _ in range(50):
                    os.kill(pid, 0)
                    if _is_zombie(pid):  # exited; PID 1 of a container may never reap it
                        break
                    time.sleep(0.1)
                else:
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def running_daemons(self) -> list[int]:
        """PIDs of our daemons still alive (for the check that nothing is left running)."""
        alive = [p.pid for p in self.processes.values() if p.poll() is None]
        alive += self._job_processes()
        return alive


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Start the cluster for trying things by hand; Ctrl-C (or SIGTERM) stops it (as root)."""
    # a handler, not a blocked mask: daemons inherit a blocked mask and would ignore SIGTERM;
    # and SIGINT may come in ignored (started in the background by a script)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    cluster = SlurmCluster.start()
    print(f"export SLURM_CONF={cluster.conf}   # then sinfo, sbatch, hillwalker run --site …")
    print(f"partition {cluster.partition}, {cluster.cpus} CPUs; Ctrl-C stops every daemon")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
