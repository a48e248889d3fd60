"""Measuring a command: wall time, CPU of its whole process tree, memory of the manager and its workers,
and row rates read back from the output file's `processed_at` stamps.

Linux /proc only; no psutil.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

MB_PER_KB = 1024 / 1e6


@dataclass
class Memory:
    """What was seen of a process tree while it ran: memory peaks in MB (10^6 bytes), CPU per process."""

    root: int = 0                  # the manager's pid
    manager_rss: float = 0.0       # highest VmRSS sample of the manager
    manager_hwm: float = 0.0       # the manager's own VmHWM (kernel-kept peak), last value read
    tree_rss: float = 0.0          # highest sum of VmRSS over manager + workers (counts shared pages 65×)
    tree_pss: float | None = None  # highest sum of Pss (shared pages split between sharers), if readable
    processes: int = 0             # most processes seen in the tree at once
    cpu_by_pid: dict = field(default_factory=dict)   # pid -> last CPU seconds seen (user + system)

    @property
    def manager_cpu(self) -> float:
        """CPU seconds of the manager process (as last sampled)."""
        return self.cpu_by_pid.get(self.root, 0.0)

    @property
    def workers_cpu(self) -> float:
        """CPU seconds of every other process of the tree (as last sampled)."""
        return sum(v for pid, v in self.cpu_by_pid.items() if pid != self.root)


@dataclass
class Run:
    """What one command did."""

    cmd: list[str]
    rc: int
    wall_s: float
    cpu_s: float                    # user + system of the command and every descendant it reaped
    output: str
    memory: Memory | None = None
    extra: dict = field(default_factory=dict)


def _status_kb(pid: int, fields: tuple[str, ...]) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in fields:
                    out[name] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _pss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` so far (threads included), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def descendants(root: int) -> list[int]:
    """`root` and every process below it (one pass over /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


class TreeSampler:
    """Samples the memory of a process tree from a thread until stopped."""

    def __init__(self, pid: int, every_s: float = 0.1, pss_every_s: float = 0.5) -> None:
        self.pid = pid
        self.every_s, self.pss_every_s = every_s, pss_every_s
        self.memory = Memory(root=pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def stop(self) -> Memory:
        self._stop.set()
        self._thread.join()
        return self.memory

    def _run(self) -> None:
        pss_at = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            self._sample(with_pss=now - pss_at >= self.pss_every_s)
            if now - pss_at >= self.pss_every_s:
                pss_at = now
            self._stop.wait(self.every_s)

    def _sample(self, with_pss: bool) -> None:
        m = self.memory
        own = _status_kb(self.pid, ("VmRSS", "VmHWM"))
        if not own:
            return
        m.manager_rss = max(m.manager_rss, own.get("VmRSS", 0) * MB_PER_KB)
        m.manager_hwm = max(m.manager_hwm, own.get("VmHWM", 0) * MB_PER_KB)
        tree = descendants(self.pid)
        m.processes = max(m.processes, len(tree))
        for pid in tree:
            cpu = cpu_seconds(pid)
            if cpu is not None:
                m.cpu_by_pid[pid] = cpu
        m.tree_rss = max(m.tree_rss, sum(_status_kb(p, ("VmRSS",)).get("VmRSS", 0) for p in tree) * MB_PER_KB)
        if with_pss:
            pss = [_pss_kb(p) for p in tree]
            if all(v is not None for v in pss):
                m.tree_pss = max(m.tree_pss or 0.0, sum(pss) * MB_PER_KB)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str], *, cwd: Path | None = None, env: dict | None = None, sample: bool = False,
        timeout: float = 900) -> Run:
    """Run `cmd` to the end; CPU is that of its whole tree (workers are reaped by the manager,
    so their time rolls up into ours when we reap it)."""
    return finish(start(cmd, cwd=cwd, env=env, sample=sample), cmd, timeout=timeout)


@dataclass
class Started:
    """A command started by `start`, to be ended by `finish`."""

    proc: subprocess.Popen
    cpu0: float
    t0: float
    sampler: TreeSampler | None


def start(cmd: list[str], *, cwd: Path | None = None, env: dict | None = None, sample: bool = False) -> Started:
    """Start `cmd` (the bench does something while it runs), measured from now."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return Started(proc, cpu0, t0, TreeSampler(proc.pid).start() if sample else None)


def finish(started: Started, cmd: list[str], timeout: float = 900) -> Run:
    """Wait for a command from `start` to end; its wall time, CPU and memory."""
    proc = started.proc
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    wall = time.perf_counter() - started.t0
    memory = started.sampler.stop() if started.sampler else None
    return Run(cmd, proc.returncode, wall, _children_cpu() - started.cpu0,
               out.decode("utf-8", "replace"), memory)


@dataclass(frozen=True)
class Rates:
    """Row rates from the `processed_at` stamps of an output file."""

    rows: int
    steady: float | None         # rows/s: fitted over the rows between 10% and 90% (see `rates`)
    first_to_last: float | None  # rows/s from the first row to the last


def stamps(path: Path, field_name: str = "processed_at") -> list[float]:
    """The `processed_at` times (epoch seconds) of every line of `path`, sorted."""
    out = []
    with open(path, "rb") as f:
        for line in f:
            value = json.loads(line).get(field_name)
            if value:
                out.append(datetime.fromisoformat(value).timestamp())
    return sorted(out)


def rates(times: list[float], lo: float = 0.10, hi: float = 0.90) -> Rates:
    """Steady and first-to-last rates of sorted completion times.

    The steady rate is the least-squares slope of row count over time for the rows between 10%
    and 90%, not (rows ÷ span) between two stamps: with -c 8 against a fixed delay, rows finish
    in waves of 64, and a span that starts or ends mid-wave is off by up to a wave, while the fit
    averages over every row of the window (on 47 waves, within 0.1% of the true rate).
    """
    n = len(times)
    if n < 10:
        return Rates(n, None, None)
    whole = (n - 1) / (times[-1] - times[0]) if times[-1] > times[0] else None
    return Rates(n, _slope(times[int(n * lo):int(n * hi)]), whole)


def _slope(times: list[float]) -> float | None:
    """Least-squares slope of i against times[i]: rows per second."""
    n = len(times)
    mean_t, mean_i = sum(times) / n, (n - 1) / 2
    var = sum((t - mean_t) ** 2 for t in times)
    if var <= 0:
        return None
    return sum((t - mean_t) * (i - mean_i) for i, t in enumerate(times)) / var


def loadavg() -> str:
    """The 1-minute load average: others' work on this machine skews every timing."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def _cpu_times() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)   # idle + iowait, total


def busy(interval_s: float = 1.0) -> float:
    """Share of all CPUs busy over the next `interval_s` (anyone's work, ours included)."""
    idle0, total0 = _cpu_times()
    time.sleep(interval_s)
    idle1, total1 = _cpu_times()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(max_wait_s: float, threshold: float = 0.25) -> float:
    """Wait (up to `max_wait_s`) until the machine is mostly idle; returns the last busy share seen.

    On a shared machine another job's tests halve every wall-clock figure; waiting for a quiet
    moment is the cheapest way to keep the figures about mpdistill.
    """
    deadline = time.monotonic() + max_wait_s
    share = busy()
    while share > threshold and time.monotonic() < deadline:
        share = busy()
    return share
