"""`--status` / `mpdistill monitor`: show runs as a terminal panel, once or redrawn until Ctrl-C.

Reads status files, checkpoints and the output's size only; it never touches a running run.
`render_panel` is a pure function of a status dict, so every state can be tested with a fake clock.
"""
from __future__ import annotations

import math
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from ..config import OutputFiles
from ..lines import count_newlines
from ..state.checkpoint import list_checkpoints, safe_name
from ..state.lock import holder as lock_holder
from .batchview import mode_lines
from .status import (LIVE_STATES, cells, clip, clip_middle, find_statuses, format_bytes, format_clock,
                     format_count, format_duration, live_state, pad, printable, read_status)

DEFAULT_INTERVAL_S = 3.0
SCRIPT = "python run_multiprocess.py"
BUSIEST_SHOWN = 3
IDS_SHOWN = 3
# endpoint table columns after the name: (title, status field, width)
_COLUMNS = (("req", "requests", 8), ("ok", "ok", 8), ("429", "rate_limited", 6), ("err", "errors", 6),
            ("fly", "in_flight", 5), ("rpm", "current_rpm", 7))
_DROP_ORDER = ("rpm", "fly", "req")
_NAME_MAX = 18
_STATE_MIN = 12   # "cooling 999s"


# ---- the panel --------------------------------------------------------------------------------

def render_panel(status: dict, *, now: float | None = None, width: int = 80,
                 output_rows: int | None = None, output_bytes: int | None = None,
                 checkpoint_dir: str | None = None, lock_holder: dict | None = None) -> str:
    """The panel of one run; every line fits in `width` terminal columns.

    `checkpoint_dir`, when not the default, is added to the stop command it shows; `lock_holder`
    (`state.lock.holder` of the output's lock) says who holds the output, or that the holder is gone.
    """
    now = time.time() if now is None else now
    state = live_state(status, now)
    lines = [*_title(status, state, now, width), *_progress(status, state, now, width),
             *_workers(status, state, now, width),
             *(_endpoints(status, state, now, width) if status.get("via") != "batch" else []),
             *mode_lines(status, width),
             *_output(status, output_rows, output_bytes, width), *_lock_line(lock_holder),
             *_commands(status, state, checkpoint_dir, width)]
    return "\n".join(clip(line, width) for line in lines)


def _title(status: dict, state: str, now: float, width: int) -> list[str]:
    right = f"pid {status.get('pid')}" if status.get("pid") else ""
    tail = f"  [{state}]"
    room = width - cells("run ") - cells(tail) - cells(right) - 2
    head = f"run {clip(printable(status.get('run', '?')), max(room, 8))}{tail}"
    gap = width - cells(head) - cells(right)
    lines = [head + " " * gap + right if gap >= 2 else head]
    updated = status.get("updated_at")
    lines.append(f"started {format_clock(status.get('started_at'))}   "
                 f"elapsed {format_duration(status.get('elapsed_s'))}   "
                 f"updated {format_duration(now - updated) if updated else '-'} ago")
    note = _state_note(status, state, now)
    return lines + ([f"! {note}"] if note else [])


def _state_note(status: dict, state: str, now: float) -> str | None:
    pid = status.get("pid")
    if status.get("from_checkpoint"):
        return (f"no status file; from the checkpoint saved {format_clock(status.get('updated_at'))}. "
                "Run the same command again to resume")
    if state == "stale":
        silent = format_duration(now - (status.get("updated_at") or now))
        return f"no update for {silent} although pid {pid} is alive: hung or overloaded?"
    if state == "crashed":
        return "the process is gone without a final state (crash? kill -9?): rerun to resume"
    if state == "waiting":
        return f"between rounds: the next round starts at {format_clock(status.get('next_round_at'))}"
    if state == "stopped":
        return "stopped before the end: rerun the same command to resume"
    if state == "aborted":
        return "the run stopped itself (see its log): fix the cause, then rerun to resume"
    return None


