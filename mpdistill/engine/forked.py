"""A worker process made by one bare `os.fork`: the child runs its function, then exits.

multiprocess's fork start runs its bootstrap in the child first (process registry, after-fork
hooks, a new stdin file object, finalizers, logging checks). In a forked child every object that
code touches copies a page shared with the manager; a worker needs none of it. The parent side
is the part of multiprocess's `Process` the pool uses: pid, sentinel, is_alive, exitcode, join, kill.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import traceback
from typing import Any, Callable


class ForkedProcess:
    """One child running `target(*args)`; its exit code is 0, `SystemExit`'s, or 1 after a traceback."""

    def __init__(self, target: Callable[..., Any], args: tuple = (), name: str = "") -> None:
        self._target, self._args, self.name = target, args, name
        self.pid: int | None = None
        self.sentinel: int | None = None   # readable (EOF) once the child has exited
        self.exitcode: int | None = None

    def start(self) -> None:
        _flush_std_streams()   # or the child would write the parent's buffered output again
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(read_end)
                code = _run(self._target, self._args, self.name)
            finally:
                os._exit(code)
        os.close(write_end)
        self.pid, self.sentinel = pid, read_end

    def is_alive(self) -> bool:
        return self.pid is not None and self._poll() is None

    def join(self, timeout: float | None = None) -> None:
        """Wait up to `timeout` seconds (None: for ever) for the child to exit, and reap it."""
        if self.pid is None or self._poll() is not None:
            return
        poller = select.poll()
        poller.register(self.sentinel, select.POLLIN)
        if poller.poll(None if timeout is None else max(0, int(timeout * 1000))):
            self._poll(block=True)

    def kill(self) -> None:
        if self.pid is not None and self._poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass   # it just exited: the next poll reaps it

    def close(self) -> None:
        """Release the sentinel (once the child is reaped or given up)."""
        if self.sentinel is not None:
            os.close(self.sentinel)
            self.sentinel = None

    def _poll(self, block: bool = False) -> int | None:
        if self.exitcode is None:
            try:
                pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                return None
            if pid == self.pid:
                self.exitcode = os.waitstatus_to_exitcode(status)
        return self.exitcode


def _run(target: Callable[..., Any], args: tuple, name: str) -> int:
    """The child's whole life: stdin from /dev/null (as multiprocess does), the target, the exit code."""
    try:
        _stdin_from_devnull()
        target(*args)
        return 0
    except SystemExit as err:
        return err.code if isinstance(err.code, int) else 0 if err.code is None else 1
    except BaseException:
        sys.stderr.write(f"Process {name}:\n")
        traceback.print_exc()
        return 1
    finally:
        _flush_std_streams()


def _stdin_from_devnull() -> None:
    """A worker never reads stdin: point its fd 0 at /dev/null (no new file object)."""
    fd = os.open(os.devnull, os.O_RDONLY)
    if fd != 0:
        os.dup2(fd, 0)
        os.close(fd)


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (AttributeError, ValueError, OSError):
            pass   # closed or replaced by something without flush: nothing buffered to lose
