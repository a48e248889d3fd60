"""One run per output: an exclusive `fcntl.flock` on a lock file beside it, holder's pid and host inside.

The lock is taken before the output, its errors file, sidecar or checkpoint is read or written,
and held until the run ends. The kernel drops it when the holder dies (even by SIGKILL), so a lock
file left behind is never an obstacle; its content only says who held it last.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from ..errors import ConfigError, OutputInUseError

log = logging.getLogger(__name__)


class OutputLock:
    """The lock of one output file; `acquire`/`release`, or use it as a context manager."""

    def __init__(self, path: Path, output: Path, purpose: str = "run") -> None:
        self.path = Path(path)
        self.output = Path(output)
        self.purpose = purpose
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        """Take the lock at once, or raise OutputInUseError naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise OutputInUseError(f"{self.output} is in use by {describe(holder)}; wait for it to end, "
                                   f"stop it (--stop), or write to another -o") from None
        except OSError as err:
            os.close(fd)
            raise ConfigError(f"cannot lock {self.path}: {err.strerror or err}") from err
        self._fd = fd
        _write_holder(fd, {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                           "purpose": self.purpose, "output": str(self.output)})
        log.debug("locked %s (%s)", self.output, self.path)
        return self

    def release(self) -> None:
        """Let the next run in. The file stays: removing it would let two runs lock two files."""
        if self._fd is not None:
            os.close(self._fd)   # closing the last descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder(path: Path) -> dict | None:
    """Who holds (or last held) the lock at `path`, from its content; None when there is none.

    `alive` tells whether that process still runs (checked on this host only; None elsewhere).
    The lock itself is not probed, so looking never gets in a starting run's way.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    same_host = data.get("host") == socket.gethostname()
    data["alive"] = pid_alive(data.get("pid")) if same_host else None
    return data


def describe(info: dict | None) -> str:
    """`pid 123 on host h (since 14:30:25)`, or what can be said without the holder's details."""
    if not info:
        return "another run (its pid is not recorded yet)"
    since = info.get("since")
    when = f", since {time.strftime('%H:%M:%S', time.localtime(since))}" if isinstance(since, (int, float)) else ""
    what = info.get("purpose", "run")
    return f"{what} pid {info.get('pid')} on host {info.get('host')}{when}"


def refuse_input_as_output(input_path: str | os.PathLike | None, outputs: list[Path]) -> None:
    """Exit-2 error when an output (or its errors file) is the input itself, links resolved."""
    if input_path is None or not Path(input_path).exists():
        return
    source = Path(input_path).resolve()
    for out in outputs:
        if Path(out).resolve() == source:
            raise ConfigError(f"the output {out} is the input {input_path}: answers would be appended "
                              f"to the rows; choose another -o")


def _read_holder(fd: int) -> dict | None:
    try:
        raw = os.pread(fd, 4096, 0)
        data = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_holder(fd: int, info: dict) -> None:
    data = json.dumps(info).encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def pid_alive(pid) -> bool:
    """True while process `pid` exists on this host."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