def _progress(status: dict, state: str, now: float, width: int) -> list[str]:
    done, total = status.get("done") or 0, status.get("total")
    lines = [_bar(done, total, width)]
    if "start_number" in status or "current_number" in status:
        lines.append(f"range {printable(status.get('start_number', '?'))} -> "
                     f"{printable(status.get('current_number', '?'))}")
    lines.append(f"ok {status.get('ok') or 0}   failed {status.get('failed') or 0}   "
                 f"in flight {status.get('in_flight') or 0}   retry wait {status.get('retry_waiting') or 0}")
    lines.append(_rate_line(status, state, now))
    models = status.get("models") or {}
    if len(models) > 1:
        parts = [f"{printable(a)} {m.get('ok', 0)} ok/{m.get('failed', 0)} failed" for a, m in models.items()]
        lines.append("models " + "  ".join(parts))
    return lines


def _bar(done: int, total: int | None, width: int) -> str:
    if not total:
        return f"done {done} (total not known yet)"
    fraction = min(max(done / total, 0.0), 1.0)
    suffix = f" {fraction:6.1%}  {done}/{total}"
    inner = max(width - cells(suffix) - 2, 10)
    filled = int(fraction * inner)
    return "[" + "#" * filled + "." * (inner - filled) + "]" + suffix


def _rate_line(status: dict, state: str, now: float) -> str:
    if state not in (*LIVE_STATES, "stale", "crashed"):
        elapsed, done = status.get("elapsed_s"), status.get("done") or 0
        average = done / elapsed if elapsed else 0.0
        return f"average {average:.1f} rows/s over {format_duration(elapsed)}"
    line = f"rate {status.get('rows_per_s') or 0.0:.1f} rows/s (last minute)"
    eta = status.get("eta_s")
    if state in LIVE_STATES and eta is not None:
        finish = (status.get("updated_at") or now) + eta
        line += f"   ETA {format_duration(eta)} (~{time.strftime('%a %H:%M', time.localtime(finish))})"
    elif state in LIVE_STATES:
        line += "   ETA -"
    return line


def _workers(status: dict, state: str, now: float, width: int) -> list[str]:
    workers = status.get("workers") or []
    if not workers or state not in (*LIVE_STATES, "stale", "crashed"):
        return []   # a run that ended has no busy workers worth showing
    busy = [w for w in workers if w.get("busy")]
    lines = [f"workers busy {len(busy)}/{len(workers)}, idle {len(workers) - len(busy)}"]
    busy.sort(key=lambda w: w.get("since") or now)
    for w in busy[:BUSIEST_SHOWN]:
        since = w.get("since")
        took = format_duration(now - since) if since else "-"
        rows = [printable(r) for r in w.get("rows") or []]
        more = f" +{len(rows) - IDS_SHOWN}" if len(rows) > IDS_SHOWN else ""
        head = f"  {took:>7}  slot {w.get('slot', '?')}  pid {w.get('pid', '?')}  "
        ids = ", ".join(clip(r, 24) for r in rows[:IDS_SHOWN])
        lines.append(head + clip(ids, max(width - cells(head) - cells(more), 4)) + more)
    return lines


def _endpoints(status: dict, state: str, now: float, width: int) -> list[str]:
    endpoints = status.get("endpoints") or []
    if not endpoints:
        return []
    longest = max(cells(printable(e.get("name", ""))) for e in endpoints)
    columns = _fitting_columns(width)
    fixed = 2 + sum(w for _, _, w in columns) + 2
    name_w = max(min(max(longest, cells("endpoint")), _NAME_MAX, width - fixed - _STATE_MIN), 4)
    state_w = max(width - fixed - name_w, 1)
    header = "  " + pad("endpoint", name_w) + "".join(t.rjust(w) for t, _, w in columns) + "  state"
    lines = [header]
    lag = max(now - (status.get("updated_at") or now), 0.0)
    for e in endpoints:
        flag = _endpoint_state(e, state, lag)
        lines.append("  " + pad(printable(e.get("name", "?")), name_w) + _endpoint_numbers(e, columns)
                     + "  " + clip(flag, state_w))
        if e.get("disabled") and e.get("disabled_reason"):
            lines.append("    ^ " + printable(e["disabled_reason"]))
    return lines


def _fitting_columns(width: int) -> tuple:
    """The table's number columns, the least useful dropped first when the terminal is narrow."""
    columns = list(_COLUMNS)
    for title in _DROP_ORDER:
        if 2 + 8 + sum(w for _, _, w in columns) + 2 + _STATE_MIN <= width:
            break
        columns = [c for c in columns if c[0] != title]
    return tuple(columns)


