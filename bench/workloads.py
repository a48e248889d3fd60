"""The six bench workloads; each runs mpdistill (or its parts) and returns its figures.

1 latency-bound, 2 overhead (+ the plain-Pool baseline), 3 rate-limited, 4 resume,
5 checkpoint cost, 6 memory. Sizes come from `Sizes` (full or --quick).
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import data
import measure
import server as server_mod

from mpdistill.state.checkpoint import CheckpointManager

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-bench-0001"


@dataclass(frozen=True)
class Sizes:
    """How big each workload is."""

    latency_rows: int = 3000
    latency_delay_ms: int = 200
    overhead_rows: int = 5000
    rate_rps: int = 50
    rate_rows: int = 1500
    resume_rows: int = 1_000_000
    resume_todo: int = 1000
    checkpoint_points: tuple[int, ...] = (1_000, 100_000, 1_000_000)
    checkpoint_repeats: int = 50
    memory_inputs: tuple[int, ...] = (500_000, 2_000_000)
    memory_limit: int = 20_000
    wrk_seconds: float = 5.0
    flight_rows: int = 20_000         # 7: thousands in flight
    flight_delay_ms: int = 2000
    strict_rates: tuple[int, ...] = (20, 50)   # 8: strict limiter
    strict_seconds: float = 20.0
    rise_rate: int = 20               # 9: a limit that doubles
    rise_after_s: float = 30.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(latency_rows=2000, overhead_rows=2000, rate_rows=500, resume_rows=1_000_000,
                   checkpoint_repeats=15, memory_limit=4000, wrk_seconds=2.0, flight_rows=6000,
                   strict_seconds=10.0, rise_after_s=20.0)


@dataclass
class Figure:
    """One number the bench reports, with its target (if it has one)."""

    workload: str
    name: str
    value: float | None
    unit: str
    target: str = ""
    met: bool | None = None
    detail: str = ""
    key: str = ""


@dataclass
class Bench:
    """Where a bench run works: the server, the scratch folder, the sizes, and what it found."""

    server: object
    work: Path
    sizes: Sizes
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: bool = False
    busy: dict = field(default_factory=dict)   # workload → CPU share others used just before it

    def add(self, *figures: Figure) -> None:
        for f in figures:
            self.figures.append(f)
            shown = "n/a" if f.value is None else f"{f.value:,.3f}".rstrip("0").rstrip(".")
            verdict = "" if f.met is None else ("  [met]" if f.met else "  [MISSED]")
            print(f"  {f.workload:<16} {f.name:<48} {shown:>12} {f.unit:<10} {f.target}{verdict}", flush=True)

    def fresh(self, name: str) -> Path:
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def input(self, rows: int) -> Path:
        return data.write_input(self.work / "inputs" / f"input-{rows}.jsonl", rows)


def env() -> dict:
    """The environment for a child run: no real keys or endpoints from the caller's shell."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MPDISTILL_"))}
    out["PYTHONPATH"] = str(ROOT) + os.pathsep + out.get("PYTHONPATH", "")
    return out


def mpdistill_cmd(input_path: Path, run_dir: Path, base_url: str, p: int, c: int, *extra: str,
                  prefix: tuple[str, ...] = ("-m", "mpdistill")) -> list[str]:
    return [sys.executable, *prefix, "-i", str(input_path), "-o", str(run_dir / "out.jsonl"),
            "-m", data.MODEL, "--base-url", base_url, "--api-key", KEY, "-p", str(p), "-c", str(c),
            "--no-progress", "--checkpoint-dir", str(run_dir / "checkpoints"),
            "--log-dir", str(run_dir / "logs"), *extra]


