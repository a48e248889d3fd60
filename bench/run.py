"""Run every mpdistill benchmark, print a table of figures and write bench/RESULTS.md.

    python bench/run.py            # full (< 15 min on 2 cores)
    python bench/run.py --quick    # short (< 3 min)
    python bench/run.py --only 2,5 # some workloads (RESULTS.md is written only for a full set)

The server is nginx with its echo module on 127.0.0.1 (`apt-get install -y nginx
libnginx-mod-http-echo wrk`); without it the built-in mock server stands in, and the output says so.
Generated data goes to bench/out/ (git-ignored) and is removed afterwards unless --keep.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import measure  # noqa: E402
import report  # noqa: E402
import scale  # noqa: E402
import server as bench_server  # noqa: E402
import workloads  # noqa: E402

WORKLOADS = {"1": workloads.latency_bound, "2": workloads.overhead, "3": workloads.rate_limited,
             "4": workloads.resume, "5": workloads.checkpoint_cost, "6": workloads.memory,
             "7": scale.in_flight, "8": scale.strict_limiter, "9": scale.rising_limit, "10": scale.startup,
             "12": scale.overhead_modes}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="mpdistill benchmarks", allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="smaller workloads (< 3 min)")
    parser.add_argument("--only", default="", help="comma-separated workload numbers, e.g. 1,2")
    parser.add_argument("--work-dir", type=Path, default=HERE / "out", help="scratch folder (default bench/out)")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile the manager in the overhead workload (done anyway when it misses)")
    parser.add_argument("--mock", action="store_true", help="use the built-in mock server even if nginx is here")
    parser.add_argument("--wait-quiet", type=float, default=None, metavar="S",
                        help="before each workload, wait up to S s for the CPUs to be mostly idle, "
                             "3×S in all (default 60, 20 with --quick; 0: never wait)")
    return parser.parse_args(argv)


def open_server(sizes: workloads.Sizes, force_mock: bool):
    kw = {"delays_ms": (0, sizes.latency_delay_ms, sizes.flight_delay_ms), "rate": sizes.rate_rps, "burst": 5,
          "rate_delay_ms": 50}
    strict = {f"strict{rate}": rate for rate in sizes.strict_rates} | {"rise": sizes.rise_rate}
    if force_mock:
        return bench_server.MockFallback(**kw), "built-in mock server (--mock)"
    return bench_server.open_server(**kw, strict=strict)


def main(argv=None) -> int:
    args = parse_args(argv)
    started, load_start = time.time(), measure.loadavg()
    sizes = workloads.Sizes.quick() if args.quick else workloads.Sizes()
    chosen = [w.strip() for w in args.only.split(",") if w.strip()] or list(WORKLOADS)
    server, server_line = open_server(sizes, args.mock)
    print(f"server: {server_line}", flush=True)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    bench = workloads.Bench(server=server, work=args.work_dir, sizes=sizes, profile=args.profile)
    per_wait = args.wait_quiet if args.wait_quiet is not None else (20 if args.quick else 60)
    waiter = _Waiter(per_wait)
    failed = []
    with server:
        ceiling = bench_server.wrk_ceiling(server.url(0), seconds=sizes.wrk_seconds)
        if ceiling:
            print(f"server ceiling (wrk): {ceiling['rps']:,.0f} requests/s", flush=True)
        for name in chosen:
            failed += _run_one(bench, name, waiter)
    report.print_table(bench.figures)
    for note in bench.notes:
        print(f"\nnote: {note}")
    info = {**report.machine(), **report.versions(server)}
    if set(chosen) == set(WORKLOADS) and not failed:
        report.write_results(args.results, mode="quick" if args.quick else "full", started=started,
                             server_line=server_line, ceiling=ceiling, info=info, figures=bench.figures,
                             notes=bench.notes, load=(load_start, measure.loadavg()), busy=bench.busy)
        print(f"\nwrote {args.results}")
    if not args.keep:
        shutil.rmtree(args.work_dir, ignore_errors=True)
    missed = [f for f in bench.figures if f.met is False]
    print(f"{len(bench.figures)} figures, {len(missed)} missed target(s), {len(failed)} workload(s) failed; "
          f"{time.time() - started:.0f} s")
    return 1 if failed else 0


class _Waiter:
    """Waits for a quiet machine before each workload, within a budget for the whole run."""

    def __init__(self, per_workload_s: float) -> None:
        self.per = per_workload_s
        self.left = 3 * per_workload_s

    def __call__(self) -> float:
        """The share of CPU that was busy when the wait ended."""
        if min(self.per, self.left) <= 0:
            return measure.busy()
        t0 = time.monotonic()
        share = measure.wait_quiet(min(self.per, self.left))
        self.left -= time.monotonic() - t0
        return share


def _run_one(bench: workloads.Bench, name: str, waiter: _Waiter) -> list[str]:
    fn = WORKLOADS[name]
    print(f"\n== workload {name}: {fn.__doc__.splitlines()[0]}", flush=True)
    t0 = time.time()
    share = waiter()
    bench.busy[name] = share
    if share > 0.25:
        print(f"   (the machine is {share:.0%} busy with other work: wall-clock figures will suffer)", flush=True)
    try:
        missed_before = sum(f.met is False for f in bench.figures)
        fn(bench)
        if name == "2" and not bench.profile and sum(f.met is False for f in bench.figures) > missed_before:
            workloads._profile_manager(bench, bench.input(bench.sizes.overhead_rows))
    except Exception:  # one workload's failure must not hide the others' figures
        traceback.print_exc()
        return [name]
    print(f"   ({time.time() - t0:.0f} s, load average {measure.loadavg()})", flush=True)
    return []


if __name__ == "__main__":
    sys.exit(main())