def _endpoint_numbers(e: dict, columns: tuple) -> str:
    texts = []
    for title, key, w in columns:
        value = e.get(key)
        if key == "current_rpm":
            texts.append("-" if value is None else (f"{value:.0f}" if value >= 100 else f"{value:.1f}"))
        else:
            texts.append(format_count(value or 0, w - 1))
    return "".join(t.rjust(w) for t, (_, _, w) in zip(texts, columns))


def _endpoint_state(e: dict, state: str, lag: float) -> str:
    if e.get("disabled"):
        return "disabled"
    left = e.get("cooldown_until")
    if state in LIVE_STATES and left is not None and left - lag > 0:
        return f"cooling {math.ceil(left - lag)}s"
    return "ok"


def _output(status: dict, rows: int | None, size: int | None, width: int) -> list[str]:
    path = status.get("output")
    if not path:
        return []
    figures = [f"{rows} rows" if rows is not None else None, format_bytes(size) if size is not None else None]
    suffix = ", ".join(f for f in figures if f)
    suffix = f"  ({suffix})" if suffix else ""
    room = max(width - cells("output ") - cells(suffix), 8)
    return [f"output {clip_middle(printable(path), room)}{suffix}"]


def _lock_line(holder: dict | None) -> list[str]:
    if not holder:
        return []
    who = f"pid {printable(holder.get('pid'))} on host {printable(holder.get('host'))}"
    if holder.get("alive") is False:
        return [f"lock:   free: its last holder, {who}, is gone (a new run takes it at once)"]
    where = "" if holder.get("alive") else " (another host: not checked)"
    return [f"lock:   held by {printable(holder.get('purpose', 'run'))} {who}{where}"]


def _commands(status: dict, state: str, checkpoint_dir: str | None, width: int) -> list[str]:
    lines: list[str] = []
    run, output = status.get("run"), status.get("output")
    if state in (*LIVE_STATES, "stale") and run:
        stop = [*SCRIPT.split(), "--stop", "--run-name", str(run)]
        if checkpoint_dir and os.path.normpath(checkpoint_dir) != "checkpoints":
            stop += ["--checkpoint-dir", str(checkpoint_dir)]
        lines += command_lines("stop:     ", stop, width)
    if output:
        lines += command_lines("follow:   ", ["tail", "-f", str(output)], width)
        lines += command_lines("validate: ", [*SCRIPT.split(), "--validate", "-o", str(output)], width)
    return lines


def command_lines(label: str, argv: list[str], width: int) -> list[str]:
    """A shell command that can be pasted back: quoted, wrapped with ` \\` to fit `width`.

    An option stays on one line with its value (`-o PATH`); a single word too long for any line
    is cut in the middle, the one case where the text cannot be pasted as is.
    """
    indent = " " * min(len(label) + 2, 12)
    first, *rest = _option_words(argv)
    lines, line = [], label + first
    for word in rest:
        if cells(line) + 1 + cells(word) + 2 > width:
            lines.append(line + " \\")
            line = indent + clip_middle(word, width - len(indent) - 2)
        else:
            line += " " + word
    return lines + [line]


def _option_words(argv: list[str]) -> list[str]:
    """Quoted words, an option joined with its value: ["--run-name", "x y"] -> ["--run-name 'x y'"]."""
    words: list[str] = []
    for i, arg in enumerate(argv):
        quoted = shlex.quote(printable(arg))
        joins = i > 0 and argv[i - 1].startswith("-") and not arg.startswith("-") and words
        if joins:
            words[-1] += " " + quoted
        else:
            words.append(quoted)
    return words


# ---- counting output rows cheaply --------------------------------------------------------------

