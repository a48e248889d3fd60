"""What limits each figure when it misses its target, and what would move it (from profiles).

Keys are prefixes of `Figure.key`; report.py prints the matching entry under every missed target.
The numbers quoted were measured on the 2-core bench machine while writing the bench (cProfile of
the manager, per-thread CPU cProfile of the workers, standalone timings); a run's own figures are
in the table above.
"""
from __future__ import annotations

MISSES: dict[str, dict[str, str]] = {
    "w1-steady": {
        "limit": (
            "The server itself answers the 200 ms route in ~201.6 ms (wrk, 64 connections: ~317 r/s, "
            "0.99 of the ideal), which leaves ~1.2 % for the client. mpdistill adds ~0.3 ms of CPU per "
            "request in the worker (one POST over http.client: provider/conn.py) and "
            "0.5–1.7 ms in the manager: with a fixed delay rows finish in waves of 64, and the manager "
            "handles a whole wave (unpickle, keypool, stats, result record, JSON encoding: ~40 µs a row) "
            "before the loop's next turn dispatches the freed slots, so the last slot of a wave waits "
            "~2.5 ms. Other work on the machine adds wake-up latency for 65 processes on 2 cores (see "
            "'CPUs busy' above)."),
        "move": (
            "runner.py `Runner._loop`: call `_dispatch()` right after `pool.wait()` returns (the pool "
            "has already freed the slots), and build/encode the result records after it. A monkeypatch "
            "prototype cut the manager's share of the 200 ms cycle from 1.25–1.68 ms to 0.51–1.31 ms "
            "(steady +0.3–0.5 %)."),
    },
    "w2-steady": {
        "limit": (
            "CPU: the machine has 2 cores. Per row the process tree spends ~0.95 ms at -p 64 (manager "
            "~0.33 ms; workers ~0.6 ms, of which the call over http.client is 0.29 ms in one hot thread: "
            "64 processes sharing 2 cores pay the rest in pipe messages, cache misses and context "
            "switches) and ~0.8 ms at -p 8 -c 8."),
        "move": (
            "Fewer processes, more threads each (-p 8 -c 8: ~40 % less CPU per row). Already done in "
            "this round: the SDK's chat `create` walked every param against its typed-dict annotations "
            "(0.3 ms a call); the SDK's request machinery costs ~0.3 ms more in a thread and ~1 ms in an event "
            "loop, so each call is now one POST with the SDK's headers and key, over http.client from "
            "threads (provider/conn.py: 0.29 ms a call, against 0.69 ms through httpx) and aiohttp from "
            "event loops (0.33 ms); clients are made once before forking (worker.py `preload`): start-up CPU 9.4 s → 1.6 s at "
            "-p 64; workers run under SCHED_BATCH so their wake-ups do not preempt the manager."),
    },
    "w3-": {
        "limit": (
            "keypool.py, not the pool: (1) the opening burst: the request bucket starts full (1 s of the "
            "configured 3R = 150 tokens), so the first dispatch sends all 64 slots at once against a "
            "server that admits a burst of 5: ~55 of the run's ~57 429s come in its first second (see the "
            "per-second server log in the notes); (2) every later 429 carries `Retry-After: 1`, and "
            "`KeyPool.rate_limited` pauses the whole endpoint for it: each costs ~R requests of time."),
        "move": (
            "Prototypes (monkeypatched KeyPool, 500 rows, R = 50): baseline 0.79 R and 10.2 % 429s. "
            "'Pace, don't pause' (`rate_limited`: on a 429 with Retry-After cool down by one request "
            "interval, let the cut rate do the slowing, retry the row at that pace): 0.98 R, 10.9 % 429s "
            "(nearly all from the opening burst). 'Slow start' (request bucket starts with 1 token): 2.2 % "
            "429s but 0.35 R, because `_decrease` reads the observed rate over at least 1 s "
            "(`_Meter.rpm`), a fraction of the real rate at start, and cuts to 0.7× that. The fix needs "
            "both: pace from a near-empty bucket, measure the first second's rate over its real span, and "
            "after a 429 cut to the admitted (2xx) rate of the last second rather than stepping ×0.7 once "
            "a second from 3R (the combination tried reached 0.997 R but 13 % 429s: the ×0.7 steps draw "
            "429s all the way down). Workload 3 of this bench is the test for that tuning."),
    },
    "w4-scan": {
        "limit": (
            'All the moves once listed here are in (bulk scan of both halves of the output at once, the '
            'watermark advanced in one step, done lines skipped by counting newlines). A cProfile of '
            "this run's manager (wall, 2.0-2.5 s in all): the scan's regex over 408 MiB 0.24 s (each "
            "half in its own process), imports 0.46 s (of which 0.12 s compiling the dataclasses' "
            "generated methods), the last 1,000 rows with the pool's start 0.6 s, their output writes "
            'and fsyncs 0.2 s. Runs on this machine give 1.96-2.09 s: the target sits inside the '
            'run-to-run spread.'
        ),
        "move": (
            'Fewer imports before the scan (the scan needs none of the HTTP stack) or scanning while '
            'the pool starts; not done this round.'
        ),
    },
    "w4-ckpt": {
        "limit": (
            "On a quiet machine ~1.1–1.5 s: interpreter and imports ~0.55 s (importing openai alone is "
            "~0.45 s), input line count 0.03 s, pool start 0.1 s, the 1,000 rows ~0.5 s, exit ~0.1 s. "
            "A miss means the machine was busy (see 'CPUs busy')."),
        "move": "Nothing structural; the checkpoint path already seeks straight to row 999,001.",
    },
    "w5-": {
        "limit": (
            "A save is a ~380-byte pickle written to a temp file, fsynced, renamed, and the directory "
            "fsynced: two fsyncs of this disk. Its size does not grow with rows done (watermark + sparse "
            "set), so a miss is the disk's fsync latency, not the checkpoint."),
        "move": "A faster disk; or fewer saves (--checkpoint-interval), which the writer thread already overlaps with dispatch.",
    },
    "w6-": {
        "limit": (
            "The manager's RSS is ~13 MB of interpreter plus ~35 MB of the imported openai SDK, plus "
            "buffers for in-flight rows; nothing grows with the input (it is streamed)."),
        "move": "Importing fewer SDK modules (the openai package imports all its types eagerly).",
    },
    "w6-p64-pss": {
        "limit": (
            "Each forked worker's private memory, measured from /proc/PID/smaps_rollup step by step: "
            "~1.1 MB that any forked Python process dirties just by running (its stack, interpreter "
            "state, refcounts of what it executes), +0.5 MB for multiprocess's bootstrap, +0.3 MB for "
            "its threads, and a few MB on its first call (new objects landing in free slots of pools "
            "inherited from the manager and refcount writes, each copying a 4 KiB page: 4.4 MB when calls "
            "went through httpx2 → httpcore2/h11, 1.5 MB over http.client, which they use now). "
            "Tried and measured: gc.freeze before each fork (in place), MALLOC_ARENA_MAX=1 (no change), "
            "importing the transport before the fork (no change: making the clients already imports it), "
            "forking from a small process that imported only the SDK (4.5 MB, no change), one real call "
            "in the manager before forking (-0.7 MB). The same first call costs 3.3 MB with raw httpx2 "
            "and 1.5 MB with http.client."),
        "move": (
            "Fewer processes for the same in-flight count: `--mode async -p 2 -c 32` holds 64 in flight "
            "in ~100 MB for the whole tree (workload 7: 2,048 in flight); or Python 3.12, whose immortal "
            "objects stop refcount writes from copying shared pages."),
    },
    "w7-": {
        "limit": (
            "2,048 (or 1,024) calls in flight against a 2 s server need ~1,000 (or ~500) answers a second "
            "parsed, recorded and fsynced on 2 cores, shared with nginx; an async call costs ~0.33 ms of CPU "
            "in aiohttp and a threaded one ~0.29 ms over http.client, and the manager handles every "
            "answer (unpickle, record, JSON line, fsync) on one core."),
        "move": "An idle machine; or fewer answers per second per core (more cores, or a longer-latency server).",
    },
    "w8-": {
        "limit": (
            "Paced requests carry their slot and workers hold them until it, and rate budgets start when "
            "the first worker says it is ready, so few requests are answered 429 (0.4-1.2 % in every mode "
            "on the quiet machine). What is left is the rate: one early 429 a little below R (a fresh "
            "worker's first call, slowed by its copy-on-write page faults, leaves late) sets where probing "
            "slows down, and probing back up starts at +0.15 %/s, doubling every 3 s, so a 20 s run spends "
            "most of its steady window climbing the last 5-10 % (the per-second counts below). On a fake "
            "clock (tests/unit/test_adaptive.py, 60 s, a tenth of the tasks 10 ms late) the same limiter "
            "gives 0.96-0.97 R with 0.8 % 429s at 20 r/s and 0.98 R with 0.3 % at 50 r/s."),
        "move": ("Faster probing (SLOW_GROWTH 0.005, PROBE_DOUBLING_S 2 in engine/adaptive.py) gave 0.94-0.96 R "
                 "here but 2.3-2.7 % 429s against the sliding-window simulation of tests/unit/test_keypool.py; "
                 "or a longer run (the probing reaches R within ~15 s)."),
    },
    "w9-": {
        "limit": (
            "Probing above the last failing rate starts at +0.15 % a second and doubles every 3 s without "
            "a 429; past 1.1 × that rate it grows fast (+25 %/s). On a fake clock a doubled limit is found "
            "in ~14 s; each 429 near the limit restarts the slow probing."),
        "move": "Less jitter (a quiet machine); or a shorter PROBE_DOUBLING_S in engine/adaptive.py (more 429s on a steady limit).",
    },
    "w10-": {
        "limit": (
            "CPU before the first request: interpreter and CLI imports ~0.3 s (online runs import neither "
            "openai nor httpx; async mode imports aiohttp), the clients and the offline warm-up, one fork "
            "(workers are forked as the load needs them, not 64 first). Under a load average of 30–70 on "
            "2 cores each CPU-second takes several wall seconds."),
        "move": "An idle machine; fewer imports before the first fork.",
    },
    "w12-": {
        "limit": (
            "CPU on 2 cores: ~0.95 s per 1,000 rows at -p 64 and ~0.8 s at -p 8 -c 8 (the call over "
            "http.client is 0.29 ms of it; the manager's share, one unpickle, record, JSON line and fsync "
            "a row, ~0.3 ms), against 6.5 s for the baseline. A wall-clock cProfile of the manager at "
            "-p 64 spends most of its time in the pipe write that wakes a worker. The baseline's own wall "
            "time moves between runs (17.2-20.8 s on this machine), which moves the ratio."
        ),
        "move": (
            "Fewer processes for the same calls in flight (-p 8 -c 8, or --mode async); tried and not "
            "kept: the workers at nice 5 or 10 (slower), an O(1) pick of an idle worker (no measurable "
            "change)."
        ),
    },
}


# Changes measured by prototypes (monkeypatches) that belong to other modules; listed in every report.
SUGGESTIONS: list[str] = [
    # Done since they were measured: dispatch right after pool.wait() (runner.py), slow start and
    # paced Retry-After (keypool.py), bulk resume scan and skip (recovery.py, resume.py, source.py).
]
