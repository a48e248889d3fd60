"""File helpers: crash-safe replacement (write beside, fsync, rename, fsync the folder), backups
kept aside under one naming scheme, and safe names."""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

log = logging.getLogger(__name__)


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
    with atomic_writer(path, mode=mode, dir_mode=dir_mode, durable=durable,
                       before_replace=before_replace) as fh:
        for chunk in ([data] if isinstance(data, (bytes, bytearray)) else data):
            fh.write(chunk)


@contextmanager
def atomic_writer(path: Path, *, mode: int = 0o644, dir_mode: int = 0o755, durable: bool = True,
                  before_replace: Callable[[], None] | None = None) -> Iterator[IO[bytes]]:
    """`with atomic_writer(p) as f: f.write(...)`: a temp file beside `p`, fsynced, renamed over
    `p` and the folder fsynced, only when the block succeeds; on an error `p` is untouched."""
    path = Path(path)
    if not path.parent.is_dir():
        path.parent.mkdir(mode=dir_mode, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            yield fh
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


def aside_path(path: Path, kind: str = "bak") -> Path:
    """`OUT.jsonl.bak-YYYYmmdd-HHMMSS` (plus `-N` when taken): where a file is kept aside."""
    path = Path(path)
    base = f"{path.name}.{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    target, counter = path.with_name(base), 1
    while target.exists():
        target, counter = path.with_name(f"{base}-{counter}"), counter + 1
    return target


def move_aside(path: str | os.PathLike) -> Path:
    """Rename `path` to its backup name; return the new path."""
    path = Path(path)
    target = aside_path(path)
    os.rename(path, target)
    log.warning("moved %s aside to %s", path, target)
    return target


def copy_aside(path: str | os.PathLike) -> Path:
    """Copy `path` to its backup name, durably (the original stays); return the copy's path."""
    path = Path(path)
    while True:
        target = aside_path(path)
        try:
            dst = open(target, "xb")
            break
        except FileExistsError:
            continue
    with dst, open(path, "rb") as src:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
    shutil.copystat(path, target)
    return target


def safe_name(name: str) -> str:
    """A filesystem-safe form of a run or model name: `deepseek-ai/DeepSeek-R1` -> `deepseek-ai_DeepSeek-R1`."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(name)) or "default"