def run_mpdistill(b: Bench, input_path: Path, run_dir: Path, base_url: str, p: int, c: int, *extra: str,
                  sample: bool = False, expect: int | None = None) -> measure.Run:
    """Run the CLI as a user would; a failed run or a short output is a bench error."""
    r = measure.run(mpdistill_cmd(input_path, run_dir, base_url, p, c, *extra), cwd=run_dir, env=env(),
                    sample=sample)
    lines = _lines(run_dir / "out.jsonl")
    r.extra["lines"] = lines
    if r.rc != 0 or (expect is not None and lines != expect):
        raise RuntimeError(f"mpdistill exited {r.rc} with {lines} output lines (expected {expect}):\n"
                           f"{r.output[-3000:]}")
    return r


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _ratio(value: float | None, ideal: float | None) -> float | None:
    return None if value is None or not ideal else value / ideal


def _server_rate(b: Bench, delay_ms: int, connections: int) -> float | None:
    """What the server itself sustains on the delay route: connections ÷ wrk's mean latency
    (the server's own overshoot of the delay is not mpdistill's)."""
    w = server_mod.wrk_ceiling(b.server.url(delay_ms), seconds=3, connections=connections, threads=1)
    if not w or not w["latency_ms"]:
        return None
    return connections / (w["latency_ms"] / 1000)


# ---- 1. latency-bound -------------------------------------------------------------------------


def latency_bound(b: Bench) -> None:
    """3,000 rows against a 200 ms server: rows/s over in-flight/delay, steady and whole."""
    s = b.sizes
    input_path = b.input(s.latency_rows)
    server_rate = _server_rate(b, s.latency_delay_ms, 64)
    for p, c in ((64, 1), (8, 8)):
        run_dir = b.fresh(f"w1-p{p}c{c}")
        r = run_mpdistill(b, input_path, run_dir, b.server.url(s.latency_delay_ms), p, c, expect=s.latency_rows)
        rt = measure.rates(measure.stamps(run_dir / "out.jsonl"))
        ideal = p * c / (s.latency_delay_ms / 1000)
        tag, wl = f"-p {p} -c {c}", "1 latency-bound"
        steady = _ratio(rt.steady, ideal)
        b.add(Figure(wl, f"{tag}: steady rows/s ÷ ideal {ideal:.0f}", steady, "ratio", "≥ 0.98",
                     steady is not None and steady >= 0.98, f"{rt.steady or 0:.1f} rows/s", key=f"w1-steady-{p}x{c}"),
              Figure(wl, f"{tag}: steady rows/s ÷ what wrk gets from this route", _ratio(rt.steady, server_rate),
                     "ratio", detail=f"wrk: {server_rate:.1f} r/s (64 connections ÷ its mean latency)"
                     if server_rate else "wrk not installed"),
              Figure(wl, f"{tag}: first→last row rows/s ÷ ideal", _ratio(rt.first_to_last, ideal), "ratio"),
              Figure(wl, f"{tag}: whole command rows/s ÷ ideal", s.latency_rows / r.wall_s / ideal, "ratio",
                     detail=f"wall {r.wall_s:.2f} s"))


# ---- 2. overhead ------------------------------------------------------------------------------


def overhead(b: Bench) -> None:
    """5,000 rows, no server delay, 64 in flight: rows/s and CPU per 1,000 rows; then the baseline."""
    s = b.sizes
    input_path = b.input(s.overhead_rows)
    wl, best = "2 overhead", 0.0
    for p, c in ((64, 1), (8, 8)):
        run_dir = b.fresh(f"w2-p{p}c{c}")
        r = run_mpdistill(b, input_path, run_dir, b.server.url(0), p, c, expect=s.overhead_rows)
        rt = measure.rates(measure.stamps(run_dir / "out.jsonl"))
        tag = f"-p {p} -c {c}"
        whole = s.overhead_rows / r.wall_s
        best = max(best, whole) if p == 64 else best
        b.add(Figure(wl, f"{tag}: steady rows/s (every row fsynced)", rt.steady, "rows/s", "≥ 900",
                     rt.steady is not None and rt.steady >= 900, key=f"w2-steady-{p}x{c}"),
              Figure(wl, f"{tag}: whole command rows/s", whole, "rows/s", detail=f"wall {r.wall_s:.2f} s"),
              Figure(wl, f"{tag}: CPU s per 1,000 rows (process tree)", r.cpu_s / s.overhead_rows * 1000, "s"))
    _baseline(b, input_path, best)
    if b.profile:
        _profile_manager(b, input_path)


