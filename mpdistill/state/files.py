"""File helpers: crash-safe replacement (write beside, fsync, rename, fsync the folder) and safe names."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | Iterable[bytes], *, mode: int = 0o644, dir_mode: int = 0o755,
                 durable: bool = True, before_replace: Callable[[], None] | None = None) -> None:
    """Replace `path` with `data` so that a crash leaves either the old file or the new one.

    `durable=False` skips the fsyncs, for files that are rewritten every second and only informative.
    """
    path = Path(path)
    if not path.parent.is_dir():
        path.parent.mkdir(mode=dir_mode, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            for chunk in ([data] if isinstance(data, (bytes, bytearray)) else data):
                fh.write(chunk)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def safe_name(name: str) -> str:
    """A filesystem-safe form of a run or model name: `deepseek-ai/DeepSeek-R1` -> `deepseek-ai_DeepSeek-R1`."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(name)) or "default"
