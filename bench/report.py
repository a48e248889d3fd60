"""The bench's report: the machine and versions, a table of figures, and bench/RESULTS.md."""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from notes import MISSES, SUGGESTIONS


def machine() -> dict:
    """Cores, memory, CPU model, kernel and the disk the data is on."""
    mem = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
    model = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    return {"cores": os.cpu_count(), "cores usable": len(os.sched_getaffinity(0)),
            "memory": f"{int(mem.group(1)) / 2**20:.1f} GiB" if mem else "?",
            "cpu": model.group(1).strip() if model else platform.processor() or "?",
            "kernel": platform.release()}


def versions(server) -> dict:
    """Versions of everything on the measured path."""
    import mpdistill
    from server import nginx_available
    usable, nginx = nginx_available()
    out = {"python": platform.python_version(), "openai": _dist("openai"),
           "mpdistill": getattr(mpdistill, "__version__", None) or _dist("mpdistill"),
           "nginx": nginx if usable else f"not usable ({nginx})"}
    if shutil.which("wrk"):
        probe = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        match = re.search(r"wrk (\S+)", probe.stdout + probe.stderr)
        out["wrk"] = match.group(1) if match else "?"
    else:
        out["wrk"] = "not installed"
    return out


def _dist(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def _value(v: float | None) -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def table(figures) -> list[str]:
    """The figures as a Markdown table."""
    lines = ["| workload | figure | value | unit | target | met | detail |",
             "| --- | --- | ---: | --- | --- | --- | --- |"]
    for f in figures:
        met = "" if f.met is None else ("yes" if f.met else "**NO**")
        lines.append(f"| {f.workload} | {f.name} | {_value(f.value)} | {f.unit} | {f.target} | {met} | {f.detail} |")
    return lines


def misses(figures) -> list[str]:
    """For every missed target: the figure, what limits it, what would move it."""
    lines, shown = [], {}
    for f in figures:
        if f.met is not False:
            continue
        key = next((k for k in sorted(MISSES, key=len, reverse=True) if f.key.startswith(k)), None)
        title = f"{f.workload}: {f.name}"
        lines += [f"### {title}", "", f"Measured **{_value(f.value)} {f.unit}** (target {f.target}). {f.detail}", ""]
        if key in shown:
            lines += [f"Same cause as \"{shown[key]}\" above.", ""]
        elif key:
            shown[key] = title
            lines += [f"*What limits it:* {MISSES[key]['limit']}", "",
                      f"*What would move it:* {MISSES[key]['move']}", ""]
        else:
            lines += ["*No analysis recorded for this figure yet.*", ""]
    return lines or ["Every target was met in this run."]


def write_results(path: Path, *, mode: str, started: float, server_line: str, ceiling, info: dict,
                  figures, notes: list[str], load: tuple[str, str], busy: dict) -> None:
    """bench/RESULTS.md: how the figures were taken, the figures, and the analysis of every miss."""
    lines = [f"# mpdistill benchmark results ({mode})", "",
             f"Made by `python bench/run.py{' --quick' if mode == 'quick' else ''}` on "
             f"{time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(started))} in "
             f"{time.time() - started:.0f} s. Regenerate it with the same command.", "",
             "## Machine and versions", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += [f"- load average (1 min) at start / end: {load[0]} / {load[1]} "
              "(other work on the machine skews timings)",
              "- CPUs busy (anyone's work) just before each workload: "
              + ", ".join(f"{k}: {v:.0%}" for k, v in busy.items()),
              f"- server: {server_line}"]
    if ceiling:
        lines.append(f"- server ceiling (wrk, no delay route, {ceiling['connections']} connections): "
                     f"{ceiling['rps']:,.0f} requests/s (`{ceiling['command']}`)")
    else:
        lines.append("- server ceiling: wrk not installed, not measured")
    lines += ["", "## Figures", ""] + table(figures) + ["", "## Missed targets", ""] + misses(figures)
    if SUGGESTIONS:
        lines += ["", "## Suggestions for code the bench does not own", ""] + [f"- {s}" for s in SUGGESTIONS]
    if notes:
        lines += ["", "## Notes", ""] + [f"```\n{n}\n```" if "\n" in n else f"- {n}" for n in notes]
    lines += ["", "## How each figure is taken", "", *HOW]
    lines += _kept_sections(path)
    path.write_text("\n".join(lines) + "\n")


# Sections other benchmarks write into RESULTS.md (bench/batch.py); a full run keeps them.
_KEPT = ("## Batch mode (--via batch)", "## Cluster (bench/cluster.py)")


def _kept_sections(path: Path) -> list[str]:
    old = path.read_text() if path.exists() else ""
    kept = []
    for title in _KEPT:
        if title in old:
            start = old.index(title)
            end = old.find("\n## ", start + len(title))
            kept += ["", old[start:end if end >= 0 else len(old)].rstrip()]
    return kept


def print_table(figures) -> None:
    print()
    for line in table(figures):
        print(line)
    sys.stdout.flush()


HOW = [
    "1. **Latency-bound**: 3,000 rows, the server answers after 200 ms; `-p 64` and `-p 8 -c 8` (64 in "
    "flight). Ideal = in flight ÷ delay = 320 rows/s. *Steady* = least-squares slope of row count over "
    "the output's `processed_at` stamps, for the rows between 10% and 90% (a slope, because rows finish "
    "in waves of 64 and a span cut mid-wave is off by a wave); *first→last* = all rows over the first "
    "to last stamp; *whole command* = rows ÷ wall time of the CLI (start-up and shutdown included); "
    "*÷ what wrk gets* = steady ÷ (64 ÷ wrk's mean latency on the same route with 64 connections), "
    "since the server overshoots its own delay by a little.",
    "2. **Overhead**: 5,000 rows at no delay, 64 in flight; every row is fsynced before it counts. CPU = "
    "user + system of the whole process tree (`getrusage(RUSAGE_CHILDREN)` around the CLI; workers are "
    "reaped by the manager, so their time rolls up). The baseline is `bench/baseline_pool.py` "
    "(multiprocessing.Pool(64), imap, one SDK client per process, write + flush each line, no fsync).",
    "3. **Rate-limited**: nginx `limit_req` at R r/s (burst 5, nodelay, 429 + `Retry-After: 1` above it); "
    "mpdistill gets `--rpm` 3R×60 and `-p 8 -c 8`. The 429 share counts the access log's statuses "
    "for this run (or the mock's counters in fallback).",
    "4. **Resume**: a 1,000,000-row input whose first 999,000 rows are already in the output (lines "
    "in `Runner._result_record`'s format), once with no checkpoint (the output is scanned) and once "
    "with a checkpoint made by `CheckpointManager` (watermark at 999,001, input position, output offset, "
    "input and config fingerprints). Figure: wall time of the CLI until it exits, all rows done.",
    "5. **Checkpoint cost**: `CheckpointManager.save()` (pickle, temp file, fsync, rename, fsync dir) "
    "with 1k, 100k and 1M rows done and 32 sparse keys above the watermark; median of N saves.",
    "6. **Memory**: inputs of 500,000 and 2,000,000 rows (the whole file is the input; `--limit` "
    "processes a prefix), `-p 8 -c 8`, no delay, then the 2M input with `-p 64`. /proc is sampled "
    "every 0.1 s: the manager's "
    "VmHWM, the sum of VmRSS over the tree, and the sum of Pss (smaps_rollup, every 0.5 s); RSS "
    "counts pages shared by forked workers once per process, Pss splits them.",
]