def _baseline(b: Bench, input_path: Path, mpdistill_rows_s: float) -> None:
    s, wl = b.sizes, "2 overhead"
    run_dir = b.fresh("w2-baseline")
    out = run_dir / "out.jsonl"
    cmd = [sys.executable, str(ROOT / "bench" / "baseline_pool.py"), str(input_path), str(out),
           "--base-url", b.server.url(0), "--model", data.MODEL, "-p", "64"]
    r = measure.run(cmd, cwd=run_dir, env=env())
    if r.rc != 0:
        raise RuntimeError(f"baseline failed ({r.rc}):\n{r.output[-3000:]}")
    rt = measure.rates(measure.stamps(out))
    whole = s.overhead_rows / r.wall_s
    b.add(Figure(wl, "baseline Pool(64)+SDK: steady rows/s (no fsync)", rt.steady, "rows/s"),
          Figure(wl, "baseline: whole command rows/s", whole, "rows/s", detail=f"wall {r.wall_s:.2f} s"),
          Figure(wl, "baseline: CPU s per 1,000 rows", r.cpu_s / s.overhead_rows * 1000, "s"),
          Figure(wl, "mpdistill -p 64 ÷ baseline (whole command)", mpdistill_rows_s / whole, "ratio"))


def _profile_manager(b: Bench, input_path: Path) -> None:
    """cProfile of the manager process for the -p 64 overhead run: where its time goes."""
    import pstats
    run_dir = b.fresh("w2-profile")
    prof = run_dir / "manager.prof"
    cmd = mpdistill_cmd(input_path, run_dir, b.server.url(0), 64, 1,
                        prefix=("-m", "cProfile", "-o", str(prof), "-m", "mpdistill"))
    r = measure.run(cmd, cwd=run_dir, env=env())
    if r.rc != 0 or not prof.exists():
        b.notes.append(f"manager profile failed: {r.output[-500:]}")
        return
    stats = pstats.Stats(str(prof))
    total = stats.total_tt
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:15]
    lines = [f"cProfile of the manager, -p 64, {b.sizes.overhead_rows} rows at no delay "
             f"(total {total:.2f} s, wall {r.wall_s:.2f} s); top self time:"]
    for (fname, line, func), (cc, nc, tt, ct, _) in rows:
        lines.append(f"    {tt:7.3f} s self {ct:7.3f} s cum {nc:>8} calls  {Path(fname).name}:{line} {func}")
    b.notes.append("\n".join(lines))


# ---- 3. rate-limited --------------------------------------------------------------------------


def rate_limited(b: Bench) -> None:
    """A server that allows R r/s (429 above, with Retry-After); mpdistill told --rpm 3R×60."""
    s, wl = b.sizes, "3 rate-limited"
    input_path = b.input(s.rate_rows)
    run_dir = b.fresh("w3-rate")
    mark = b.server.mark_log()
    r = run_mpdistill(b, input_path, run_dir, b.server.rate_url(), 8, 8, "--rpm", str(3 * s.rate_rps * 60),
                      expect=s.rate_rows)
    time.sleep(0.2)  # let the server finish logging the last requests
    counts = b.server.status_counts("/rl/", since=mark)
    _rate_timeline(b, b.server.status_log("/rl/", since=mark))
    total = sum(counts.values())
    share = counts.get(429, 0) / total if total else None
    rt = measure.rates(measure.stamps(run_dir / "out.jsonl"))
    steady = _ratio(rt.steady, s.rate_rps)
    b.add(Figure(wl, f"steady ok rows/s ÷ R ({s.rate_rps} r/s)", steady, "ratio", "≥ 0.95",
                 steady is not None and steady >= 0.95, f"{rt.steady or 0:.1f} rows/s", key="w3-rate"),
          Figure(wl, "share of requests answered 429", None if share is None else 100 * share, "%", "≤ 2 %",
                 share is not None and share <= 0.02, f"{counts.get(429, 0)} of {total} requests", key="w3-429"),
          Figure(wl, "whole command rows/s ÷ R", s.rate_rows / r.wall_s / s.rate_rps, "ratio",
                 detail=f"wall {r.wall_s:.2f} s"))


