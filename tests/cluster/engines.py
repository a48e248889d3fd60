"""Start and stop the real engines the cluster tests run on: a single-node Slurm and a local Ray.

Both are started by the test session (as root, as CI runs) in a temporary folder, and stopped by
the pids they were started with, never by name: other people's daemons on the machine are safe.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SLURM_CONF = """ClusterName=mpdistill-test
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ReturnToService=2
MaxArraySize=1001
KillWait=5
MinJobAge=5
SchedulerParameters=defer_batch=0
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:16
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge_running() -> bool:
    return subprocess.run(["munge", "-n"], capture_output=True).returncode == 0


def start_munge() -> int | None:
    """munged (shared by every Slurm on the machine); returns its pid if this call started it."""
    if _munge_running():
        return None
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run(["mungekey", "-c"], check=True, capture_output=True)
    for d in ("/run/munge", "/var/log/munge", "/var/lib/munge", "/etc/munge"):
        os.makedirs(d, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    shutil.chown("/etc/munge/munge.key", "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged", "--force"], check=True)
    for _ in range(50):
        if _munge_running():
            break
        time.sleep(0.1)
    pid_file = Path("/run/munge/munged.pid")
    return int(pid_file.read_text()) if pid_file.exists() else None


class Slurm:
    """slurmctld + slurmd with their own config, ports and state under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []

    def start(self, timeout: float = 60.0) -> "Slurm":
        for d in ("state", "spool"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(SLURM_CONF.format(host=host, root=self.root, cpus=os.cpu_count() or 1,
                                               ctld_port=_free_port(), d_port=_free_port()))
        self.munge_pid = start_munge()
        for daemon in ("slurmctld", "slurmd"):
            # In the foreground (-D), as children that die with the test session even if it is killed.
            proc = subprocess.Popen([daemon, "-D", "-f", str(self.conf)] + (["-i"] if daemon == "slurmctld" else []),
                                    env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.root / f"{daemon}.err", "ab"),
                                    preexec_fn=_die_with_parent)
            self.procs.append(proc)
        self._wait_idle(host, timeout)
        return self

    def _wait_idle(self, host: str, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-n", host, "-o", "%T"], env=self.env, capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip().rstrip("*") in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"Slurm node {host} did not come up; see {self.root}/slurmctld.log and slurmd.log")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.munge_pid:
            _kill(self.munge_pid)


class Ray:
    """`ray start --head` on 127.0.0.1 with its own temp folder; stopped through its pid files."""

    def __init__(self, root: Path, cpus: int = 8) -> None:
        self.root, self.cpus = root, cpus
        self.address: str | None = None
        self.proc: subprocess.Popen | None = None
        # No idle Python workers started ahead: on a small machine they cost more than they save.
        # On SIGTERM stop at once: Ray's default drains the node for up to 30 s first (for Serve).
        self.env = {**os.environ, "RAY_enable_worker_prestart": "0", "RAY_prestart_worker_first_driver": "0",
                    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}

    def start(self) -> "Ray":
        port = _free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        ray_bin = str(Path(sys.executable).with_name("ray"))
        self.proc = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={port}",
                                      "--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus}",
                                      "--include-dashboard=false", "--disable-usage-stats",
                                      f"--temp-dir={self.root}"],
                                     stdout=open(self.root / "ray.out", "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True, env=self.env)
        self.address = f"127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            probe = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='{self.address}'); "
                                    "ray.shutdown()"], capture_output=True, env=self.env)
            if probe.returncode == 0:
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(1)
        raise RuntimeError(f"Ray did not start; see {self.root}/ray.out")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)   # its own session: every Ray process it started
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)   # what SIGTERM left of the session
            except ProcessLookupError:
                pass


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent (the test session) dies (Linux prctl)."""
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
