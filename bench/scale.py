"""The workloads of issue 14: thousands in flight, a strict limiter, a limit that rises, start-up,
the default pool's memory, the overhead against the baseline and CPU per 1,000 rows in each mode.

7 in flight (async and process), 8 strict limiter, 9 rising limit, 10 start-up, 11 memory -p 64,
12 overhead and CPU per mode. Sizes come from `workloads.Sizes`.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import measure
from workloads import Bench, Figure, ROOT, _lines, _ratio, env, mpdistill_cmd, run_mpdistill

MODES = ("process", "thread", "async")
# (mode, -p, -c) holding 64 in flight in each mode, for the overhead and CPU figures
OVERHEAD_SHAPES = (("process", 64, 1), ("process", 8, 8), ("thread", 1, 64), ("async", 2, 32), ("async", 1, 64))


def _mode_flags(mode: str, p: int, c: int) -> tuple[str, ...]:
    return ("--mode", mode) if mode != "process" else ()


# ---- 7. thousands in flight -------------------------------------------------------------------


def in_flight(b: Bench) -> None:
    """20,000 rows against a 2 s server: 2,048 in flight in async mode, 1,024 in process mode."""
    s, wl = b.sizes, "7 in flight"
    input_path = b.input(s.flight_rows)
    url = b.server.url(s.flight_delay_ms)
    for mode, p, c, pss_target in (("async", 2, 1024, 250.0), ("process", 64, 16, None)):
        run_dir = b.fresh(f"w7-{mode}")
        r = run_mpdistill(b, input_path, run_dir, url, p, c, *_mode_flags(mode, p, c), "--timeout", "60",
                          sample=True, expect=s.flight_rows)
        ideal = p * c / (s.flight_delay_ms / 1000)
        rt = measure.rates(measure.stamps(run_dir / "out.jsonl"))
        steady = _ratio(rt.steady, ideal)
        tag = f"--mode {mode} -p {p} -c {c}"
        b.add(Figure(wl, f"{tag}: steady rows/s ÷ ideal {ideal:,.0f}", steady, "ratio", "≥ 0.95",
                     steady is not None and steady >= 0.95, f"{rt.steady or 0:,.1f} rows/s", key=f"w7-{mode}"))
        pss = r.memory.tree_pss
        b.add(Figure(wl, f"{tag}: tree PSS ({r.memory.processes} processes)", pss, "MB",
                     f"≤ {pss_target:.0f} MB" if pss_target else "",
                     (pss is not None and pss <= pss_target) if pss_target else None,
                     f"tree RSS {r.memory.tree_rss:,.0f} MB", key=f"w7-pss-{mode}"))


# ---- 8. strict limiter ------------------------------------------------------------------------


def strict_limiter(b: Bench) -> None:
    """nginx limit_req without burst at R = 20 and 50 r/s, --rpm 3R×60, -p 64 shapes in every mode."""
    s, wl = b.sizes, "8 strict limiter"
    for rate in s.strict_rates:
        input_path = b.input(int(rate * s.strict_seconds))
        for mode, p, c in (("process", 64, 1), ("thread", 1, 64), ("async", 2, 32)):
            run_dir = b.fresh(f"w8-{rate}-{mode}")
            route = f"strict{rate}"
            mark = b.server.mark_log()
            r = run_mpdistill(b, input_path, run_dir, b.server.strict_url(route), p, c, *_mode_flags(mode, p, c),
                              "--rpm", str(3 * rate * 60), expect=int(rate * s.strict_seconds))
            time.sleep(0.2)
            log = b.server.status_log(f"/{route}/", since=mark)
            share = sum(1 for st, _ in log if st == 429) / len(log) if log else None
            rt = measure.rates(measure.stamps(run_dir / "out.jsonl"))
            steady = _ratio(rt.steady, rate)
            tag = f"R={rate} --mode {mode} -p {p} -c {c}"
            b.add(Figure(wl, f"{tag}: steady ok rows/s ÷ R", steady, "ratio", "≥ 0.95",
                         steady is not None and steady >= 0.95, f"{rt.steady or 0:.1f} rows/s, wall {r.wall_s:.1f} s",
                         key=f"w8-{rate}-{mode}"),
                  Figure(wl, f"{tag}: share answered 429", None if share is None else 100 * share, "%", "≤ 2 %",
                         share is not None and share <= 0.02, f"{len(log)} requests", key=f"w8-429-{rate}-{mode}"))
            b.notes.append(f"strict R={rate} {mode}: " + per_second(log))


def per_second(log: list[tuple[int, float]]) -> str:
    """Per second of a run: requests answered 200 / 429 (where the server logs them)."""
    if not log:
        return "(no server log)"
    start = min(t for _, t in log)
    seconds: dict[int, list[int]] = {}
    for status, t in log:
        counts = seconds.setdefault(int(t - start), [0, 0])
        counts[status == 429] += 1
    return ", ".join(f"{sec}s {ok}/{limited}" for sec, (ok, limited) in sorted(seconds.items()))