def _rate_timeline(b: Bench, log: list[tuple[int, float]]) -> None:
    """Per second of the run: requests answered 200 / 429 (where the server logs them)."""
    if not log:
        return
    start = min(t for _, t in log)
    seconds: dict[int, list[int]] = {}
    for status, t in log:
        counts = seconds.setdefault(int(t - start), [0, 0])
        counts[status == 429] += 1
    cells = [f"{sec}s {ok}/{limited}" for sec, (ok, limited) in sorted(seconds.items())]
    b.notes.append("rate-limited, server log per second (200/429): " + ", ".join(cells))


# ---- 4. resume --------------------------------------------------------------------------------


def resume(b: Bench) -> None:
    """A 1M-row input with all but 1,000 rows in the output: time to finish, without and with a
    checkpoint, and with an output another tool wrote (read by id, matched to the input)."""
    s, wl = b.sizes, "4 resume"
    done = s.resume_rows - s.resume_todo
    input_path = b.input(s.resume_rows)
    run_dir = b.fresh("w4-resume")
    out = run_dir / "out.jsonl"
    t0 = time.perf_counter()
    size = data.write_output(out, done)
    b.notes.append(f"resume: wrote {done:,} output lines ({size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
    for label, with_ckpt in (("output scan only (no checkpoint)", False), ("with checkpoint", True)):
        _reset_run(run_dir, out, size)
        data.write_job_record(input_path, out)
        if with_ckpt:
            data.write_checkpoint(run_dir / "checkpoints", input_path, out, done)
        # A real resume finds its output long on disk; without this the run's first fsync would
        # also write back the 400 MB the bench itself just generated.
        os.sync()
        r = run_mpdistill(b, input_path, run_dir, b.server.url(0), 8, 8, expect=s.resume_rows)
        b.add(Figure(wl, f"{label}: s to finish the last {s.resume_todo:,}", r.wall_s, "s", "≤ 2 s",
                     r.wall_s <= 2.0, f"-p 8 -c 8, {s.resume_rows:,} rows",
                     key=f"w4-{'ckpt' if with_ckpt else 'scan'}"))
    foreign = run_dir / "foreign.jsonl"
    data.write_foreign_output(foreign, done)
    os.replace(foreign, out)
    _reset_run(run_dir, out, out.stat().st_size)
    os.sync()
    r = run_mpdistill(b, input_path, run_dir, b.server.url(0), 8, 8, expect=s.resume_rows)
    b.add(Figure(wl, f"another tool's output (by id): s to finish the last {s.resume_todo:,}", r.wall_s, "s",
                 "", None, f"-p 8 -c 8, {s.resume_rows:,} rows, only the {s.resume_todo:,} sent",
                 key="w4-foreign"))


def _reset_run(run_dir: Path, out: Path, size: int) -> None:
    """Back to `size` bytes of output, no errors file, no checkpoint, no status."""
    with open(out, "r+b") as f:
        f.truncate(size)
    for path in run_dir.iterdir():
        if path != out:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


# ---- 5. checkpoint cost -----------------------------------------------------------------------


def checkpoint_cost(b: Bench) -> None:
    """CheckpointManager.save at 1k, 100k and 1M rows done (64 in flight above the watermark)."""
    s, wl = b.sizes, "5 checkpoint"
    run_dir = b.fresh("w5-checkpoint")
    medians = {}
    for n in s.checkpoint_points:
        ckpt = _checkpoint_at(run_dir, n)
        times = []
        for _ in range(s.checkpoint_repeats):
            t0 = time.perf_counter()
            ckpt.save()
            times.append((time.perf_counter() - t0) * 1000)
        medians[n] = statistics.median(times)
        p90 = sorted(times)[int(len(times) * 0.9) - 1]
        last = n == s.checkpoint_points[-1]
        b.add(Figure(wl, f"save at {n:,} rows done: median", medians[n], "ms", "≤ 5 ms" if last else "",
                     medians[n] <= 5.0 if last else None,
                     f"p90 {p90:.2f} ms, file {ckpt.path.stat().st_size} B", key=f"w5-{n}"))
    lo, hi = medians[s.checkpoint_points[0]], medians[s.checkpoint_points[-1]]
    b.add(Figure(wl, f"flatness: median at {s.checkpoint_points[-1]:,} ÷ at {s.checkpoint_points[0]:,}",
                 hi / lo, "ratio", "≤ 1.5 (flat)", hi / lo <= 1.5, key="w5-flat"))


def _checkpoint_at(run_dir: Path, n: int) -> CheckpointManager:
    """A checkpoint with n rows done: a watermark, and every other row of the last 64 in flight."""
    ckpt = CheckpointManager(save_interval=10, name=f"at-{n}", directory=run_dir)
    below = n - 32
    for key in range(1, below + 1):
        ckpt.mark_done(key)
    for key in range(below + 2, below + 66, 2):
        ckpt.mark_done(key)
    ckpt.output_offset = n * 400
    return ckpt


# ---- 6. memory --------------------------------------------------------------------------------


def memory(b: Bench) -> None:
    """Peak RSS of the manager and of the whole tree, on a 500k and a 2M input (a prefix processed)."""
    s, wl = b.sizes, "6 memory"
    peaks = {}
    for rows in s.memory_inputs:
        input_path = b.input(rows)
        run_dir = b.fresh(f"w6-{rows}")
        r = run_mpdistill(b, input_path, run_dir, b.server.url(0), 8, 8, "--limit", str(s.memory_limit),
                          sample=True, expect=s.memory_limit)
        m = r.memory
        peaks[rows] = m.manager_hwm
        big = rows == s.memory_inputs[-1]
        b.add(Figure(wl, f"{rows:,}-row input: manager peak RSS (VmHWM)", m.manager_hwm, "MB",
                     "≤ 150 MB", m.manager_hwm <= 150, f"--limit {s.memory_limit:,}, -p 8 -c 8",
                     key=f"w6-manager-{rows}"),
              Figure(wl, f"{rows:,}-row input: tree RSS sum ({m.processes} processes)", m.tree_rss, "MB"),
              Figure(wl, f"{rows:,}-row input: tree PSS sum", m.tree_pss, "MB",
                     detail="" if m.tree_pss is not None else "smaps_rollup not readable"))
        if big:
            lo = peaks[s.memory_inputs[0]]
            b.add(Figure(wl, f"flatness: manager peak {rows:,} ÷ {s.memory_inputs[0]:,}", m.manager_hwm / lo,
                         "ratio", "≤ 1.10 (flat)", m.manager_hwm / lo <= 1.10, key="w6-flat"))
    _memory_default_pool(b)


def _memory_default_pool(b: Bench) -> None:
    """The same on the largest input with the default pool (-p 64): what 64 forked workers cost."""
    s, wl = b.sizes, "6 memory"
    rows = s.memory_inputs[-1]
    run_dir = b.fresh("w6-p64")
    r = run_mpdistill(b, b.input(rows), run_dir, b.server.url(0), 64, 1, "--limit", str(s.memory_limit),
                      sample=True, expect=s.memory_limit)
    m = r.memory
    b.add(Figure(wl, f"-p 64, {rows:,}-row input: manager peak RSS (VmHWM)", m.manager_hwm, "MB"),
          Figure(wl, f"-p 64: tree RSS sum ({m.processes} processes)", m.tree_rss, "MB"),
          Figure(wl, "-p 64: tree PSS sum", m.tree_pss, "MB", "≤ 400 MB",
                 m.tree_pss is not None and m.tree_pss <= 400,
                 detail=f"{(m.tree_pss or 0) / max(1, m.processes - 1):.1f} MB per process" if m.tree_pss else "",
                 key="w6-p64-pss"))