class LineCounter:
    """Counts the complete lines of a growing file, reading only what was appended since last time.

    A file that was replaced or shrank (restart, repair) is counted again from the start.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._inode: int | None = None
        self._offset = 0
        self.lines = 0

    def count(self) -> tuple[int, int] | None:
        """(complete lines, size in bytes), or None when the file cannot be read."""
        try:
            with open(self.path, "rb") as fh:
                st = os.fstat(fh.fileno())
                if st.st_ino != self._inode or st.st_size < self._offset:
                    self._inode, self._offset, self.lines = st.st_ino, 0, 0
                fh.seek(self._offset)
                newlines, _, read = count_newlines(fh)
                self.lines += newlines
                self._offset += read
                return self.lines, self._offset
        except OSError:
            return None


def count_lines(path: str | Path) -> int | None:
    """Complete lines of `path` (its newlines), read in 1 MiB chunks; None when unreadable."""
    counted = LineCounter(path).count()
    return counted[0] if counted else None


# ---- the command ----------------------------------------------------------------------------

def status_command(cfg, watch: bool = False, interval: float = DEFAULT_INTERVAL_S, once: bool = False,
                   count_rows: bool = False) -> int:
    """Print the panel of every run under cfg.checkpoint_dir (only cfg.run_name's when set).

    With `watch` (and not `once`) clear the screen and redraw every `interval` s until Ctrl-C.
    The output's size is always shown; its lines are counted only with `count_rows` (a full read of
    a GB-sized file the first time; watch mode then reads only what was appended).
    """
    watch = watch and not once
    counters: dict[str, LineCounter] | None = {} if count_rows else None
    try:
        while True:
            text = render(cfg, width=terminal_width(), counters=counters)
            if not watch:
                sys.stdout.write(text + "\n")
                sys.stdout.flush()
                return 0
            _redraw(text, interval)
            time.sleep(interval)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 0


def render(cfg, *, now: float | None = None, width: int = 80,
           counters: dict[str, LineCounter] | None = None) -> str:
    """The panels of the runs `status_command` shows, as one text."""
    paths = ([cfg.status_path] if cfg.run_name
             else find_statuses(cfg.checkpoint_dir))
    blocks, seen = [], set()
    for status in filter(None, (read_status(p) for p in paths)):
        seen.update(safe_name(n) for n in (status.get("run"), *(status.get("models") or {})) if n)
        blocks.append(_panel(status, cfg, now, width, counters))
    for status in checkpoint_statuses(cfg):
        if safe_name(status["run"]) not in seen:
            blocks.append(_panel(status, cfg, now, width, counters))
    if not blocks:
        which = f"run {cfg.name!r}" if cfg.run_name else "runs"
        return clip(f"No {which} found in {cfg.checkpoint_dir}", width)
    return ("\n" + "-" * min(width, 80) + "\n").join(blocks)


def checkpoint_statuses(cfg) -> list[dict]:
    """A minimal stopped status for each readable checkpoint (of cfg.run_name only, when set)."""
    statuses = []
    for c in list_checkpoints(cfg.checkpoint_dir):
        if c.get("error") or (cfg.run_name and safe_name(c["name"]) != safe_name(cfg.name)):
            continue
        output = c.get("output") or (str(cfg.output_path) if safe_name(c["name"]) == safe_name(cfg.name) else None)
        statuses.append({"run": c["name"], "state": "stopped", "from_checkpoint": True,
                         "done": c["processed"], "ok": c["ok"], "failed": c["failed"],
                         "elapsed_s": c["elapsed"], "updated_at": c["saved_at"], "output": output})
    return statuses


def _panel(status: dict, cfg, now: float | None, width: int, counters: dict | None) -> str:
    rows = size = None
    output = status.get("output")
    if output:
        if counters is not None:
            counted = counters.setdefault(output, LineCounter(output)).count()
            rows, size = counted if counted else (None, None)
        else:
            size = _size(output)
    holder = lock_holder(OutputFiles(Path(output)).lock) if output else None
    return render_panel(status, now=now, width=width, output_rows=rows, output_bytes=size,
                        checkpoint_dir=str(cfg.checkpoint_dir), lock_holder=holder)


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def terminal_width() -> int:
    """The terminal's width (80 when not a terminal), kept within 50..120 so the panel stays readable."""
    return max(50, min(shutil.get_terminal_size((80, 24)).columns, 120))


def _redraw(text: str, interval: float) -> None:
    """Repaint in place: home, each line then clear-to-end-of-line, then clear below (no flicker)."""
    footer = f"refresh every {interval:g} s, Ctrl-C to quit (the run goes on)"
    body = "\x1b[K\n".join([*text.split("\n"), "", footer])
    sys.stdout.write("\x1b[H" + body + "\x1b[K\x1b[J")
    sys.stdout.flush()
